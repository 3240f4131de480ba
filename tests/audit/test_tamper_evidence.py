"""Truncating or rewinding a chain is detected, and the application's role cannot do it at all.

The attacker of issue 17 item 11 holds the application's database credentials: they may switch
the retention setting on in their session and delete the newest events of a chain and its head.
"""

import io
from unittest import mock

import pytest
from django.core.management import CommandError, call_command
from django.db import connection, transaction

from audit.models import AuditChainHead, AuditEvent
from audit.trail import record_event
from tests.audit.conftest import TABLE, postgres_only

pytestmark = pytest.mark.django_db
HEADS = AuditChainHead._meta.db_table


def _events(n, shard=5):
    with mock.patch("audit.trail._shard_for_writer", return_value=shard):
        return [record_event("view", object_type="core.project", object_id=i) for i in range(n)]


def _verify(*args):
    out, err = io.StringIO(), io.StringIO()
    try:
        call_command("audit_verify", *args, stdout=out, stderr=err)
    except CommandError as exc:
        return False, out.getvalue() + err.getvalue() + str(exc)
    return True, out.getvalue() + err.getvalue()


def _truncate_end(shard, keep, *, delete_head=True):
    """As a superuser with the retention switch on: remove the events after seq ``keep`` and the head."""
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SET LOCAL radqueue.audit_retention = 'on'")
        cursor.execute(f"DELETE FROM {TABLE} WHERE shard = %s AND seq > %s", [shard, keep])
        if delete_head:
            cursor.execute(f"DELETE FROM {HEADS} WHERE shard = %s", [shard])


# --- verification ---------------------------------------------------------------------------

@postgres_only
def test_verify_fails_when_the_newest_events_and_the_head_are_deleted():
    _events(4)
    _truncate_end(5, keep=2)
    ok, text = _verify()
    assert not ok
    assert "shard 5: chain head missing" in text
    assert "no head row" in text


def test_verify_fails_when_the_head_is_behind_the_newest_event():
    events = _events(4)
    # The portable model update skips the PostgreSQL head trigger only on SQLite; as a superuser on
    # PostgreSQL the raw update is refused (see below), so rewind with the trigger off.
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute(f"ALTER TABLE {HEADS} DISABLE TRIGGER USER")
        cursor.execute(f"UPDATE {HEADS} SET seq = 2, hash = %s WHERE shard = 5", [events[1].hash])
        if connection.vendor == "postgresql":
            cursor.execute(f"ALTER TABLE {HEADS} ENABLE TRIGGER USER")
    ok, text = _verify()
    assert not ok
    assert "shard 5: chain head behind the newest event" in text


def test_verify_passes_an_untouched_trail_with_heads():
    _events(3)
    ok, text = _verify()
    assert ok, text
    assert AuditEvent.objects.filter(shard=5).count() == 3
