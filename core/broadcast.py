"""The one way a service announces something on the live feed: after its transaction commits.

Services call ``broadcast_on_commit(project_id, event_type, payload)`` for project-wide events
(every member allowed to watch the project receives them) or ``broadcast_to_reader_on_commit``
for one reader's own queue events. Nothing is sent for a rolled-back write, and a feed outage never
fails the write that caused the event: a send that raises is logged and dropped.

Groups: ``project.<id>`` and ``reader.<user id>``. Messages have the channels type
``feed.event`` and carry ``{"event": <type>, "project": <id>, "data": {...}, "at": <ISO time>}``.
PHI never goes on the feed: payloads carry ids, counts and de-identified UIDs only.
"""

import logging

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.db import transaction
from django.utils import timezone

log = logging.getLogger(__name__)


def project_group(project_id: int) -> str:
    return f"project.{project_id}"


def reader_group(user_id: int) -> str:
    return f"reader.{user_id}"


def _send(group: str, message: dict) -> None:
    layer = get_channel_layer()
    if layer is None:
        return
    try:
        async_to_sync(layer.group_send)(group, message)
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
