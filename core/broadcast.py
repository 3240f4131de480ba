"""The one way a service announces something on the live feed: after its transaction commits.

Services call ``broadcast_on_commit(project_id, event_type, payload)`` for project-wide events
(every member allowed to watch the project receives them) or ``broadcast_to_reader_on_commit``
for one reader's own queue events. Nothing is sent for a rolled-back write, and a feed outage never
fails the write that caused the event: a send that raises is logged and dropped.

Groups: ``project.<id>`` and ``reader.<user id>``; ``user.<user id>`` carries only
``feed.recheck`` (recheck_feed_on_commit). Event messages have the channels type
``feed.event`` and carry ``{"event": <type>, "project": <id>, "data": {...}, "at": <ISO time>}``.
PHI never goes on the feed: payloads carry ids, counts and de-identified UIDs only.

Sending: the in-memory layer (one process) is called directly. A cross-process layer (Redis) is
fed by one daemon thread per process running its own event loop: ``async_to_sync`` from a request
thread would start a fresh event loop per call, and channels_redis keeps its connections per loop,
so every event paid a new Redis connection (3.5 ms of CPU per send, measured here; 0.3 ms through
the thread, its own work included). Order is kept per process; events still queued when a process exits are lost, as any
best-effort feed message may be.

What the feed promises: at most once. An event reaches the sockets open when it is sent, in commit
order per process, or not at all: while the channel layer (Redis) is unreachable, events are
dropped (the outage is logged once when it starts and once when it ends, with how many were
dropped; core.outages), and a socket whose layer failed closes with 1013 (tasks.consumers).
Nothing is replayed: a client that reconnects reads the current state from the progress endpoint
(``GET /api/projects/<id>/progress/``) or its worklist and then follows the feed again. A
request whose events are dropped still succeeds: its write has committed.
"""

import asyncio
import logging
import os
import threading
import time

from asgiref.sync import async_to_sync
from channels.layers import InMemoryChannelLayer, get_channel_layer
from django.db import transaction
from django.utils import timezone

from core import outages

log = logging.getLogger(__name__)


# Events queued in a process beyond this are dropped: a Redis that hangs instead of refusing
# must not grow the web process's memory without bound.
QUEUE_LIMIT = 10_000
# While the layer is down, one event a second tries it; the others are dropped without waiting for
# a connection that is likely to fail (a hung Redis makes each try wait its connect timeout).
RETRY_SECONDS = 1.0


class _SenderThread:
    """A per-process event loop in a daemon thread that owns the channel layer's connections and
    sends queued events one at a time, in the order they were committed."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._queue: asyncio.Queue | None = None
        self._pid = None

    def submit(self, layer, group: str, message: dict) -> None:
        loop, queue = self._running()
        loop.call_soon_threadsafe(self._put, queue, (layer, group, message))

    @staticmethod
    def _put(queue: asyncio.Queue, item: tuple) -> None:
        try:
            queue.put_nowait(item)
        except asyncio.QueueFull:
            outages.channel_layer.failed(None)

    def _running(self) -> tuple[asyncio.AbstractEventLoop, asyncio.Queue]:
        with self._lock:
            if self._loop is None or self._pid != os.getpid():  # first use, or a forked child
                loop, ready = asyncio.new_event_loop(), threading.Event()
                threading.Thread(target=self._run, args=(loop, ready), name="radqueue-feed-sender",
                                 daemon=True).start()
                ready.wait()
                self._loop, self._pid = loop, os.getpid()
            return self._loop, self._queue

    def _run(self, loop: asyncio.AbstractEventLoop, ready: threading.Event) -> None:
        asyncio.set_event_loop(loop)
        self._queue = asyncio.Queue(maxsize=QUEUE_LIMIT)
        ready.set()
        loop.run_until_complete(self._drain(self._queue))

    @staticmethod
    async def _drain(queue: asyncio.Queue) -> None:
        retry_at = 0.0
        while True:
            layer, group, message = await queue.get()
            if outages.channel_layer.down and time.monotonic() < retry_at:
                outages.channel_layer.failed(None)
                continue
            try:
                await layer.group_send(group, message)
            except outages.REDIS_UNREACHABLE as exc:  # logged once per outage, not per event
                outages.channel_layer.failed(exc)
                retry_at = time.monotonic() + RETRY_SECONDS
            except Exception:  # the feed is best effort; the write it reports has committed
                log.exception("live feed: could not send %s to %s", message.get("event"), group)
            else:
                outages.channel_layer.succeeded()


_sender = _SenderThread()


def project_group(project_id: int) -> str:
    return f"project.{project_id}"


def reader_group(user_id: int) -> str:
    return f"reader.{user_id}"


def user_group(user_id: int) -> str:
    """Every live-feed socket of one person, whatever their role: control messages, never events."""
    return f"user.{user_id}"


def _send(group: str, message: dict) -> None:
    layer = get_channel_layer()
    if layer is None:
        return
    try:
        if isinstance(layer, InMemoryChannelLayer):
            # It delivers only within this process: a group nobody here joined (every group, in
            # a WSGI worker) gets nothing, so skip the event loop async_to_sync would start.
            if layer.groups.get(group):
                async_to_sync(layer.group_send)(group, message)
        else:
            _sender.submit(layer, group, message)
    except Exception:  # the feed is best effort; the write it reports has committed
        log.exception("live feed: could not send %s to %s", message.get("event"), group)


def _message(project_id: int, event_type: str, payload: dict) -> dict:
    return {"type": "feed.event", "event": event_type, "project": project_id, "data": payload,
            "at": timezone.now().isoformat()}


def broadcast_on_commit(project_id: int, event_type: str, payload: dict) -> None:
    """Send ``event_type`` to everybody watching the project, once the current transaction commits."""
    message = _message(project_id, event_type, payload)
    transaction.on_commit(lambda: _send(project_group(project_id), message))


def broadcast_to_reader_on_commit(user_id: int, project_id: int, event_type: str, payload: dict) -> None:
    """Send a reader's own queue event to that reader only, once the current transaction commits."""
    message = _message(project_id, event_type, payload)
    transaction.on_commit(lambda: _send(reader_group(user_id), message))


def recheck_feed_on_commit(user_id: int) -> None:
    """Have every live-feed socket of the person check its authorisation again (a role or a token
    ended) once the current transaction commits; a socket no longer authorised closes."""
    transaction.on_commit(lambda: _send(user_group(user_id), {"type": "feed.recheck"}))
