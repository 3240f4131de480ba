"""Liveness and readiness probes."""

import asyncio

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.db import connection
from django.http import JsonResponse


def healthz(request):
    """The process is up."""
    return JsonResponse({"status": "ok"})


def _database_ok() -> tuple[bool, str]:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchone()
        return True, "ok"
    except Exception as exc:  # noqa: BLE001 - any failure means not ready
        return False, f"{type(exc).__name__}: {exc}"


async def _channel_layer_roundtrip() -> None:
    layer = get_channel_layer()
    name = await layer.new_channel("readyz.")
    await layer.send(name, {"type": "readyz.ping"})
    await asyncio.wait_for(layer.receive(name), timeout=2)


def _channel_layer_ok() -> tuple[bool, str]:
    try:
        async_to_sync(_channel_layer_roundtrip)()
        return True, "ok"
    except Exception as exc:  # noqa: BLE001
        return False, f"{type(exc).__name__}: {exc}"


def readyz(request):
    """The database and the channel layer answer; 503 naming what does not."""
    db_ok, db_detail = _database_ok()
    layer_ok, layer_detail = _channel_layer_ok()
    ok = db_ok and layer_ok
    return JsonResponse(
        {"status": "ok" if ok else "unavailable", "checks": {"database": db_detail, "channel_layer": layer_detail}},
        status=200 if ok else 503,
    )
