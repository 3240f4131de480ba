"""The live feed end to end through Redis: two uvicorn server processes of core.asgi share one
Redis channel layer; a socket held on server A receives the events of HTTP actions made on server B."""

import asyncio

import httpx
import pytest
from knox.models import AuthToken

from tasks.creation import create_tasks
from tests.servers import asgi_servers, next_event, quiet, redis_unavailable
from tests.tasks.conftest import add_ct_studies

pytestmark = [
    pytest.mark.redis,
    pytest.mark.skipif(bool(redis_unavailable()), reason=redis_unavailable() or "Redis is up"),
    pytest.mark.django_db(transaction=True),  # the servers read what the test committed
]


def test_an_action_on_one_server_reaches_a_socket_on_another_through_redis(cast, tmp_path):
    from websockets.asyncio.client import connect

    add_ct_studies(cast.project, 1)
    task = create_tasks(cast.project, by=cast.manager)[0]
    tokens = {u.username: AuthToken.objects.create(u)[1] for u in (cast.manager, cast.annotator,
                                                                    cast.second_annotator)}

    async def scenario(a: int, b: int):
        def socket_for(name, port=a):
            return connect(f"ws://127.0.0.1:{port}/ws/projects/{cast.project.pk}/",
                           subprotocols=["radqueue", f"token.{tokens[name]}"], origin=f"http://127.0.0.1:{port}")

        async with socket_for("manager") as manager, socket_for("annotator") as reader, \
                socket_for("second_annotator") as other, httpx.AsyncClient(base_url=f"http://127.0.0.1:{b}") as http:
            for ws in (manager, reader, other):
                assert (await next_event(ws, "feed.ready"))["project"] == cast.project.pk
            reads = []
            for name in ("annotator", "second_annotator"):
                headers = {"Authorization": f"Token {tokens[name]}"}
                claimed = await http.post("/api/queue/next/", json={}, headers=headers)
                assert claimed.status_code == 200, claimed.text
                reads.append(claimed.json()["read"])
                if name == "annotator":
                    seen = await next_event(reader, "read.claimed")
                    assert seen["data"]["read"] == reads[0] and seen["data"]["task"] == task.pk
                submitted = await http.post(f"/api/reads/{reads[-1]}/submit/", headers=headers, json={
                    "findings": [{"label": "finding_laterality", "value": "left"}]})
                assert submitted.status_code == 200, submitted.text
            consensus = await next_event(manager, "task.consensus")
            others = await quiet(other)
        return reads, consensus, others

    with asgi_servers(2, tmp_path) as (a, b):
        reads, consensus, others = asyncio.run(scenario(a, b))
    assert consensus["data"] == {"task": task.pk, "method": "agreed"} and consensus["project"] == cast.project.pk
    # the second reader's socket carried their own claim and submit, never the first reader's
    assert {(e["event"], e["data"]["read"]) for e in others if e["event"].startswith("read.")} == {
        ("read.claimed", reads[1]), ("read.submitted", reads[1])}
