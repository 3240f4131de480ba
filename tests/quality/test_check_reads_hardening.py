"""Gold and calibration check reads lease, expire and move like production reads, and nobody is
served a check whose reference they read, adjudicated or imported (issue 17, items 4 and 5)."""

from datetime import timedelta

import pytest
from django.utils import timezone

from audit.models import AuditEvent
from core.memberships import grant_membership, revoke_membership
from core.models import Membership
from tasks.creation import create_tasks
from tasks.models import Adjudication, QueueSlot, Read, Task
from tasks.reads import sweep_expired_leases
from tasks.states import ReadState
from tests.factories import UserFactory
from tests.tasks.conftest import add_ct_studies

pytestmark = pytest.mark.django_db

FINDING = {"label": "finding_laterality", "value": "left"}


def _reference(api, manager, project, task, value="left"):
    response = api(manager).post(f"/api/projects/{project.pk}/tasks/{task.pk}/reference/",
                                 {"findings": [{"label": "finding_laterality", "value": value}]}, format="json")
    assert response.status_code == 201, response.json()


def _claim(client):
    response = client.post("/api/queue/next/", {}, format="json")
    return response.json() if response.status_code == 200 else None


def _set_gold_rate(project, rate):
    project.gold_rate = rate
    project.save(update_fields=["gold_rate"])


@pytest.fixture
def checks(cast, api):
    """Two gold tasks with an imported reference and two production tasks (k = 2)."""
    studies = add_ct_studies(cast.project, 4)
    gold = create_tasks(cast.project, by=cast.manager, kind=Task.Kind.GOLD,
                        studies=cast.project.studies.filter(pk__in=[s.pk for s in studies[:2]]))
    production = create_tasks(cast.project, by=cast.manager,
                              studies=cast.project.studies.filter(pk__in=[s.pk for s in studies[2:]]))
    for task in gold:
        _reference(api, cast.manager, cast.project, task)
    return {"gold": gold, "production": production}


def _one_production_and_one_check(cast, api, checks):
    production = _claim(api(cast.second_annotator))
    assert production["task"] in {t.pk for t in checks["production"]}
    _set_gold_rate(cast.project, 1.0)
    check = _claim(api(cast.annotator))
    assert check["task"] in {t.pk for t in checks["gold"]} and Read.objects.get(pk=check["read"]).is_check
    return production, check


def _lapse(*read_ids):
    past = timezone.now() - timedelta(minutes=1)
    Read.objects.filter(pk__in=read_ids).update(lease_expires_at=past)
    QueueSlot.objects.filter(read_id__in=read_ids).update(lease_expires_at=past)


def test_a_check_read_whose_lease_ran_out_is_expired_by_the_sweep_and_answers_as_a_production_read(
        cast, api, checks, sent, django_capture_on_commit_callbacks):
    production, check = _one_production_and_one_check(cast, api, checks)
    _lapse(production["read"], check["read"])
    with django_capture_on_commit_callbacks(execute=True):
        assert sweep_expired_leases() == 2
    assert Read.objects.get(pk=check["read"]).state == Read.objects.get(pk=production["read"]).state == "expired"
    for body, user in ((production, cast.second_annotator), (check, cast.annotator)):
        assert (f"reader.{user.pk}", "read.expired", {"read": body["read"]}) in sent
        assert AuditEvent.objects.filter(action="expire", object_id=str(body["read"]), actor_id=None).exists()

    answers = []
    for body, user in ((production, cast.second_annotator), (check, cast.annotator)):
        client, url = api(user), f"/api/reads/{body['read']}"
        responses = [client.post(f"{url}/heartbeat/"),
                     client.post(f"{url}/submit/", {"findings": [FINDING]}, format="json"),
                     client.put(f"{url}/draft/", {"draft": [FINDING]}, format="json"),
                     client.post(f"{url}/release/")]
        answers.append([(r.status_code, r.json()) for r in responses])
    assert answers[0] == answers[1]  # the same status codes and bodies: nothing tells a check apart
    assert {status for status, _ in answers[1]} == {409}
    assert {body["code"] for _, body in answers[1]} == {"read_expired"}
    assert Read.objects.get(pk=check["read"]).score is None  # never scored


def test_a_check_read_within_its_lease_is_not_swept(cast, api, checks):
    _production, check = _one_production_and_one_check(cast, api, checks)
    assert sweep_expired_leases() == 0
    assert api(cast.annotator).post(f"/api/reads/{check['read']}/heartbeat/").status_code == 200


def test_a_released_check_frees_the_readers_place_and_may_be_served_again(cast, api, checks):
    _set_gold_rate(cast.project, 1.0)
    client = api(cast.annotator)
    check = _claim(client)
    assert client.post(f"/api/reads/{check['read']}/release/").status_code == 200
    assert Read.objects.get(pk=check["read"]).state == ReadState.RELEASED
    # As a released production read's task may be claimed again, so may the released check's.
    assert _claim(client)["task"] == check["task"]


def test_a_manager_reassigns_a_check_read_as_a_production_read(cast, api, checks, sent,
                                                                django_capture_on_commit_callbacks):
    _set_gold_rate(cast.project, 1.0)
    check = _claim(api(cast.annotator))
    manager = api(cast.manager)
    with django_capture_on_commit_callbacks(execute=True):
        moved = manager.post(f"/api/projects/{cast.project.pk}/reads/{check['read']}/reassign/",
                             {"reader": cast.second_annotator.pk}, format="json")
    assert moved.status_code == 200, moved.content
    new = Read.objects.get(pk=moved.json()["id"])
    assert new.reader == cast.second_annotator and new.is_check and new.state == ReadState.CLAIMED
    assert new.task_id == check["task"] and new.lease_expires_at > timezone.now() + timedelta(minutes=29)
    assert Read.objects.get(pk=check["read"]).state == ReadState.CANCELLED
    assert (f"reader.{cast.annotator.pk}", "read.cancelled",
            {"read": check["read"], "task": check["task"], "reason": "reassigned"}) in sent
    assert AuditEvent.objects.filter(action="reassign", object_id=str(new.pk)).exists()

    stale = api(cast.annotator).post(f"/api/reads/{check['read']}/heartbeat/")
    assert stale.status_code == 409 and stale.json()["code"] == "read_cancelled"
    taker = api(cast.second_annotator)
    assert taker.post(f"/api/reads/{new.pk}/heartbeat/").status_code == 200
    submitted = taker.post(f"/api/reads/{new.pk}/submit/", {"findings": [FINDING]}, format="json")
    assert submitted.status_code == 200, submitted.json()
    assert Read.objects.get(pk=new.pk).score == 1.0  # scored against the reference, as a check


# --- nobody is served a check whose reference they saw ----------------------------------------

def _radiologist(cast, username):
    user = UserFactory(username=username, organization=cast.vendor)
    grant_membership(project=cast.project, user=user, role="radiologist", subspecialties=["chest"],
                     by=cast.manager)
    return user


def _submit(client, value):
    body = _claim(client)
    response = client.post(f"/api/reads/{body['read']}/submit/",
                           {"findings": [{"label": "finding_laterality", "value": value}]}, format="json")
    assert response.status_code == 200, response.json()
    return body


def test_the_adjudicator_of_a_gold_task_is_never_served_it_as_a_check(cast, api):
    studies = add_ct_studies(cast.project, 2)
    [gold] = create_tasks(cast.project, by=cast.manager, kind=Task.Kind.GOLD,
                          studies=cast.project.studies.filter(pk=studies[0].pk))
    [production] = create_tasks(cast.project, by=cast.manager, studies=cast.project.studies.filter(pk=studies[1].pk))
    second, adjudicator = _radiologist(cast, "second_radiologist"), _radiologist(cast, "adjudicating_radiologist")
    # Two radiologists disagree on the reference: the third adjudicates it.
    first_read = _submit(api(cast.radiologist), "left")
    assert _submit(api(second), "right")["task"] == gold.pk == first_read["task"]
    client = api(adjudicator)
    adjudication = client.post("/api/adjudications/next/").json()
    resolved = client.post(f"/api/adjudications/{adjudication['id']}/resolve/",
                           {"resolution": "read", "read": first_read["read"], "rationale": "Left is right."},
                           format="json")
    assert resolved.status_code == 200, resolved.json()
    assert Adjudication.objects.get(task=gold).adjudicator == adjudicator

    _set_gold_rate(cast.project, 1.0)
    # The production task is routed to annotators, so with the gold check withheld there is nothing.
    assert client.post("/api/queue/next/", {}, format="json").status_code == 204
    assert not Read.objects.filter(reader=adjudicator).exists()
    annotator = _claim(api(cast.annotator))
    assert annotator["task"] == gold.pk  # everybody else still gets the check
    assert production.pk != annotator["task"]


def test_whoever_imported_a_reference_is_never_served_it_as_a_check(cast, api):
    studies = add_ct_studies(cast.project, 2)
    gold = create_tasks(cast.project, by=cast.manager, kind=Task.Kind.GOLD,
                        studies=cast.project.studies.filter(pk__in=[s.pk for s in studies]))
    importer = UserFactory(username="second_manager", organization=cast.vendor)
    membership = grant_membership(project=cast.project, user=importer, role="manager", by=cast.manager)
    _reference(api, importer, cast.project, gold[0])
    _reference(api, cast.manager, cast.project, gold[1])
    # Later the importer stops managing the project and reads on it.
    revoke_membership(Membership.objects.get(pk=membership.pk), by=cast.manager)
    grant_membership(project=cast.project, user=importer, role="annotator", by=cast.manager)
    _set_gold_rate(cast.project, 1.0)
    client = api(importer)
    served = _claim(client)
    assert served["task"] == gold[1].pk  # not the one they wrote
    assert client.post(f"/api/reads/{served['read']}/submit/", {"findings": [FINDING]},
                       format="json").status_code == 200
    assert _claim(client) is None  # and never the one they imported, even with nothing else left
    assert Task.objects.get(pk=gold[0].pk).consensus.imported_by == importer

    # Nor can a manager hand it to them.
    held = _claim(api(cast.annotator))
    assert held["task"] == gold[0].pk
    refused = api(cast.manager).post(f"/api/projects/{cast.project.pk}/reads/{held['read']}/reassign/",
                                     {"reader": importer.pk}, format="json")
    assert refused.status_code == 400 and refused.json()["code"] == "not_eligible"
    assert Read.objects.get(pk=held["read"]).state == ReadState.CLAIMED
