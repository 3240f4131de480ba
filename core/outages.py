"""Backing services that are down: which errors mean it, what the client gets, and one log line each way.

PostgreSQL holds everything, so while it is unreachable every request that needs it is answered
503 ``database_unavailable`` with ``Retry-After`` (core.middleware.OutageMiddleware), and the next
request after it returns opens a fresh connection: a persistent connection the server closed is
dropped by the health check (``CONN_HEALTH_CHECKS``, core/postgresql/base.py) or, after a failed
query, at the end of its request. Redis is the cache, the live feed's channel layer and Celery's
broker. Only the login throttles use the cache, and they fail closed: the token endpoint answers
503 ``cache_unavailable`` rather than let passwords be guessed without a count. The feed drops its
events while the layer is down (core.broadcast, tasks.consumers), and a socket closes with 1013
(core.websocket_auth's FeedOutageGuard for the handshake). A request that queues a background job
(a delivery's build, a report, a learning job) checks the broker before its transaction commits
(core.jobs.enqueue_on_commit): while it is down the request is answered 503 ``queue_unavailable``
and rolled back, so no row waits for a message that was never sent. Nothing else waits for Redis.

An outage is logged when it starts and when it ends, once per process each (``OutageLog``), not once
per request or event: an outage of minutes under load would otherwise bury the log in tracebacks.
"""

import logging
import threading
import time

from django.db import InterfaceError, OperationalError
from django.db.backends.signals import connection_created
from django.http import JsonResponse
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from core.errors import RETRYABLE_PGCODES, error_body

log = logging.getLogger(__name__)

# Seconds a client waits before retrying: a PostgreSQL restart or a Redis restart takes a few.
RETRY_AFTER_SECONDS = 5

DATABASE, CACHE, QUEUE = "database", "cache", "queue"
# The errors of a Redis that does not answer (refused, reset, timed out); a Redis that answers with
# an error (a wrong command, a full memory) is a bug or a configuration error, not an outage.
REDIS_UNREACHABLE = (RedisConnectionError, RedisTimeoutError)

_DETAIL = {
    DATABASE: "The database is unreachable or did not answer in time. Retry after Retry-After seconds.",
    CACHE: "Logins are counted in a cache that is unreachable, so none are taken now; requests with an existing "
           "token still work. Retry after Retry-After seconds.",
    QUEUE: "This request starts a background job, and the job queue is unreachable; nothing was changed. "
           "Retry after Retry-After seconds.",
}


class JobQueueUnavailable(Exception):
    """Celery's broker cannot take a job now (raised before the transaction that needs the job commits)."""


def unavailable_service(exc: BaseException) -> str | None:
    """DATABASE or CACHE when ``exc`` says that service cannot be reached now; None for anything else."""
    if isinstance(exc, InterfaceError):
        return DATABASE  # a connection the server closed under us
    if isinstance(exc, OperationalError):
        # Deadlocks and serialization failures are answered 409 by the API's handler (core.errors).
        return None if getattr(exc.__cause__, "pgcode", None) in RETRYABLE_PGCODES else DATABASE
    if isinstance(exc, REDIS_UNREACHABLE):
        return CACHE
    if isinstance(exc, JobQueueUnavailable):
        return QUEUE
    return None


def unavailable_response(service: str) -> JsonResponse:
    """503 in the API's error format, with Retry-After."""
    response = JsonResponse(error_body(f"{service}_unavailable", _DETAIL[service]), status=503)
    response["Retry-After"] = str(RETRY_AFTER_SECONDS)
    # Django's request log would add an error line per refused request; the outage has its own
    # two lines (OutageLog) and the server's access log still lists every request.
    response._has_been_logged = True
    return response


class OutageLog:
    """Logs when ``what`` becomes unreachable (with the first error's traceback) and when it is back
    (with how long it was down and how many ``lost`` things meanwhile); silent in between."""

    def __init__(self, what: str, lost: str) -> None:
        self.what, self.lost = what, lost
        self._lock = threading.Lock()
        self._since: float | None = None
        self._lost = 0

    @property
    def down(self) -> bool:
        return self._since is not None

    def failed(self, exc: BaseException | None, lost: int = 1) -> None:
        with self._lock:
            self._lost += lost
            if self._since is not None:
                return
            self._since = time.monotonic()
        # The error's text names only hosts and ports, never request data.
        log.error("%s is unreachable (%s); logging nothing more until it is back", self.what,
                  type(exc).__name__ if exc is not None else "failing", exc_info=exc)

    def succeeded(self) -> None:
        if self._since is None:  # the usual case, without taking the lock
            return
        with self._lock:
            if self._since is None:
                return
            seconds, lost = time.monotonic() - self._since, self._lost
            self._since, self._lost = None, 0
        log.warning("%s is reachable again after %.1f s; %d %s meanwhile", self.what, seconds, lost, self.lost)


# One of each per process: the web server's requests, its feed sockets and its feed sender share them.
database = OutageLog("PostgreSQL", "requests refused")
cache = OutageLog("Redis (the cache)", "logins refused")
channel_layer = OutageLog("Redis (the live feed's channel layer)", "feed events dropped")
broker = OutageLog("Redis (Celery's broker)", "jobs refused")


def note_feed_outage(exc: BaseException) -> bool:
    """Log the outage ``exc`` shows to the live feed (once per outage) and say so: Redis (its channel
    layer) or PostgreSQL unreachable; False for any other error."""
    if isinstance(exc, REDIS_UNREACHABLE):
        channel_layer.failed(exc, lost=0)
    elif unavailable_service(exc) == DATABASE:
        database.failed(exc)
    else:
        return False
    return True


def _database_answered(sender, connection, **kwargs):
    database.succeeded()


# A new connection is the first sign the database is back (every connection is new after a
# restart); a request that needed no database (/healthz) says nothing either way.
connection_created.connect(_database_answered, dispatch_uid="core.outages.database_answered")
