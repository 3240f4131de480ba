"""The live feed socket: authenticate, join the caller's groups, forward their events (tasks.feed)."""

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer

from core.websocket_auth import SUBPROTOCOL
from tasks.feed import FeedSubscription, feed_subscription


class ProjectFeedConsumer(AsyncJsonWebsocketConsumer):
    """``ws/projects/<id>/``: progress deltas and project events, or a reader's own queue events."""

    subscription: FeedSubscription | None = None

    async def connect(self):
        project_id = self.scope["url_route"]["kwargs"]["project_id"]
        subscription = await database_sync_to_async(feed_subscription)(self.scope.get("user"), project_id)
        # Accept first: a close before the handshake cannot carry the 44xx code to the client.
        await self.accept(SUBPROTOCOL if SUBPROTOCOL in (self.scope.get("subprotocols") or []) else None)
        if subscription.close_code is not None:
            await self.close(code=subscription.close_code)
            return
        for group in subscription.groups:
            await self.channel_layer.group_add(group, self.channel_name)
        self.subscription = subscription
        await self.send_json({"event": "feed.ready", "project": subscription.project_id,
                              "data": {"project_events": any(g.startswith("project.") for g in subscription.groups),
                                       "own_queue_events": any(g.startswith("reader.") for g in subscription.groups)}})

    async def disconnect(self, code):
        if self.subscription is not None:
            for group in self.subscription.groups:
                await self.channel_layer.group_discard(group, self.channel_name)

    async def receive_json(self, content, **kwargs):
        """The feed is one-way: anything the client sends is ignored."""

    async def feed_event(self, message):
        if self.subscription is not None and self.subscription.receives(message):
            await self.send_json({key: message.get(key) for key in ("event", "project", "data", "at")})
