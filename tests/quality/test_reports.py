"""Concordance reports from real reads: the figures, their intervals, CSV, and client pseudonymity."""

import csv
import io

import pytest

from tasks.creation import create_tasks
from tests.quality.test_consensus import _read_task
from tests.tasks.conftest import add_ct_studies

pytestmark = pytest.mark.django_db


def test_concordance_report_per_class_with_kappa_and_scorecards(cast, api):
    add_ct_studies(cast.project, 4)
    create_tasks(cast.project, by=cast.manager)
    answers = [("left", "left"), ("right", "right"), ("left", "left"), ("bilateral", "bilateral")]
    for first, second in answers:
        _read_task(api, cast.annotator, lambda b, i, v=first: [{"label": "finding_laterality", "value": v}])
        _read_task(api, cast.second_annotator, lambda b, i, v=second: [{"label": "finding_laterality", "value": v}])
    report = api(cast.manager).get(f"/api/projects/{cast.project.pk}/reports/concordance/").json()
    assert report["tasks"] == 4
    rows = {(r["finding_class"], r["comparison"]): r for r in report["rows"]}
    rr = rows[("finding_laterality", "reader_vs_reader")]
    assert rr["metric"] == "kappa" and rr["n"] == 4 and rr["value"] == 1.0 and rr["modality"] == "CT"
    assert rr["ci95"][0] <= rr["value"] <= rr["ci95"][1]
    assert rows[("finding_laterality", "reader_vs_consensus")]["n"] == 8
    assert {c["reader"] for c in report["scorecards"]} == {"annotator", "second_annotator"}
    assert all(c["agreement_with_consensus"] == 1.0 for c in report["scorecards"])

    client_view = api(cast.client_viewer).get(f"/api/projects/{cast.project.pk}/reports/concordance/").json()
    assert "scorecards" not in client_view  # clients: per tier only
    [tier] = client_view["scorecards_by_tier"]
    assert tier | {"mean_active_minutes": None} == {"tier": "Annotator", "readers": 2, "reads": 8,
                                                    "agreement_with_consensus": 1.0, "mean_active_minutes": None}
    download = api(cast.manager).get(f"/api/projects/{cast.project.pk}/reports/concordance/?output=csv")
    assert download["Content-Type"] == "text/csv"
    table = list(csv.DictReader(io.StringIO(download.content.decode())))
    assert {row["comparison"] for row in table} == {"reader_vs_reader", "reader_vs_consensus"}
    assert api(cast.annotator).get(f"/api/projects/{cast.project.pk}/reports/concordance/").status_code == 403


def test_bad_date_range_is_400(cast, api):
    response = api(cast.manager).get(f"/api/projects/{cast.project.pk}/reports/concordance/?since=yesterday")
    assert response.status_code == 400 and "since" in response.json()["errors"]
