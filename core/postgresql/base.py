"""Django's PostgreSQL backend, with a busy connection's health check done without a query.

Django's check (``CONN_HEALTH_CHECKS``) sends ``SELECT 1`` before the first query of every
request that reuses a connection: one round trip per request. On the claim path that was a
sixth of a gunicorn worker's time (py-spy, bench/claims.py), spent waiting on a database server
that shares the machine's two cores.

Here a connection that served a request moments ago is checked by asking its socket. An idle
connection receives nothing unless the server sent it something: the error PostgreSQL sends
before it closes a connection (a restart, ``pg_terminate_backend``, ``idle_session_timeout``, a
pooler going away) and the close itself. A readable socket, or one in error, means the
connection is closed now and the request opens a new one. Anything else the server may send an
idle session (a changed parameter after a configuration reload) only costs a reconnect.

A socket says nothing when the server vanished without a word (a host that rebooted or failed
over to the same address; the first packet sent then gets a reset). Django's ``SELECT 1`` meets
that reset and reconnects quietly, where a request's own query would fail. Such outages come
with idle time, so a connection idle for longer than ``QUIET_HEALTH_CHECK_SECONDS`` still gets
Django's check: a worker under load pays nothing, an idle one a round trip now and then.
"""

import select
import time

from django.db.backends.postgresql import base

QUIET_HEALTH_CHECK_SECONDS = 5.0


class DatabaseWrapper(base.DatabaseWrapper):
    _health_checked_at = None

    def close_if_health_check_failed(self):
        if self.pool:
            return  # the pool only hands out healthy connections (as Django's backend says)
        if self.connection is None or not self.health_check_enabled or self.health_check_done:
            return
        now = time.monotonic()
        quiet = self._health_checked_at is None or now - self._health_checked_at > QUIET_HEALTH_CHECK_SECONDS
        self._health_checked_at = now
        if self.in_atomic_block:
            pass  # never close mid-transaction (the outer atomic() checks before it begins)
        elif self._server_spoke_or_left():
            self.close()
        elif quiet:
            super().close_if_health_check_failed()  # Django's SELECT 1
            return
        self.health_check_done = True

    def connect(self):
        super().connect()
        self._health_checked_at = time.monotonic()  # a new connection needs no check for a while

    def _server_spoke_or_left(self) -> bool:
        if self.connection.closed:
            return True
        poller = select.poll()
        poller.register(self.connection.fileno(), select.POLLIN | select.POLLPRI)
        return bool(poller.poll(0))  # POLLERR, POLLHUP and POLLNVAL are always reported
