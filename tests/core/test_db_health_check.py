"""core.postgresql: a busy persistent connection's health check asks the socket, not the server.

Django's own check costs a SELECT 1 round trip per request; this one must still replace a
connection the server has closed (a restart, pg_terminate_backend, a pooler going away) before
the request uses it, leave a live connection that served a request moments ago alone without
sending it anything, and fall back to Django's SELECT 1 for one that sat idle."""

import time

import pytest
from django.db import connection, connections

pytestmark = pytest.mark.django_db(transaction=True)



@pytest.fixture
def other():
    """A second connection to the test database, as a worker between two requests holds one."""
    wrapper = connections.create_connection("default")
    wrapper.ensure_connection()
    yield wrapper
    wrapper.close()


def backend_pid(wrapper) -> int:
    with wrapper.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        return cursor.fetchone()[0]


def state_change(pid: int):
    with connection.cursor() as cursor:
        cursor.execute("SELECT state_change FROM pg_stat_activity WHERE pid = %s", [pid])
        return cursor.fetchone()[0]


def next_request(wrapper) -> None:
    """What Django does when a request starts with a reused connection (close_old_connections)."""
    wrapper.health_check_done = False
    wrapper.close_if_health_check_failed()


def test_the_backend_is_django_postgresql_with_health_checks_on():
    assert connection.settings_dict["ENGINE"] == "core.postgresql"
    assert connection.settings_dict["CONN_HEALTH_CHECKS"] is True


def test_a_live_connection_is_kept_and_not_queried(other):
    pid = backend_pid(other)
    before = state_change(pid)
    next_request(other)
    assert other.connection is not None
    assert state_change(pid) == before  # nothing was sent: Django's check would have run SELECT 1
    assert backend_pid(other) == pid


def test_a_connection_idle_for_a_while_gets_djangos_select_1(other):
    from core.postgresql.base import QUIET_HEALTH_CHECK_SECONDS

    pid = backend_pid(other)
    before = state_change(pid)
    other._health_checked_at -= QUIET_HEALTH_CHECK_SECONDS + 1
    next_request(other)
    assert other.connection is not None and backend_pid(other) == pid
    assert state_change(pid) > before  # the server ran Django's check


def test_a_connection_the_server_closed_is_replaced_before_the_request_uses_it(other):
    pid = backend_pid(other)
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_terminate_backend(%s)", [pid])
        deadline = time.monotonic() + 10
        while True:  # the backend exits after the signal, and tells its client first
            cursor.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = %s", [pid])
            if cursor.fetchone()[0] == 0 or time.monotonic() > deadline:
                break
            time.sleep(0.02)
    next_request(other)
    assert other.connection is None  # closed: the request's first query opens a new one
    assert backend_pid(other) != pid
