"""Helpers for the audit tests: PostgreSQL-only marks and raw-SQL tampering past the append-only guards."""

from contextlib import contextmanager

import pytest
from django.db import connection

from audit.models import AuditEvent

TABLE = AuditEvent._meta.db_table
ROW_TRIGGER = "audit_event_no_update_delete"



def postgres_only(test):
    """Mark a test as PostgreSQL-only and skip it, saying why, on SQLite."""
    skip = pytest.mark.skipif(connection.vendor != "postgresql",
                              reason="needs PostgreSQL: the append-only trigger and row locks exist only there")
    return skip(pytest.mark.postgres(test))


@contextmanager
def tampering():
    """A cursor that can UPDATE/DELETE audit rows: on PostgreSQL the row trigger is off inside it.

    ALTER TABLE is transactional, so the test's rollback would restore the trigger anyway; it is
    re-enabled here so the rest of the test runs with the guard in place.
    """
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute(f"ALTER TABLE {TABLE} DISABLE TRIGGER {ROW_TRIGGER}")
        try:
            yield cursor
        finally:
            if connection.vendor == "postgresql":
                cursor.execute(f"ALTER TABLE {TABLE} ENABLE TRIGGER {ROW_TRIGGER}")
