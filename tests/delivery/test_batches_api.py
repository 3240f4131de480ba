"""Delivery batches over REST: create, add, deliver, reports, costs, downloads; refusals store nothing."""

import asyncio
import csv
import hashlib
import io
import json

import pytest
from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer

from audit.models import AuditEvent
from core.broadcast import project_group
from tasks.creation import create_tasks
from tasks.models import Batch, Task
from tasks.states import TaskState
from tests.delivery.conftest import laterality, read_task
from tests.tasks.conftest import add_ct_studies

pytestmark = pytest.mark.django_db


def _url(cast, suffix=""):
    return f"/api/projects/{cast.project.pk}/batches/{suffix}"


def _create(api, cast, tasks, name="week 1", **extra):
    return api(cast.manager).post(_url(cast), {"name": name, "tasks": [t.pk for t in tasks], **extra}, format="json")


def _deliver(api, cast, batch_id, capture) -> dict:
    """Deliver as the manager; the export job runs once the request's transaction commits. The batch after it."""
    with capture(execute=True):
        response = api(cast.manager).post(_url(cast, f"{batch_id}/deliver/"))
    assert response.status_code == 200, response.json()
    assert response.json()["state"] == "delivered"
    return api(cast.manager).get(_url(cast, f"{batch_id}/")).json()


async def _receive(layer, channel) -> dict:
    return await asyncio.wait_for(layer.receive(channel), timeout=5)


def _download(client, url) -> bytes:
    response = client.get(url)
    assert response.status_code == 200, response
    return b"".join(response.streaming_content)


@pytest.fixture
def delivered(cast, api, rich_tasks, django_capture_on_commit_callbacks):
    created = _create(api, cast, rich_tasks, pricing={"currency": "EUR", "per_study": 4, "per_slice": 0.5,
                                                      "per_finding": 1, "per_organ": 10})
    assert created.status_code == 201, created.json()
    return _deliver(api, cast, created.json()["id"], django_capture_on_commit_callbacks)


def test_delivering_moves_tasks_to_delivered_and_builds_report_and_exports(cast, api, rich_tasks, delivered):
    assert delivered["state"] == "delivered" and delivered["export_state"] == "ready"
    assert delivered["tasks"] == [t.pk for t in rich_tasks]
    assert {t.state for t in Task.objects.filter(pk__in=delivered["tasks"])} == {TaskState.DELIVERED}
    assert {e["format"] for e in delivered["exports"]} >= {"json", "csv", "dicom-seg", "dicom-sr", "nifti"}
    batch = Batch.objects.get(pk=delivered["id"])
    assert batch.report["tasks"] == 2 and batch.report["batch"] == batch.pk
    assert AuditEvent.objects.filter(object_type="tasks.batch", object_id=str(batch.pk), action="update",
                                     extra__change="deliver").exists()
    assert AuditEvent.objects.filter(object_type="tasks.batch", object_id=str(batch.pk), action="export").exists()


def test_delivery_broadcasts_batch_delivered_after_commit(cast, api, rich_tasks, django_capture_on_commit_callbacks):
    layer = get_channel_layer()
    channel = async_to_sync(layer.new_channel)()
    async_to_sync(layer.group_add)(project_group(cast.project.pk), channel)
    batch = _create(api, cast, rich_tasks).json()
    with django_capture_on_commit_callbacks(execute=True):
        api(cast.manager).post(_url(cast, f"{batch['id']}/deliver/"))
    events = []
    while not {"batch.delivered", "batch.exports_ready"} <= {e["event"] for e in events}:
        events.append(async_to_sync(_receive)(layer, channel))  # other events (progress) may come between
    delivered = next(e for e in events if e["event"] == "batch.delivered")
    assert delivered["data"] == {"batch": batch["id"], "tasks": 2}
    assert any(e["event"] == "batch.exports_ready" for e in events)


def test_client_lists_batches_and_downloads_exports_with_pseudonyms_only(cast, api, delivered):
    client = api(cast.client_viewer)
    listing = client.get(_url(cast)).json()
    assert [b["id"] for b in listing["results"]] == [delivered["id"]]
    for entry in delivered["exports"]:
        data = _download(client, entry["url"])
        assert hashlib.sha256(data).hexdigest() == entry["sha256"]
    manifest = json.loads(_download(client, next(e["url"] for e in delivered["exports"] if e["name"] ==
                                                  "manifest.json")))
    readers = {r["reader"] for t in manifest["tasks"] for r in t["readers"]}
    assert readers == {cast.annotator.pseudonym, cast.second_annotator.pseudonym}
    report = client.get(_url(cast, f"{delivered['id']}/report/")).json()
    assert "scorecards" not in report and [c["tier"] for c in report["scorecards_by_tier"]] == ["Annotator"]
    everything = json.dumps([listing, manifest, report, client.get(_url(cast, f"{delivered['id']}/costs/")).json()])
    for person in (cast.annotator, cast.second_annotator, cast.manager):
        assert f'"{person.username}"' not in everything and person.email not in everything


def test_clients_and_readers_cannot_create_or_deliver(cast, api, rich_tasks):
    assert api(cast.client_viewer).post(_url(cast), {"name": "mine"}, format="json").status_code == 403
    batch = _create(api, cast, rich_tasks).json()
    assert api(cast.client_viewer).post(_url(cast, f"{batch['id']}/deliver/")).status_code == 403
    assert api(cast.annotator).get(_url(cast)).status_code == 403
    assert api(cast.outsider).get(_url(cast)).status_code == 404
    assert Batch.objects.get(pk=batch["id"]).state == "open"


def test_report_csv_download(cast, api, delivered):
    response = api(cast.client_viewer).get(_url(cast, f"{delivered['id']}/report/?output=csv"))
    assert response["Content-Type"] == "text/csv"
    table = list(csv.DictReader(io.StringIO(response.content.decode())))
    rows = {(r["finding_class"], r["comparison"]): r for r in table}
    assert rows[("finding_laterality", "reader_vs_reader")]["n"] == "2"
    assert rows[("finding_laterality", "reader_vs_reader")]["value"] == "1.0"


def test_cost_report_prices_units_and_reports_reader_time_by_tier(cast, api, rich_tasks, delivered):
    report = api(cast.client_viewer).get(_url(cast, f"{delivered['id']}/costs/")).json()
    findings = sum(len(t.consensus.findings) for t in rich_tasks)
    assert report["units"] == {"studies": 2, "slices": 4, "findings": findings, "organs": 1}
    amounts = {line["unit"]: line["amount"] for line in report["lines"]}
    assert amounts == {"studies": 8.0, "slices": 2.0, "findings": float(findings), "organs": 10.0}
    assert report["total"] == 20.0 + findings and report["currency"] == "EUR"
    (annotators,) = report["reader_time"]
    assert annotators["tier"] == "Annotator" and annotators["reads"] == 4
    assert annotators["claim_to_submit_seconds"] >= 0 and "reader" not in annotators


def test_on_demand_report_of_an_open_batch(cast, api, rich_tasks, django_capture_on_commit_callbacks):
    batch = _create(api, cast, rich_tasks).json()
    url = _url(cast, f"{batch['id']}/report/")
    assert api(cast.manager).get(url).status_code == 409
    assert api(cast.client_viewer).post(url).status_code == 403
    with django_capture_on_commit_callbacks(execute=True):
        assert api(cast.manager).post(url).status_code == 202
    assert api(cast.manager).get(url).json()["tasks"] == 2


def test_tasks_without_consensus_are_refused_and_no_batch_is_stored(cast, api):
    add_ct_studies(cast.project, 1, seed=500)
    (queued,) = create_tasks(cast.project, by=cast.manager)
    response = _create(api, cast, [queued])
    assert response.status_code == 400
    assert "not in state consensus" in " ".join(response.json()["errors"]["tasks"])
    assert not Batch.objects.exists()


def test_foreign_tasks_are_refused_as_unknown(cast, api, rich_tasks):
    add_ct_studies(cast.foreign_project, 1, seed=600)
    (foreign,) = create_tasks(cast.foreign_project, by=None)
    batch = _create(api, cast, rich_tasks[:1]).json()
    response = api(cast.manager).post(_url(cast, f"{batch['id']}/tasks/"), {"tasks": [rich_tasks[1].pk, foreign.pk]},
                                      format="json")
    assert response.status_code == 400 and str(foreign.pk) in response.json()["errors"]["tasks"][0]
    assert list(Batch.objects.get(pk=batch["id"]).tasks.values_list("pk", flat=True)) == [rich_tasks[0].pk]
    assert Task.objects.get(pk=rich_tasks[1].pk).batch_id is None


def test_empty_batch_cannot_be_delivered(cast, api):
    batch = api(cast.manager).post(_url(cast), {"name": "empty"}, format="json").json()
    response = api(cast.manager).post(_url(cast, f"{batch['id']}/deliver/"))
    assert response.status_code == 400 and response.json()["code"] == "batch_empty"
    assert Batch.objects.get(pk=batch["id"]).state == "open"


def test_a_delivered_batch_takes_no_tasks_and_is_not_delivered_twice(cast, api, delivered):
    url = _url(cast, f"{delivered['id']}/")
    assert api(cast.manager).post(url + "deliver/").json()["code"] == "batch_delivered"
    assert api(cast.manager).post(url + "tasks/", {"tasks": delivered["tasks"]}, format="json").status_code == 409


def test_a_task_goes_in_one_batch_only_and_names_are_unique(cast, api, rich_tasks):
    assert _create(api, cast, rich_tasks[:1], name="a").status_code == 201
    taken = _create(api, cast, rich_tasks, name="b")
    assert taken.status_code == 400 and "Already in another batch" in " ".join(taken.json()["errors"]["tasks"])
    assert _create(api, cast, [], name="a").status_code == 409
    assert list(Batch.objects.values_list("name", flat=True)) == ["a"]


def test_bad_pricing_is_400_naming_the_field(cast, api, rich_tasks):
    response = _create(api, cast, rich_tasks, pricing={"per_study": -1, "per_banana": 2})
    assert response.status_code == 400
    assert set(response.json()["errors"]) == {"pricing.per_study", "pricing.per_banana"}
    assert not Batch.objects.exists()


def test_unknown_export_file_is_404(cast, api, delivered):
    assert api(cast.client_viewer).get(_url(cast, f"{delivered['id']}/exports/nothing.json/")).status_code == 404


def test_failed_export_build_is_recorded_and_can_be_rebuilt(cast, api, rich_tasks, monkeypatch,
                                                            django_capture_on_commit_callbacks):
    from tasks.exports import builder

    batch = _create(api, cast, rich_tasks).json()

    def broken(batch):
        raise OSError("disk full")

    monkeypatch.setattr(builder, "build_files", broken)
    failed = _deliver(api, cast, batch["id"], django_capture_on_commit_callbacks)
    assert failed["state"] == "delivered" and failed["export_state"] == "failed"
    # The exception's class, never its text (which may quote anything); the log has the rest.
    assert failed["export_error"] == ("The export files could not be built (OSError); the server log has the "
                                      "details.") and failed["exports"] == []
    monkeypatch.undo()
    with django_capture_on_commit_callbacks(execute=True):
        rebuilt = api(cast.manager).post(_url(cast, f"{batch['id']}/exports/"))
    assert rebuilt.status_code == 202
    assert Batch.objects.get(pk=batch["id"]).export_state == "ready"


def test_adjudicated_task_reports_its_adjudicator_tier(cast, api, django_capture_on_commit_callbacks):
    add_ct_studies(cast.project, 1, seed=700)
    (task,) = create_tasks(cast.project, by=cast.manager)
    read_task(api, cast.annotator, laterality("left"))
    read_task(api, cast.second_annotator, laterality("right"))
    radiologist = api(cast.radiologist)
    adjudication = radiologist.post("/api/adjudications/next/").json()
    resolved = radiologist.post(f"/api/adjudications/{adjudication['id']}/resolve/",
                                {"resolution": "new", "findings": [{"label": "finding_laterality", "value": "left"}],
                                 "rationale": "left on review"}, format="json")
    assert resolved.status_code == 200, resolved.json()
    batch = _create(api, cast, [task]).json()
    delivered = _deliver(api, cast, batch["id"], django_capture_on_commit_callbacks)
    manifest = json.loads(_download(api(cast.client_viewer),
                                    next(e["url"] for e in delivered["exports"] if e["name"] == "manifest.json")))
    assert manifest["tasks"][0]["consensus_method"] == "adjudicated"
    assert manifest["tasks"][0]["adjudicator_tier"] == "Radiologist"
    costs = api(cast.manager).get(_url(cast, f"{batch['id']}/costs/")).json()
    assert [(r["tier"], r["adjudications"]) for r in costs["reader_time"]] == [("Annotator", 0), ("Radiologist", 1)]

