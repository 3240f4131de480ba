"""The live feed socket: authenticate, join the caller's groups, forward their events (tasks.feed),
and keep checking that the caller may still watch (tasks.feed: RECHECK_SECONDS, feed.recheck).

A socket whose channel layer (Redis) or database becomes unreachable closes with 1013 (try again
later) and no traceback: the outage is logged once per process (core.outages). The client
reconnects after a pause and resyncs from the progress endpoint, as after any reconnect: the feed
is at most once (core.broadcast)."""

import asyncio
import contextlib
import time

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer

from core import outages
from core.broadcast import user_group
from core.websocket_auth import CLOSE_TRY_AGAIN_LATER, SUBPROTOCOL, current_user
from tasks import feed
from tasks.feed import CLOSE_UNAUTHENTICATED, FeedSubscription, feed_subscription


class ProjectFeedConsumer(AsyncJsonWebsocketConsumer):
    """``ws/projects/<id>/``: progress deltas and project events, or a reader's own queue events."""

    subscription: FeedSubscription | None = None
    user_id: int | None = None
    checked_at = 0.0
    _watch: asyncio.Task | None = None
    _checking: asyncio.Lock | None = None

    async def __call__(self, scope, receive, send):
        try:
            await super().__call__(scope, receive, send)
        except Exception as exc:
            if not outages.note_feed_outage(exc):
                raise
            with contextlib.suppress(OSError, RuntimeError):  # unless the socket has closed already
                await send({"type": "websocket.close", "code": CLOSE_TRY_AGAIN_LATER})
        finally:  # however the socket ends (a disconnect, the server cancelling it), the watch stops
            if self._watch is not None:
                self._watch.cancel()

    async def connect(self):
        project_id = self.scope["url_route"]["kwargs"]["project_id"]
        user = self.scope.get("user")
        subscription = await database_sync_to_async(feed_subscription)(user, project_id)
        # Accept first: a close before the handshake cannot carry the 44xx code to the client.
        await self.accept(SUBPROTOCOL if SUBPROTOCOL in (self.scope.get("subprotocols") or []) else None)
        if subscription.close_code is not None:
            await self.close(code=subscription.close_code)
            return
        self.user_id, self.checked_at, self._checking = user.pk, time.monotonic(), asyncio.Lock()
        for group in (*subscription.groups, user_group(user.pk)):
            await self.channel_layer.group_add(group, self.channel_name)
        outages.channel_layer.succeeded()
        self.subscription = subscription
        self._watch = asyncio.create_task(self._recheck_periodically())
        await self.send_json({"event": "feed.ready", "project": subscription.project_id,
                              "data": {"project_events": any(g.startswith("project.") for g in subscription.groups),
                                       "own_queue_events": any(g.startswith("reader.") for g in subscription.groups)}})

    async def disconnect(self, code):
        if self._watch is not None:
            self._watch.cancel()
        await self._leave_groups()

    async def receive_json(self, content, **kwargs):
        """The feed is one-way: anything the client sends is ignored."""

    async def feed_event(self, message):
        if self.subscription is not None and time.monotonic() - self.checked_at >= feed.RECHECK_SECONDS:
            await self._recheck()
        if self.subscription is not None and self.subscription.receives(message):
            await self.send_json({key: message.get(key) for key in ("event", "project", "data", "at")})

    async def feed_recheck(self, message):
        """A membership of this socket's user ended: check now instead of at the next period."""
        await self._recheck()

    async def _recheck_periodically(self):
        try:
            while self.subscription is not None:
                await asyncio.sleep(max(0.0, self.checked_at + feed.RECHECK_SECONDS - time.monotonic()))
                if time.monotonic() - self.checked_at >= feed.RECHECK_SECONDS:
                    await self._recheck()
        except Exception as exc:
            if not outages.note_feed_outage(exc):
                raise
            # The socket's groups cannot be left without the layer; Redis drops them with its data
            # or after channels_redis' group expiry.
            self.subscription = None
            await self.close(code=CLOSE_TRY_AGAIN_LATER)

    async def _recheck(self):
        """Look the credentials and the subscription up again; close, or follow changed groups."""
        async with self._checking:
            current = self.subscription
            if current is None:
                return
            user = await current_user(self.scope)
            if not user.is_authenticated or user.pk != self.user_id:
                await self._end(CLOSE_UNAUTHENTICATED)
                return
            renewed = await database_sync_to_async(feed_subscription)(user, current.project_id)
            self.checked_at = time.monotonic()
            if renewed.close_code is not None:
                await self._end(renewed.close_code)
                return
            for group in set(current.groups) - set(renewed.groups):
                await self.channel_layer.group_discard(group, self.channel_name)
            for group in set(renewed.groups) - set(current.groups):
                await self.channel_layer.group_add(group, self.channel_name)
            self.subscription = renewed

    async def _end(self, code: int):
        await self._leave_groups()  # nothing more is forwarded, even what is already queued
        await self.close(code=code)

    async def _leave_groups(self):
        subscription, self.subscription = self.subscription, None
        if subscription is None:
            return
        for group in (*subscription.groups, user_group(self.user_id)):
            await self.channel_layer.group_discard(group, self.channel_name)
