"""Ending a membership takes the person's open work back: their open reads and claimed
adjudications are released (audited, the revoker as actor), and every later request of theirs on
that work, DICOMweb included, answers 404."""

import pytest

from audit.models import AuditEvent
from core.memberships import grant_membership, revoke_membership
from core.models import Membership
from core.roles import Role
from tasks.adjudication import claim_next_adjudication
from tasks.creation import create_tasks
from tasks.models import Adjudication, QueueSlot, Read, Task
from tasks.queue import claim_next_read
from tasks.reads import submit_read
from tasks.states import ReadState, TaskState
from tests.tasks.conftest import add_ct_studies

pytestmark = pytest.mark.django_db

FINDINGS = {"findings": [{"label": "finding_laterality", "value": "left"}]}


def _membership(cast, user, role) -> Membership:
    return Membership.objects.get(project=cast.project, user=user, role=role)


def _revoke(cast, api, user, role):
    membership = _membership(cast, user, role)
    response = api(cast.manager).delete(f"/api/projects/{cast.project.pk}/memberships/{membership.pk}/")
    assert response.status_code == 204, response.content


def _every_request_on_the_read(client, read_id) -> dict[str, int]:
    return {
        "heartbeat": client.post(f"/api/reads/{read_id}/heartbeat/").status_code,
        "draft": client.put(f"/api/reads/{read_id}/draft/", {"draft": []}, format="json").status_code,
        "submit": client.post(f"/api/reads/{read_id}/submit/", FINDINGS, format="json").status_code,
        "release": client.post(f"/api/reads/{read_id}/release/").status_code,
        "detail": client.get(f"/api/reads/{read_id}/").status_code,
    }


def test_revoking_a_reader_releases_their_open_read_and_every_later_request_on_it_is_404(cast, api, queued):
    reader = api(cast.annotator)
    claim = reader.post("/api/queue/next/", {}, format="json").json()
    assert reader.put(f"/api/reads/{claim['read']}/draft/", {"draft": []}, format="json").status_code == 200
    study_url = f"/dicomweb/studies/{claim['study_uid']}/series"
    assert reader.get(study_url).status_code == 200

    _revoke(cast, api, cast.annotator, Role.ANNOTATOR)

    read = Read.objects.get(pk=claim["read"])
    assert read.state == ReadState.RELEASED
    assert _every_request_on_the_read(reader, read.pk) == dict.fromkeys(
        ("heartbeat", "draft", "submit", "release", "detail"), 404)
    assert reader.get(study_url).status_code == 404
    task = Task.objects.get(pk=claim["task"])
    assert task.reads_submitted == 0 and task.state == TaskState.QUEUED  # the submit counted for nothing
    assert QueueSlot.objects.filter(task=task, reader__isnull=True).count() == task.reads_required
    event = AuditEvent.objects.get(action="release", object_id=str(read.pk), outcome="allowed")
    assert event.actor_id == cast.manager.pk and event.extra == {"reason": "membership_ended",
                                                                 "reader": cast.annotator.pseudonym}
    # The slot is back in the queue: the next reader gets the same task.
    assert api(cast.second_annotator).post("/api/queue/next/", {}, format="json").json()["task"] == task.pk


def test_a_read_held_without_an_active_reader_role_is_404_even_if_nothing_released_it(cast, api, queued):
    """The lookups themselves require the role: a membership ended by any path closes the work."""
    reader = api(cast.annotator)
    claim = reader.post("/api/queue/next/", {}, format="json").json()
    Membership.objects.filter(project=cast.project, user=cast.annotator).update(is_active=False)  # no hooks run

    assert Read.objects.get(pk=claim["read"]).state == ReadState.CLAIMED
    assert {name: code for name, code in _every_request_on_the_read(reader, claim["read"]).items()
            if name != "detail"} == dict.fromkeys(("heartbeat", "draft", "submit", "release"), 404)
    assert reader.get(f"/dicomweb/studies/{claim['study_uid']}/series").status_code == 404


def test_a_reader_who_keeps_another_reader_role_keeps_their_reads(cast, api, queued):
    reader = api(cast.annotator)
    claim = reader.post("/api/queue/next/", {}, format="json").json()
    grant_membership(project=cast.project, user=cast.annotator, role=Role.RADIOLOGIST, subspecialties=["chest"],
                     by=cast.superuser)

    _revoke(cast, api, cast.annotator, Role.ANNOTATOR)

    assert Read.objects.get(pk=claim["read"]).state == ReadState.CLAIMED
    assert reader.post(f"/api/reads/{claim['read']}/heartbeat/").status_code == 200
    assert not AuditEvent.objects.filter(action="release", object_id=str(claim["read"])).exists()


def test_an_open_gold_check_is_released_too(cast, api):
    add_ct_studies(cast.project, 1)
    gold = create_tasks(cast.project, by=cast.manager, kind=Task.Kind.GOLD)[0]
    response = api(cast.manager).post(f"/api/projects/{cast.project.pk}/tasks/{gold.pk}/reference/", FINDINGS,
                                      format="json")
    assert response.status_code == 201, response.content
    cast.project.gold_rate = 1.0
    cast.project.save()
    claim = claim_next_read(cast.annotator)
    assert claim.read.is_check  # no slot: the task is not in the queue

    revoke_membership(_membership(cast, cast.annotator, Role.ANNOTATOR), by=cast.manager)

    assert Read.objects.get(pk=claim.read.pk).state == ReadState.RELEASED
    assert AuditEvent.objects.filter(action="release", object_id=str(claim.read.pk), actor_id=cast.manager.pk).exists()


def _disputed_task(cast):
    for reader, value in ((cast.annotator, "left"), (cast.second_annotator, "right")):
        claim = claim_next_read(reader)
        submit_read(claim.read.pk, reader, [{"label": "finding_laterality", "value": value}])
    return claim.task


def test_revoking_an_adjudicator_releases_their_adjudication_and_resolving_it_is_404(cast, api, queued):
    task = _disputed_task(cast)
    adjudicator = api(cast.radiologist)
    claimed = adjudicator.post("/api/adjudications/next/").json()
    assert claimed["task"] == task.pk

    _revoke(cast, api, cast.radiologist, Role.RADIOLOGIST)

    adjudication = Adjudication.objects.get(pk=claimed["id"])
    assert adjudication.state == Adjudication.State.OPEN and adjudication.adjudicator_id is None
    resolve = adjudicator.post(f"/api/adjudications/{adjudication.pk}/resolve/", {
        "resolution": "new", "rationale": "seen", "findings": FINDINGS["findings"]}, format="json")
    assert resolve.status_code == 404
    assert adjudicator.post(f"/api/adjudications/{adjudication.pk}/release/").status_code == 404
    assert adjudicator.get(f"/api/adjudications/{adjudication.pk}/").status_code == 404
    event = AuditEvent.objects.get(action="release", object_type="tasks.adjudication", object_id=str(adjudication.pk),
                                   outcome="allowed")
    assert event.actor_id == cast.manager.pk and event.extra["reason"] == "membership_ended"
    # It is back in the adjudication queue for any eligible senior reader.
    assert claim_next_adjudication(cast.neuro_subspecialist).pk == adjudication.pk


def test_an_adjudication_held_without_an_adjudicating_role_is_404(cast, api, queued):
    _disputed_task(cast)
    adjudicator = api(cast.radiologist)
    claimed = adjudicator.post("/api/adjudications/next/").json()
    Membership.objects.filter(project=cast.project, user=cast.radiologist).update(is_active=False)  # no hooks run

    resolve = adjudicator.post(f"/api/adjudications/{claimed['id']}/resolve/", {
        "resolution": "new", "rationale": "seen", "findings": FINDINGS["findings"]}, format="json")
    assert resolve.status_code == 404
    assert Adjudication.objects.get(pk=claimed["id"]).state == Adjudication.State.CLAIMED


def test_a_deactivated_account_is_refused_and_its_reads_return_to_the_queue_when_the_lease_lapses(cast, api, queued):
    from datetime import timedelta

    from django.utils import timezone

    from tasks.reads import sweep_expired_leases

    reader = api(cast.annotator)
    claim = reader.post("/api/queue/next/", {}, format="json").json()
    type(cast.annotator).objects.filter(pk=cast.annotator.pk).update(is_active=False)

    assert reader.post(f"/api/reads/{claim['read']}/heartbeat/").status_code == 401
    assert reader.get(f"/dicomweb/studies/{claim['study_uid']}/series").status_code == 401
    assert Read.objects.get(pk=claim["read"]).state == ReadState.CLAIMED  # until its lease lapses
    assert sweep_expired_leases(now=timezone.now() + timedelta(hours=2)) == 1
    assert Read.objects.get(pk=claim["read"]).state == ReadState.EXPIRED
