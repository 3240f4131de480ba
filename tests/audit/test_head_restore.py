"""A chain head that went missing does not stop the trail, and audit_restore_head puts it back, audited.

Heads can be deleted or moved back only by the retention role (audit migration 0004); a superuser
or a restore from an old backup can still leave a shard whose events outlive its head.
"""

import io
from unittest import mock

import pytest
from django.core.management import CommandError, call_command
from django.db import connection, transaction

from audit.models import AuditChainHead, AuditEvent
from audit.trail import record_event, verify_chains
from tests.audit.conftest import HEADS, cut_chain_end

pytestmark = pytest.mark.django_db


def _events(n, shard=5):
    with mock.patch("audit.trail._shard_for_writer", return_value=shard):
        return [record_event("view", object_type="core.project", object_id=i) for i in range(n)]


def test_a_shard_whose_head_is_gone_still_takes_events_on_another_shard():
    _events(3)
    cut_chain_end(5, keep=3)
    # Before: the head came back at genesis and the append collided with seq 1 on every write.
    moved = _events(2)
    assert [(e.shard, e.seq) for e in moved] == [(6, 1), (6, 2)]
    assert not AuditChainHead.objects.filter(shard=5).exists()
    result = verify_chains()
    assert [str(b).split(":")[0] for b in result.breaks] == ["shard 5"]


def test_restore_head_puts_a_missing_head_on_the_newest_event_and_records_it():
    events = _events(4)
    cut_chain_end(5, keep=2)
    assert not verify_chains([5]).ok
    out = io.StringIO()
    call_command("audit_restore_head", "--shard", "5", stdout=out)
    assert f"shard 5: head missing -> seq 2 {events[1].hash}" in out.getvalue()
    restored = AuditEvent.objects.get(action="audit_head_restored")
    assert restored.extra == {"shard": 5, "from_seq": None, "from_hash": None, "to_seq": 2, "hash": events[1].hash}
    assert verify_chains().ok
    assert _events(1)[0].shard == 5  # the shard takes its own writers' events again


def test_restore_head_moves_a_lagging_head_forward():
    events = _events(3)
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SET LOCAL radqueue.audit_retention = 'on'")
        cursor.execute(f"UPDATE {HEADS} SET seq = 1, hash = %s WHERE shard = 5", [events[0].hash])
    call_command("audit_restore_head", stdout=io.StringIO())
    head = AuditChainHead.objects.get(shard=5)
    assert (head.seq, head.hash) == (3, events[2].hash)
    assert AuditEvent.objects.get(action="audit_head_restored").extra["from_seq"] == 1
    assert verify_chains().ok


def test_restore_head_leaves_a_head_past_its_newest_event_as_evidence():
    events = _events(3)
    cut_chain_end(5, keep=2, head=False)
    err = io.StringIO()
    with pytest.raises(CommandError, match="ahead of their chain"):
        call_command("audit_restore_head", stdout=io.StringIO(), stderr=err)
    assert "past the newest event (seq 2)" in err.getvalue()
    assert AuditChainHead.objects.get(shard=5).hash == events[2].hash
    assert not AuditEvent.objects.filter(action="audit_head_restored").exists()
    assert not verify_chains([5]).ok


def test_restore_head_changes_nothing_on_an_intact_trail():
    _events(2)
    out = io.StringIO()
    call_command("audit_restore_head", stdout=out)
    assert "Restored 0 head(s)." in out.getvalue()
    assert not AuditEvent.objects.filter(action="audit_head_restored").exists()
