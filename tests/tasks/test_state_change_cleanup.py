"""A task that leaves reading (cancelled, or a gold reference imported) ends or hands back what
hangs off it: claimed reads, their slots and DICOMweb access, an open or claimed adjudication
(issue 17, item 8)."""

import pytest

from audit.models import AuditEvent
from core.memberships import grant_membership
from tasks.creation import create_tasks
from tasks.models import Adjudication, QueueSlot, Read, Task
from tasks.states import ReadState, TaskState
from tests.factories import UserFactory
from tests.tasks.conftest import add_ct_studies

pytestmark = pytest.mark.django_db


def _claim(client):
    response = client.post("/api/queue/next/", {}, format="json")
    assert response.status_code == 200, response.content
    return response.json()


def _submit(client, value, body=None):
    body = body or _claim(client)
    response = client.post(f"/api/reads/{body['read']}/submit/",
                           {"findings": [{"label": "finding_laterality", "value": value}]}, format="json")
    assert response.status_code == 200, response.json()
    return body


def _import(api, cast, task):
    return api(cast.manager).post(f"/api/projects/{cast.project.pk}/tasks/{task.pk}/reference/",
                                  {"findings": [{"label": "finding_laterality", "value": "left"}]}, format="json")


def _radiologist(cast, username):
    user = UserFactory(username=username, organization=cast.vendor)
    grant_membership(project=cast.project, user=user, role="radiologist", subspecialties=["chest"],
                     by=cast.manager)
    return user


def _ended_for_the_reader(api, user, body, study_uid):
    """Every call on the read answers 409 with why, and its study is out of the reader's reach."""
    client, url = api(user), f"/api/reads/{body['read']}"
    for response in (client.post(f"{url}/heartbeat/"), client.post(f"{url}/release/"),
                     client.put(f"{url}/draft/", {"draft": []}, format="json"),
                     client.post(f"{url}/submit/", {"findings": []}, format="json")):
        assert response.status_code == 409 and response.json()["code"] == "read_cancelled", response.json()
        assert "cancelled" in response.json()["detail"]
    assert client.get(f"/dicomweb/studies/{study_uid}/series").status_code == 404


def test_importing_a_reference_ends_the_reads_claimed_on_the_task(cast, api, sent,
                                                                   django_capture_on_commit_callbacks):
    add_ct_studies(cast.project, 1)
    [task] = create_tasks(cast.project, by=cast.manager, kind=Task.Kind.GOLD)
    body = _claim(api(cast.radiologist))
    assert body["task"] == task.pk
    with django_capture_on_commit_callbacks(execute=True):
        assert _import(api, cast, task).status_code == 201
    read = Read.objects.get(pk=body["read"])
    assert read.state == ReadState.CANCELLED and read.ended_at is not None
    assert not QueueSlot.objects.filter(task=task).exists()
    assert Task.objects.get(pk=task.pk).state == TaskState.CONSENSUS
    assert (f"reader.{cast.radiologist.pk}", "read.cancelled",
            {"read": read.pk, "task": task.pk, "reason": "task_settled"}) in sent
    assert AuditEvent.objects.filter(action="cancel", object_type="tasks.read", object_id=str(read.pk),
                                     actor_id=cast.manager.pk, extra__reason="task_settled").exists()
    _ended_for_the_reader(api, cast.radiologist, body, task.study.study_uid)
    assert not Read.objects.filter(reader=cast.radiologist, state=ReadState.CLAIMED).exists()  # its place is free


def _disagreeing_gold_task(cast, api):
    add_ct_studies(cast.project, 1)
    [task] = create_tasks(cast.project, by=cast.manager, kind=Task.Kind.GOLD)
    second = _radiologist(cast, "second_radiologist")
    _submit(api(cast.radiologist), "left")
    _submit(api(second), "right")
    return Task.objects.get(pk=task.pk)


def test_importing_a_reference_while_adjudication_is_claimed_cancels_it_and_its_resolution_answers_409(
        cast, api, sent, django_capture_on_commit_callbacks):
    task = _disagreeing_gold_task(cast, api)
    assert task.state == TaskState.AWAITING_ADJUDICATION
    adjudicator = api(_radiologist(cast, "adjudicating_radiologist"))
    held = adjudicator.post("/api/adjudications/next/").json()
    with django_capture_on_commit_callbacks(execute=True):
        assert _import(api, cast, task).status_code == 201
    adjudication = Adjudication.objects.get(pk=held["id"])
    assert adjudication.state == Adjudication.State.CANCELLED
    assert (f"project.{cast.project.pk}", "adjudication.cancelled",
            {"adjudication": adjudication.pk, "task": task.pk, "reason": "task_settled"}) in sent
    assert AuditEvent.objects.filter(action="cancel", object_type="tasks.adjudication",
                                     object_id=str(adjudication.pk)).exists()
    resolved = adjudicator.post(f"/api/adjudications/{held['id']}/resolve/",
                                {"resolution": "new", "findings": [], "rationale": "Too late."}, format="json")
    assert resolved.status_code == 409 and resolved.json()["code"] == "adjudication_cancelled"
    assert "cancelled" in resolved.json()["detail"]
    released = adjudicator.post(f"/api/adjudications/{held['id']}/release/")
    assert released.status_code == 409 and released.json()["code"] == "adjudication_cancelled"
    assert Task.objects.get(pk=task.pk).consensus.method == "gold_reference"


def test_importing_a_reference_while_adjudication_is_open_leaves_nothing_to_claim(cast, api):
    task = _disagreeing_gold_task(cast, api)
    assert _import(api, cast, task).status_code == 201
    assert Adjudication.objects.get(task=task).state == Adjudication.State.CANCELLED
    assert api(_radiologist(cast, "adjudicating_radiologist")).post("/api/adjudications/next/").status_code == 204


def test_a_cancelled_task_takes_no_reference(cast, api):
    add_ct_studies(cast.project, 1)
    [task] = create_tasks(cast.project, by=cast.manager, kind=Task.Kind.GOLD)
    assert api(cast.manager).post(f"/api/projects/{cast.project.pk}/tasks/{task.pk}/cancel/").status_code == 200
    refused = _import(api, cast, task)
    assert refused.status_code == 409 and refused.json()["code"] == "illegal_transition"
    assert Task.objects.get(pk=task.pk).state == TaskState.CANCELLED


def test_cancelling_a_task_awaiting_adjudication_closes_the_adjudication(cast, api, sent,
                                                                         django_capture_on_commit_callbacks):
    add_ct_studies(cast.project, 1)
    [task] = create_tasks(cast.project, by=cast.manager)
    _submit(api(cast.annotator), "left")
    _submit(api(cast.second_annotator), "right")
    adjudication = Adjudication.objects.get(task=task)
    assert adjudication.state == Adjudication.State.OPEN
    with django_capture_on_commit_callbacks(execute=True):
        cancelled = api(cast.manager).post(f"/api/projects/{cast.project.pk}/tasks/{task.pk}/cancel/")
    assert cancelled.status_code == 200 and cancelled.json()["state"] == "cancelled"
    assert Adjudication.objects.get(pk=adjudication.pk).state == Adjudication.State.CANCELLED
    assert (f"project.{cast.project.pk}", "adjudication.cancelled",
            {"adjudication": adjudication.pk, "task": task.pk, "reason": "task_cancelled"}) in sent
    assert api(cast.radiologist).post("/api/adjudications/next/").status_code == 204


def test_cancelling_a_task_with_a_claimed_adjudication_makes_its_resolution_a_409(cast, api):
    add_ct_studies(cast.project, 1)
    [task] = create_tasks(cast.project, by=cast.manager)
    _submit(api(cast.annotator), "left")
    _submit(api(cast.second_annotator), "right")
    adjudicator = api(cast.radiologist)
    held = adjudicator.post("/api/adjudications/next/").json()
    assert api(cast.manager).post(f"/api/projects/{cast.project.pk}/tasks/{task.pk}/cancel/").status_code == 200
    resolved = adjudicator.post(f"/api/adjudications/{held['id']}/resolve/",
                                {"resolution": "new", "findings": [], "rationale": "Too late."}, format="json")
    assert resolved.status_code == 409 and resolved.json()["code"] == "adjudication_cancelled"
    assert not hasattr(Task.objects.get(pk=task.pk), "consensus")


def test_cancelling_a_task_tells_its_readers_and_ends_their_reads(cast, api, sent,
                                                                  django_capture_on_commit_callbacks):
    add_ct_studies(cast.project, 1)
    [task] = create_tasks(cast.project, by=cast.manager)
    body = _claim(api(cast.annotator))
    with django_capture_on_commit_callbacks(execute=True):
        assert api(cast.manager).post(f"/api/projects/{cast.project.pk}/tasks/{task.pk}/cancel/").status_code == 200
    assert (f"reader.{cast.annotator.pk}", "read.cancelled",
            {"read": body["read"], "task": task.pk, "reason": "task_cancelled"}) in sent
    assert AuditEvent.objects.filter(action="cancel", object_type="tasks.read", object_id=str(body["read"]),
                                     extra__reason="task_cancelled").exists()
    _ended_for_the_reader(api, cast.annotator, body, task.study.study_uid)
    assert not QueueSlot.objects.filter(task=task).exists()
