"""The claim derives what the reader may claim in its own statement (tasks/sql/claim.sql): a change
to a membership or a project holds from the very next claim, and the common claim is one message
(the reader's lock and the statement), committed with its audit event. What it leaves (a lapsed
lease, a missing chain head, tasks other claims are taking) goes to the claim in a transaction."""

from datetime import timedelta

import pytest
from django.db import connection, connections
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from audit.models import AuditEvent
from audit.trail import verify_chains
from core.memberships import grant_membership
from core.protocols import create_protocol_version
from tasks.creation import create_tasks
from tasks.locks import AdvisoryLock
from tasks.models import QueueSlot, Read
from tasks.states import ReadState
from tests.factories import ProjectFactory
from tests.tasks.conftest import add_ct_studies

pytestmark = pytest.mark.django_db

NEXT = "/api/queue/next/"
ANOTHER = {"another": True}  # a new read whatever the reader holds (else a claim resumes a held one)



def claim_and_how(client) -> tuple[object, bool]:
    """(the claim's response, whether it was the one-message claim: no other claim statement and
    no transaction around it)."""
    with CaptureQueriesContext(connection) as queries:
        response = client.post(NEXT, ANOTHER, format="json")
    sql = [q["sql"] for q in queries.captured_queries]
    claims = [s for s in sql if s.startswith("SELECT pg_advisory_xact_lock(")]
    return response, len(claims) == 1 and not any(s.startswith("SAVEPOINT") for s in sql)


def test_a_claim_takes_one_round_trip_and_matches_the_first(cast, api, queued):
    client = api(cast.annotator)
    first, fast = claim_and_how(client)
    assert first.status_code == 200 and fast
    response, fast = claim_and_how(client)
    assert response.status_code == 200 and fast
    body = response.json()
    read = Read.objects.get(pk=body["read"])
    assert read.reader_id == cast.annotator.pk and read.state == ReadState.CLAIMED
    assert body["task"] != first.json()["task"]  # never the task the reader already holds
    assert set(body) == set(first.json())
    assert read.lease_expires_at - read.claimed_at == timedelta(seconds=cast.project.lease_seconds)
    event = AuditEvent.objects.get(action="claim", object_id=str(read.pk))
    assert event.extra == {"task": read.task_id, "lease_expires_at": read.lease_expires_at.isoformat()}
    assert verify_chains().ok


def test_a_suspension_stops_the_next_claim(cast, api, queued):
    client = api(cast.annotator)
    assert client.post(NEXT, ANOTHER, format="json").status_code == 200
    cast.project.memberships.filter(user=cast.annotator).update(is_suspended=True)
    response, _ = claim_and_how(client)
    assert response.status_code == 204
    assert Read.objects.filter(reader=cast.annotator).count() == 1


def test_a_changed_project_setting_is_used_by_the_next_claim(cast, api, queued):
    client = api(cast.annotator)
    assert client.post(NEXT, ANOTHER, format="json").status_code == 200
    cast.project.lease_seconds = 120
    cast.project.save()
    response, fast = claim_and_how(client)
    assert response.status_code == 200 and fast  # the statement reads the project as it is now
    read = Read.objects.get(pk=response.json()["read"])
    assert read.lease_expires_at - read.claimed_at == timedelta(seconds=120)
    response, fast = claim_and_how(client)
    assert response.status_code == 200 and fast
    read = Read.objects.get(pk=response.json()["read"])
    assert read.lease_expires_at - read.claimed_at == timedelta(seconds=120)


def test_a_lowered_open_read_limit_holds_from_the_next_claim(cast, api, queued):
    client = api(cast.annotator)
    assert client.post(NEXT, ANOTHER, format="json").status_code == 200
    assert client.post(NEXT, ANOTHER, format="json").status_code == 200
    cast.project.max_open_reads = 2
    cast.project.save()
    refused = client.post(NEXT, ANOTHER, format="json")
    assert refused.status_code == 409 and refused.json()["code"] == "open_read_limit"
    assert Read.objects.filter(reader=cast.annotator, state=ReadState.CLAIMED).count() == 2


def test_a_new_membership_widens_the_next_claim(cast, api, queued):
    """Rules on several projects: still one message, the best slot of them all, its event with it."""
    client = api(cast.annotator)
    assert client.post(NEXT, ANOTHER, format="json").status_code == 200
    other = ProjectFactory(name="Head CT", client=cast.client_org, vendor=cast.vendor, modalities=["CT"])
    create_protocol_version(project=other, name="v1", template="generic_findings", by=cast.manager)
    grant_membership(project=other, user=cast.annotator, role="annotator", by=cast.manager)
    add_ct_studies(other, 1, seed=900)
    created = create_tasks(other, by=cast.manager)
    QueueSlot.objects.filter(project=other).update(priority=5)
    response, fast = claim_and_how(client)
    assert response.status_code == 200 and fast
    assert response.json()["task"] == created[0].pk  # the new project's more urgent work
    event = AuditEvent.objects.get(action="claim", object_id=str(response.json()["read"]))
    assert event.project_id == other.pk and event.actor_roles == "annotator" and event.actor_tier == 1
    assert verify_chains().ok


def test_a_lapsed_lease_at_the_head_is_taken_over_with_its_end_recorded(cast, api, queued):
    client = api(cast.second_annotator)
    learned = client.post(NEXT, ANOTHER, format="json").json()["read"]
    assert client.post(f"/api/reads/{learned}/release/").status_code == 200
    lapsed = api(cast.annotator).post(NEXT, ANOTHER, format="json").json()["read"]  # the slot at the head
    past = timezone.now() - timedelta(minutes=1)
    Read.objects.filter(pk=lapsed).update(lease_expires_at=past)
    QueueSlot.objects.filter(read_id=lapsed).update(lease_expires_at=past)
    response, fast = claim_and_how(client)
    assert response.status_code == 200 and not fast
    assert Read.objects.get(pk=lapsed).state == ReadState.EXPIRED
    assert AuditEvent.objects.filter(action="expire", object_id=str(lapsed)).count() == 1


@pytest.mark.django_db(transaction=True)
def test_outside_a_transaction_the_claim_commits_with_its_audit_event(cast, api, queued):
    """As under a server (no request-wide transaction): the lock and the claim run as one implicit
    transaction, committed when the message is done; another connection sees both."""
    client = api(cast.annotator)
    assert client.post(NEXT, ANOTHER, format="json").status_code == 200
    assert connection.get_autocommit() and not connection.in_atomic_block
    response, fast = claim_and_how(client)
    assert response.status_code == 200 and fast
    assert not connection.in_atomic_block
    read_id = response.json()["read"]
    other = connections.create_connection("default")
    try:
        with other.cursor() as cursor:
            cursor.execute("SELECT state FROM tasks_read WHERE id = %s", [read_id])
            assert cursor.fetchone() == ("claimed",)
            cursor.execute("SELECT count(*) FROM audit_auditevent WHERE action = 'claim' AND object_id = %s",
                           [str(read_id)])
            assert cursor.fetchone() == (1,)
            # The transaction-level claim lock went with the implicit transaction.
            cursor.execute("SELECT pg_try_advisory_xact_lock(%s, %s)", [int(AdvisoryLock.CLAIM), cast.annotator.pk])
            assert cursor.fetchone() == (True,)
    finally:
        other.close()
    assert verify_chains().ok


def test_without_a_chain_head_for_its_event_the_claim_runs_in_a_transaction(cast, api, queued):
    """The one-message claim commits on its own, so it claims only where its audit event goes in
    with it; where the shard's chain head is missing (a flushed database), the claim runs again in
    a transaction and appends the event there."""
    client = api(cast.annotator)
    assert client.post(NEXT, ANOTHER, format="json").status_code == 200
    with connection.cursor() as cursor:
        cursor.execute("SET LOCAL radqueue.audit_allow_truncate = 'on'")
        # Heads and anchors refuse deletes (audit 0004); the flush's TRUNCATE is what empties them.
        cursor.execute("TRUNCATE audit_auditevent, audit_auditchainhead, audit_auditanchor")
    response, fast = claim_and_how(client)
    assert response.status_code == 200 and not fast
    assert AuditEvent.objects.filter(action="claim", object_id=str(response.json()["read"])).count() == 1
    assert verify_chains().ok


@pytest.mark.django_db(transaction=True)
def test_a_task_another_claim_is_taking_is_skipped_without_waiting_and_still_handed_out_when_it_is_the_last(
        cast, api, queued):
    """A claim in flight holds its task's one-key advisory lock until it commits. The one-message
    claim passes over that task's free slot to the next task's (instead of waiting on the task's
    row for the other claim to commit); where that slot is the only work left, the claim in a
    transaction, which does not skip, hands it out."""
    client = api(cast.annotator)
    first = client.post(NEXT, ANOTHER, format="json").json()  # the head task's first slot
    assert first["task"] == queued[0].pk
    other = connections.create_connection("default")
    try:
        other.set_autocommit(False)
        with other.cursor() as cursor:  # another reader's claim of the head task's second slot, in flight
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", [queued[1].pk])
        response, fast = claim_and_how(api(cast.second_annotator))
        assert response.status_code == 200 and fast  # the head task is not busy: its second slot
        assert response.json()["task"] == queued[0].pk
        response, fast = claim_and_how(client)
        assert response.status_code == 200 and fast
        assert response.json()["task"] == queued[2].pk  # not the busy queued[1]
        # Only queued[1]'s slots are left; this reader holds none of them.
        response, fast = claim_and_how(client)
        assert response.status_code == 200 and not fast  # nothing in one message: looked at again, not skipping
        assert response.json()["task"] == queued[1].pk
        other.rollback()
    finally:
        other.close()
    assert Read.objects.filter(reader=cast.annotator, state=ReadState.CLAIMED).count() == 3
    assert verify_chains().ok
