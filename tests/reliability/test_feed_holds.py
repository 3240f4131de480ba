"""The live feed on Redis holds: sockets on two uvicorn servers stay open for over a minute, idle for
longer than Redis' blocking pop between bursts of events, and every socket receives every event
meant for it (django/channels_redis#422: with redis-py 8's read timeout they dropped every 5 s)."""

import asyncio
import json
import time

import httpx
import pytest
from knox.models import AuthToken

from tasks.creation import create_tasks
from tests.servers import asgi_servers, redis_unavailable
from tests.tasks.conftest import add_ct_studies

pytestmark = [
    pytest.mark.redis,
    pytest.mark.skipif(bool(redis_unavailable()), reason=redis_unavailable() or "Redis is up"),
    pytest.mark.django_db(transaction=True),  # the servers read what the test committed
]

ROUNDS = 10
QUIET_SECONDS = 6.5  # longer than channels_redis' 5 s BZPOPMIN: each server's receive idles out between rounds


def test_sockets_on_redis_hold_for_over_a_minute_and_receive_every_event(cast, tmp_path):
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed

    add_ct_studies(cast.project, 2)
    create_tasks(cast.project, by=cast.manager)
    tokens = {u.username: AuthToken.objects.create(u)[1] for u in (cast.manager, cast.annotator)}

    async def listen(ws, received: list, closed: list):
        try:
            async for raw in ws:
                received.append(json.loads(raw))
        except ConnectionClosed:
            pass
        closed.append(ws.close_code)

    async def scenario(ports):
        sockets = {}
        for port in ports:
            for name in ("manager", "annotator"):
                ws = await connect(f"ws://127.0.0.1:{port}/ws/projects/{cast.project.pk}/",
                                   subprotocols=["radqueue", f"token.{tokens[name]}"], origin=f"http://127.0.0.1:{port}")
                sockets[(name, port)] = (ws, [], [])
        listeners = [asyncio.create_task(listen(*socket)) for socket in sockets.values()]
        reads, started = [], time.monotonic()
        headers = {"Authorization": f"Token {tokens['annotator']}"}
        async with httpx.AsyncClient(timeout=30) as http:
            for n in range(ROUNDS):
                await asyncio.sleep(QUIET_SECONDS)
                base = f"http://127.0.0.1:{ports[n % 2]}"  # actions on either server
                claimed = await http.post(f"{base}/api/queue/next/", json={}, headers=headers)
                assert claimed.status_code == 200, claimed.text
                reads.append(claimed.json()["read"])
                released = await http.post(f"{base}/api/reads/{reads[-1]}/release/", headers=headers)
                assert released.status_code == 200, released.text
        await asyncio.sleep(2)  # the last round's events arrive
        held = time.monotonic() - started
        for ws, _, _ in sockets.values():
            await ws.close()
        await asyncio.gather(*listeners)
        return sockets, reads, held

    with asgi_servers(2, tmp_path) as ports:
        sockets, reads, held = asyncio.run(scenario(ports))

    assert held > 60
    # nobody was dropped: every socket ended when the test closed it (1000), not the server (1011)
    assert {key: closed for key, (_, _, closed) in sockets.items()} == {key: [1000] for key in sockets}
    expected_own = [(event, read) for read in reads for event in ("read.claimed", "read.released")]
    deltas = []
    for (name, _), (_, received, _) in sockets.items():
        events = [m for m in received if m["event"] != "feed.ready"]
        if name == "annotator":
            assert [(m["event"], m["data"]["read"]) for m in events] == expected_own
        else:
            deltas.append([m["data"] for m in events if m["event"] == "progress.delta"])
    # a claim and a release each move one task between states: both managers saw every move
    assert deltas[0] == deltas[1] and len(deltas[0]) == 2 * ROUNDS, deltas
