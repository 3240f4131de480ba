"""The chain itself: record_event links events, the table is append-only, rollbacks leave nothing."""

from unittest import mock

import pytest
from django.db import DatabaseError, connection, transaction

from audit.models import AppendOnlyError, AuditChainHead, AuditEvent
from audit.trail import GENESIS, canonical, event_hash, record_event, verify_chains
from core.memberships import grant_membership
from core.roles import Role
from tests.audit.conftest import TABLE

pytestmark = pytest.mark.django_db


def test_events_of_a_shard_form_a_chain_from_its_head():
    first = record_event("view", object_type="core.project", object_id=1)
    second = record_event("view", object_type="core.project", object_id=2)
    assert (first.shard, second.seq) == (second.shard, first.seq + 1)
    assert second.prev_hash == first.hash
    stored = AuditEvent.objects.filter(pk=second.pk).values().get()
    assert stored["hash"] == event_hash(stored) == second.hash
    head = AuditChainHead.objects.get(shard=second.shard)
    assert (head.seq, head.hash) == (second.seq, second.hash)
    assert verify_chains().ok


def test_first_event_of_a_fresh_shard_links_to_genesis():
    with mock.patch("audit.trail._shard_for_writer", return_value=5):
        event = record_event("view")
    assert (event.shard, event.seq, event.prev_hash) == (5, 1, GENESIS)


def test_hash_covers_every_field_and_the_link():
    event = AuditEvent.objects.filter(pk=record_event("view", extra={"k": 1}).pk).values().get()
    for name, other in [("object_id", "99"), ("outcome", "denied"), ("extra", {"k": 2}), ("prev_hash", "1" * 64),
                        ("seq", event["seq"] + 1), ("actor_id", 7), ("client_ip", "10.0.0.1")]:
        assert event_hash({**event, name: other}) != event["hash"], name


def test_canonical_encoding_is_utc_and_sorted():
    event = AuditEvent.objects.filter(pk=record_event("view", reason="ü").pk).values().get()
    text = canonical(event).decode()
    assert text.startswith('{"action":"view"') and '"reason":"ü"' in text
    assert event["occurred_at"].strftime("%Y-%m-%dT%H:%M:%S.%fZ") in text


def test_disabled_audit_records_nothing(settings):
    settings.AUDIT_ENABLED = False
    assert record_event("view") is None
    assert not AuditEvent.objects.exists()


def test_model_refuses_update_and_delete():
    event = record_event("view")
    event.outcome = "denied"
    with pytest.raises(AppendOnlyError):
        event.save()
    with pytest.raises(AppendOnlyError):
        event.delete()
    with pytest.raises(AppendOnlyError):
        AuditEvent.objects.filter(pk=event.pk).update(outcome="denied")
    with pytest.raises(AppendOnlyError):
        AuditEvent.objects.filter(pk=event.pk).delete()
    assert AuditEvent.objects.get(pk=event.pk).outcome == "allowed"


@pytest.mark.parametrize("statement", [
    f"UPDATE {TABLE} SET outcome = 'denied' WHERE id = %s",
    f"DELETE FROM {TABLE} WHERE id = %s",
])
def test_trigger_refuses_raw_update_and_delete(statement):
    event = record_event("view")
    with pytest.raises(DatabaseError, match="append-only"), transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(statement, [event.pk])
    assert AuditEvent.objects.filter(pk=event.pk, outcome="allowed").exists()


def test_trigger_refuses_truncate_unless_the_test_database_allows_it():
    record_event("view")
    with connection.cursor() as cursor:
        # conftest lets the throw-away test database flush the table; production has no such setting.
        cursor.execute("SET radqueue.audit_allow_truncate = off")
        with pytest.raises(DatabaseError, match="append-only: TRUNCATE refused"), transaction.atomic():
            cursor.execute(f"TRUNCATE {TABLE}")
        with pytest.raises(DatabaseError, match="append-only: DELETE refused"), transaction.atomic():
            cursor.execute(f"DELETE FROM {TABLE}")
    assert AuditEvent.objects.count() == 1


def test_trigger_allows_delete_only_with_the_retention_setting_in_that_transaction():
    event = record_event("view")
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SET LOCAL radqueue.audit_retention = 'on'")
        cursor.execute(f"DELETE FROM {TABLE} WHERE id = %s", [event.pk])
    assert not AuditEvent.objects.filter(pk=event.pk).exists()


def test_rolled_back_service_write_leaves_no_event_and_chains_verify(cast):
    before = AuditEvent.objects.filter(action="permission_granted").count()
    with pytest.raises(RuntimeError, match="after the grant"), transaction.atomic():
        grant_membership(project=cast.project, user=cast.outsider, role=Role.AUDITOR, by=cast.superuser)
        assert AuditEvent.objects.filter(action="permission_granted").count() == before + 1
        raise RuntimeError("failure after the grant")
    assert AuditEvent.objects.filter(action="permission_granted").count() == before
    assert verify_chains().ok
    # The head moved back with the event: the next event takes the rolled-back seq.
    nxt = record_event("view")
    assert AuditEvent.objects.filter(shard=nxt.shard, seq=nxt.seq).count() == 1
    assert verify_chains().ok


def test_roles_and_tier_of_the_actor_are_recorded(cast):
    event = record_event("view", actor=cast.radiologist, project=cast.project)
    assert (event.actor_roles, event.actor_tier) == ("radiologist", 2)
    event = record_event("view", actor=cast.superuser, project=cast.project)
    assert event.actor_roles == "superuser"


def test_values_equal_to_the_internal_stand_ins_still_chain(cast):
    from audit.trail import _STAND_IN

    events = [record_event("view", reason=_STAND_IN["prev_hash"]),
              record_event("view", actor=cast.qa, project=cast.project, object_id=_STAND_IN["actor_roles"]),
              record_event(_STAND_IN["seq"], extra={"x": _STAND_IN["actor_tier"]})]
    assert [e.prev_hash for e in events[1:]] == [e.hash for e in events[:-1]]
    assert AuditEvent.objects.get(pk=events[0].pk).reason == _STAND_IN["prev_hash"]
    assert (events[1].actor_roles, events[1].actor_tier) == ("qa", None)
    assert verify_chains().ok


@pytest.mark.parametrize("who,extra_roles", [
    ("radiologist", []), ("neuro_subspecialist", [Role.ANNOTATOR]), ("qa", [Role.AUDITOR, Role.PRIVACY_OFFICER]),
    ("manager", []), ("outsider", []), ("superuser", []), ("client_viewer", []),
])
def test_recorded_roles_match_the_memberships(cast, who, extra_roles):
    """On PostgreSQL the roles are looked up inside the append statement; they must equal _roles_of's."""
    from audit.trail import _roles_of

    user = cast.user(who)
    for role in extra_roles:
        grant_membership(project=cast.project, user=user, role=role, by=cast.superuser)
    expected = _roles_of(user, cast.project.pk)
    event = record_event("view", actor=user, project=cast.project)
    stored = AuditEvent.objects.get(pk=event.pk)
    assert (event.actor_roles, event.actor_tier) == (stored.actor_roles, stored.actor_tier) == expected
    assert verify_chains().ok


def test_inactive_memberships_do_not_count(cast):
    from core.memberships import revoke_membership

    revoke_membership(cast.project.memberships.get(user=cast.radiologist), by=cast.manager)
    event = record_event("view", actor=cast.radiologist, project=cast.project)
    assert (event.actor_roles, event.actor_tier) == ("", None)
    assert verify_chains().ok


def test_missing_head_row_is_recreated_at_genesis():
    with transaction.atomic(), connection.cursor() as cursor:
        # Heads can only be deleted by the retention role (audit 0004).
        cursor.execute("SET LOCAL radqueue.audit_retention = 'on'")
        AuditChainHead.objects.filter(shard=9).delete()
    with mock.patch("audit.trail._shard_for_writer", return_value=9):
        first, second = record_event("view"), record_event("view")
    assert (first.seq, first.prev_hash, second.prev_hash) == (1, GENESIS, first.hash)
    assert AuditChainHead.objects.get(shard=9).hash == second.hash
    assert verify_chains([9]).ok


def test_returned_event_matches_the_stored_row(cast):
    event = record_event("view", actor=cast.qa, project=cast.project, study_uid="1.2.3", protocol_version=1,
                         extra={"n": [1, 2], "s": "ü"}, reason="why")
    stored = AuditEvent.objects.get(pk=event.pk)
    for field in AuditEvent._meta.concrete_fields:
        assert getattr(event, field.attname) == getattr(stored, field.attname), field.name
    assert not event._state.adding


def test_a_servers_workers_and_their_threads_append_to_different_chains(monkeypatch):
    """Consecutive process ids (a server's forked workers) and the threads of one process get
    distinct shards, so concurrent writers do not queue on one chain head."""
    import itertools
    import threading

    from audit import trail

    shards = set()
    for pid in range(4242, 4250):  # eight workers forked one after another
        monkeypatch.setattr(trail.os, "getpid", lambda pid=pid: pid)
        monkeypatch.setattr(trail, "_thread_numbers", itertools.count())  # each worker numbers its own threads
        found = []
        for _ in range(8):  # a worker's eight threads
            thread = threading.Thread(target=lambda found=found: found.append(trail._shard_for_writer()))
            thread.start()
            thread.join()
        assert len(set(found)) == 8, found
        shards |= set(found)
    assert len(shards) == 64
