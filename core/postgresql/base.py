"""Django's PostgreSQL backend, with a persistent connection's health check done without a query.

Django's check (``CONN_HEALTH_CHECKS``) sends ``SELECT 1`` before the first query of every
request that reuses a connection: one round trip per request. On the claim path that was a
sixth of a gunicorn worker's time (py-spy, bench/claims.py), spent waiting on a database server
that shares the machine's two cores.

Here the check asks the socket instead. Between requests an idle connection receives nothing
unless the server sent it something: the error PostgreSQL sends before it closes a connection
(a restart, ``pg_terminate_backend``, ``idle_session_timeout``, a pooler going away) and the
close itself. A readable socket, or one in error, means the connection is closed now and the
request opens a new one, as Django's check would. A connection that died without a word (a
network cut) fails its next query, as it would have failed Django's ``SELECT 1``; Django then
drops it at the end of that request. Anything else the server may send an idle session (a
changed parameter after a configuration reload) only costs a reconnect.
"""

import select

from django.db.backends.postgresql import base


class DatabaseWrapper(base.DatabaseWrapper):
    def close_if_health_check_failed(self):
        if self.connection is None or not self.health_check_enabled or self.health_check_done:
            return
        if not self.in_atomic_block and self._server_spoke_or_left():
            self.close()
        self.health_check_done = True

    def _server_spoke_or_left(self) -> bool:
        if self.connection.closed:
            return True
        poller = select.poll()
        poller.register(self.connection.fileno(), select.POLLIN | select.POLLPRI)
        return bool(poller.poll(0))  # POLLERR, POLLHUP and POLLNVAL are always reported
