"""Helpers for the audit tests: raw-SQL tampering past the append-only guards."""

from contextlib import contextmanager

from django.db import connection, transaction

from audit.models import AuditChainHead, AuditEvent

TABLE = AuditEvent._meta.db_table
HEADS = AuditChainHead._meta.db_table
ROW_TRIGGER = "audit_event_no_update_delete"



@contextmanager
def tampering():
    """A cursor that can UPDATE/DELETE audit rows: the row trigger is off inside it.

    ALTER TABLE is transactional, so the test's rollback would restore the trigger anyway; it is
    re-enabled here so the rest of the test runs with the guard in place.
    """
    with connection.cursor() as cursor:
        cursor.execute(f"ALTER TABLE {TABLE} DISABLE TRIGGER {ROW_TRIGGER}")
        try:
            yield cursor
        finally:
            cursor.execute(f"ALTER TABLE {TABLE} ENABLE TRIGGER {ROW_TRIGGER}")


def cut_chain_end(shard, *, keep, head=True):
    """As a holder of the retention role would: remove the events after seq ``keep`` and (``head``)
    the shard's head row; what an attacker with those rights does to hide the newest events."""
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SET LOCAL radqueue.audit_retention = 'on'")
        cursor.execute(f"DELETE FROM {TABLE} WHERE shard = %s AND seq > %s", [shard, keep])
        if head:
            cursor.execute(f"DELETE FROM {HEADS} WHERE shard = %s", [shard])
