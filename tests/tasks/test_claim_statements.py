"""What one claim and one submit cost the database: a fixed, small number of statements each.

The HTTP claim path's rate is bounded by the application server's CPU per request, most of it
spent building queries; these pins catch a change that adds a query to the hot path (issue 5).
"""

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from audit.models import AuditEvent
from audit.trail import verify_chains
from tasks.models import Read, Task
from tasks.states import ReadState, TaskState

pytestmark = pytest.mark.django_db

NEXT = "/api/queue/next/"
ANOTHER = {"another": True}  # a new read whatever the reader holds (else a claim resumes a held one)



def statements(call):
    with CaptureQueriesContext(connection) as queries:
        response = call()
    return response, [" ".join(q["sql"].split())[:80] for q in queries.captured_queries]


def test_a_claim_after_the_first_is_auth_and_one_message(cast, api, queued):
    client = api(cast.annotator)
    client.post(NEXT, ANOTHER, format="json")  # warms the locked version's schema cache
    response, sql = statements(lambda: client.post(NEXT, ANOTHER, format="json"))
    assert response.status_code == 200, response.content
    # token; the reader's advisory lock and the claim (deriving the rules, appending its audit
    # event) in one message
    assert len(sql) == 2, sql
    assert sql[1].startswith("SELECT pg_advisory_xact_lock("), sql


def test_a_claim_is_auth_and_lock_claim_and_audit_in_one_message(cast, api, queued):
    client = api(cast.annotator)
    client.post(NEXT, ANOTHER, format="json")  # warms the locked protocol version's schema cache
    response, sql = statements(lambda: client.post(NEXT, ANOTHER, format="json"))
    assert response.status_code == 200, response.content
    # token; the reader's advisory lock and the claim, which derives the reader's rules and appends
    # its audit event (there is no other claim path to fall back to for a common claim)
    assert len(sql) == 2, sql
    assert sql[1].startswith("SELECT pg_advisory_xact_lock("), sql
    body = response.json()
    assert body["task"] == queued[1].pk and body["series_uid"] is None
    assert [s["series_uid"] for s in body["dicomweb"]["series"]] == list(
        queued[1].study.series.order_by("id").values_list("series_uid", flat=True))
    # The event the claim statement appended is the one record_event would have written.
    event = AuditEvent.objects.get(action="claim", object_id=str(body["read"]))
    read = Read.objects.get(pk=body["read"])
    assert (event.actor_id, event.project_id, event.object_type) == (cast.annotator.pk, cast.project.pk, "tasks.read")
    assert event.actor_roles == "annotator" and event.actor_tier == 1 and event.outcome == "allowed"
    assert event.study_uid == queued[1].study.study_uid and event.protocol_version == 1
    assert event.extra == {"task": queued[1].pk, "lease_expires_at": read.lease_expires_at.isoformat()}
    result = verify_chains()
    assert result.ok and result.events == AuditEvent.objects.count(), result


def test_a_submit_is_auth_lock_checks_store_count_and_audit(cast, api, queued):
    client = api(cast.annotator)
    first = client.post(NEXT, ANOTHER, format="json").json()["read"]
    second = client.post(NEXT, ANOTHER, format="json").json()["read"]
    client.post(f"/api/reads/{first}/submit/", {"findings": []}, format="json")
    response, sql = statements(lambda: client.post(f"/api/reads/{second}/submit/", {"findings": []},
                                                   format="json"))
    assert response.status_code == 200, response.content
    # token, savepoint, the read (locked), its slot (locked), the read stored, the slot deleted,
    # the task counted with the audit event appended in the same statement, its claimed reads
    # counted, release
    assert len(sql) == 9, sql
    assert sql[6].startswith("WITH counted AS (UPDATE tasks_task"), sql
    assert Read.objects.get(pk=second).state == ReadState.SUBMITTED
    task = Task.objects.get(pk=queued[1].pk)
    assert task.reads_submitted == 1 and task.state == TaskState.IN_READING
    # The event the count appended is the one record_event would have written, and the chain holds.
    event = AuditEvent.objects.get(action="submit", object_id=str(second))
    assert (event.actor_id, event.project_id, event.object_type) == (cast.annotator.pk, cast.project.pk, "tasks.read")
    assert event.actor_roles == "annotator" and event.actor_tier == 1
    assert event.study_uid == queued[1].study.study_uid and event.protocol_version == 1
    assert event.extra == {"task": queued[1].pk, "findings": 0, "active_seconds": 0}
    assert event.request_id and event.client_ip == "127.0.0.1"
    result = verify_chains()
    assert result.ok and result.events == AuditEvent.objects.count(), result


def test_a_submit_whose_shard_has_no_head_still_records_its_event(cast, api, queued):
    """The embedded append writes nothing where the shard's head row is missing (a flushed
    database); the submit then appends through record_event, which creates the head."""
    client = api(cast.annotator)
    read = client.post(NEXT, ANOTHER, format="json").json()["read"]
    with connection.cursor() as cursor:  # as a flushed database: no events, no heads
        cursor.execute("SET LOCAL radqueue.audit_allow_truncate = 'on'")
        # Heads and anchors refuse deletes (audit 0004); the flush's TRUNCATE is what empties them.
        cursor.execute("TRUNCATE audit_auditevent, audit_auditchainhead, audit_auditanchor")
    assert client.post(f"/api/reads/{read}/submit/", {"findings": []}, format="json").status_code == 200
    assert AuditEvent.objects.filter(action="submit", object_id=str(read)).count() == 1
    assert verify_chains().ok


def test_taking_over_a_lapsed_lease_costs_no_extra_statement(cast, api, queued):
    from datetime import timedelta

    from django.utils import timezone

    from tasks.models import QueueSlot

    lapsed = api(cast.annotator).post(NEXT, ANOTHER, format="json").json()["read"]
    past = timezone.now() - timedelta(minutes=1)
    QueueSlot.objects.filter(read_id=lapsed).update(lease_expires_at=past)
    Read.objects.filter(pk=lapsed).update(lease_expires_at=past)
    client = api(cast.second_annotator)  # the first claim above warmed the process's caches
    response, sql = statements(lambda: client.post(NEXT, ANOTHER, format="json"))
    assert response.status_code == 200, response.content
    # token; the one-message claim, which leaves a lapsed lease to the claim in a transaction:
    # savepoint, lock and claim (the expired read's holder comes back with it), the expiry's audit
    # event, release
    assert Read.objects.get(pk=lapsed).state == ReadState.EXPIRED
    assert len(sql) == 6, sql
    assert AuditEvent.objects.filter(action="expire", object_id=str(lapsed)).count() == 1


def test_a_claim_that_may_resume_but_holds_nothing_is_still_auth_and_one_message(cast, api, queued):
    """The check for a held read to hand back rides in the claim statement: no statement more."""
    client = api(cast.annotator)
    done = client.post(NEXT, {}, format="json").json()["read"]
    assert client.post(f"/api/reads/{done}/submit/", {"findings": []}, format="json").status_code == 200
    response, sql = statements(lambda: client.post(NEXT, {}, format="json"))
    assert response.status_code == 200 and response.json()["resumed"] is False
    assert len(sql) == 2, sql
    assert sql[1].startswith("SELECT pg_advisory_xact_lock("), sql
