"""Liveness and readiness probes."""

import asyncio
import logging

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.db import connection
from django.http import JsonResponse

logger = logging.getLogger(__name__)


def healthz(request):
    """The process is up."""
    return JsonResponse({"status": "ok"})


# The probe is unauthenticated: an exception's text (host names, user names, paths) goes to the
# log, and the answer only says which check failed.
def _database_ok() -> bool:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchone()
        return True
    except Exception:  # noqa: BLE001 - any failure means not ready
        logger.exception("readyz: the database is not reachable")
        return False


async def _channel_layer_roundtrip() -> None:
    layer = get_channel_layer()
    name = await layer.new_channel("readyz.")
    await layer.send(name, {"type": "readyz.ping"})
    await asyncio.wait_for(layer.receive(name), timeout=2)


def _channel_layer_ok() -> bool:
    try:
        async_to_sync(_channel_layer_roundtrip)()
        return True
    except Exception:  # noqa: BLE001
        logger.exception("readyz: the channel layer is not reachable")
        return False


def readyz(request):
    """The database and the channel layer answer; 503 naming what does not."""
    checks = {"database": _database_ok(), "channel_layer": _channel_layer_ok()}
    ok = all(checks.values())
    return JsonResponse(
        {"status": "ok" if ok else "unavailable",
         "checks": {name: "ok" if passed else "unavailable" for name, passed in checks.items()}},
        status=200 if ok else 503,
    )
