"""Gold references, hidden gold checks that suspend a failing reader, and calibration, end to end."""

import pytest

from audit.models import AuditEvent
from core.memberships import grant_membership
from tasks.creation import create_tasks
from tasks.models import Consensus, Read, Task
from tests.factories import UserFactory
from tests.tasks.conftest import add_ct_studies

pytestmark = pytest.mark.django_db


def _reference(api, cast, task, value="left"):
    response = api(cast.manager).post(f"/api/projects/{cast.project.pk}/tasks/{task.pk}/reference/",
                                      {"findings": [{"label": "finding_laterality", "value": value}]}, format="json")
    assert response.status_code == 201, response.json()


def _claim_and_answer(client, value):
    claim = client.post("/api/queue/next/", {}, format="json")
    if claim.status_code == 204:
        return None
    body = claim.json()
    response = client.post(f"/api/reads/{body['read']}/submit/",
                           {"findings": [{"label": "finding_laterality", "value": value}]}, format="json")
    assert response.status_code == 200, response.json()
    return body


@pytest.fixture
def gold_project(cast, api):
    studies = add_ct_studies(cast.project, 5)
    gold = create_tasks(cast.project, by=cast.manager, studies=cast.project.studies.filter(
        pk__in=[s.pk for s in studies[:3]]), kind=Task.Kind.GOLD)
    create_tasks(cast.project, by=cast.manager, studies=cast.project.studies.filter(
        pk__in=[s.pk for s in studies[3:]]))
    for task in gold:
        _reference(api, cast, task)
    cast.project.gold_rate, cast.project.gold_window, cast.project.gold_threshold = 1.0, 3, 0.8
    cast.project.save()
    return gold


def test_gold_checks_look_like_any_claim_and_failing_ones_suspend_the_reader(cast, api, gold_project):
    client = api(cast.annotator)
    first = client.post("/api/queue/next/", {}, format="json").json()
    production_shape = set(first)
    assert first["task"] in {t.pk for t in gold_project}  # injected at rate 1.0...
    assert "kind" not in first and "gold" not in str(first).lower()  # ...and indistinguishable
    client.post(f"/api/reads/{first['read']}/submit/", {"findings": [{"label": "finding_laterality",
                                                                       "value": "right"}]}, format="json")
    assert Read.objects.get(pk=first["read"]).score == 0.0
    for _ in range(2):
        body = _claim_and_answer(client, "right")
        assert set(body) == production_shape
    membership = cast.project.memberships.get(user=cast.annotator)
    membership.refresh_from_db()
    assert membership.is_suspended and "rolling gold score 0.00" in membership.suspension_reason
    assert client.post("/api/queue/next/", {}, format="json").status_code == 204
    assert AuditEvent.objects.filter(action="suspend", project_id=cast.project.pk).exists()

    workforce = api(cast.manager).get(f"/api/projects/{cast.project.pk}/workforce/").json()
    row = next(r for r in workforce if r["reader"] == "annotator")
    assert row["suspended"] and row["gold_checks"] == 3 and row["rolling_gold_score"] == 0.0
    client_view = api(cast.client_viewer).get(f"/api/projects/{cast.project.pk}/workforce/").json()
    annotators = next(r for r in client_view if r["tier"] == "Annotator")  # clients see tiers only
    assert annotators["suspended"] == 1 and annotators["readers"] == 2 and "reader" not in annotators

    reinstate = api(cast.manager).patch(f"/api/projects/{cast.project.pk}/memberships/{membership.pk}/",
                                        {"is_suspended": False}, format="json")
    assert reinstate.status_code == 200 and reinstate.json()["is_suspended"] is False
    assert client.post("/api/queue/next/", {}, format="json").status_code == 200  # production work again


def test_a_reader_who_matches_gold_keeps_working(cast, api, gold_project):
    client = api(cast.second_annotator)
    for _ in range(3):
        assert _claim_and_answer(client, "left") is not None
    assert not cast.project.memberships.get(user=cast.second_annotator).is_suspended
    scores = Read.objects.filter(reader=cast.second_annotator, is_check=True).values_list("score", flat=True)
    assert list(scores) == [1.0, 1.0, 1.0]


def test_radiologists_build_a_gold_reference_by_consensus(cast, api):
    add_ct_studies(cast.project, 1)
    [task] = create_tasks(cast.project, by=cast.manager, kind=Task.Kind.GOLD)
    second = UserFactory(organization=cast.vendor)
    grant_membership(project=cast.project, user=second, role="radiologist", subspecialties=["chest"],
                     by=cast.manager)
    assert api(cast.annotator).post("/api/queue/next/", {}, format="json").status_code == 204  # radiologists only
    for reader in (cast.radiologist, second):
        assert _claim_and_answer(api(reader), "left") is not None
    assert Consensus.objects.get(task=task).method == "agreed"
    cast.project.gold_rate = 1.0
    cast.project.save()
    claimed = api(cast.annotator).post("/api/queue/next/", {}, format="json").json()
    assert claimed["task"] == task.pk  # now a gold check for annotators


def test_calibration_comes_first_and_passing_it_opens_production_work(cast, api):
    studies = add_ct_studies(cast.project, 3)
    calibration = create_tasks(cast.project, by=cast.manager, kind=Task.Kind.CALIBRATION,
                               studies=cast.project.studies.filter(pk__in=[s.pk for s in studies[:2]]))
    create_tasks(cast.project, by=cast.manager, studies=cast.project.studies.filter(pk=studies[2].pk))
    for task in calibration:
        _reference(api, cast, task)
    cast.project.requires_calibration, cast.project.calibration_threshold = True, 0.75
    cast.project.save()

    good, bad = api(cast.annotator), api(cast.second_annotator)
    served = [_claim_and_answer(good, "left")["task"] for _ in range(2)]
    assert sorted(served) == sorted(t.pk for t in calibration)
    assert cast.project.memberships.get(user=cast.annotator).calibrated_at is not None
    production = good.post("/api/queue/next/", {}, format="json").json()
    assert production["task"] not in served

    for _ in range(2):
        _claim_and_answer(bad, "right")
    membership = cast.project.memberships.get(user=cast.second_annotator)
    assert membership.calibrated_at is None and membership.is_suspended
    assert "calibration score 0.00" in membership.suspension_reason
    assert bad.post("/api/queue/next/", {}, format="json").status_code == 204


def test_a_reference_only_for_gold_or_calibration_tasks(cast, api):
    add_ct_studies(cast.project, 1)
    [task] = create_tasks(cast.project, by=cast.manager)
    response = api(cast.manager).post(f"/api/projects/{cast.project.pk}/tasks/{task.pk}/reference/",
                                      {"findings": []}, format="json")
    assert response.status_code == 400 and response.json()["code"] == "not_gold"
