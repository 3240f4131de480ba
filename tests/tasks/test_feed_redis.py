"""The live feed end to end through Redis: two uvicorn server processes of core.asgi share one
Redis channel layer; a socket held on server A receives the events of HTTP actions made on server B."""

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from django.conf import settings
from django.db import connection
from knox.models import AuthToken

from tasks.creation import create_tasks
from tests.tasks.conftest import add_ct_studies

ROOT = Path(__file__).resolve().parents[2]


def _redis_unavailable() -> str:
    url = os.environ.get("REDIS_URL", "")
    if not url:
        return "needs Redis: set REDIS_URL (CI does) to run the two-process live feed test"
    import redis

    try:
        redis.Redis.from_url(url, socket_connect_timeout=2).ping()
    except redis.RedisError as exc:
        return f"needs Redis at REDIS_URL: {exc}"
    return ""


pytestmark = [
    pytest.mark.redis,
    pytest.mark.skipif(bool(_redis_unavailable()), reason=_redis_unavailable() or "Redis is up"),
    pytest.mark.django_db(transaction=True),  # the servers read what the test committed
]


def _database_url() -> str:
    db = connection.settings_dict
    if connection.vendor == "sqlite":
        return f"sqlite:///{db['NAME']}"
    auth = db["USER"] + (f":{db['PASSWORD']}" if db["PASSWORD"] else "")
    return f"postgres://{auth}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def _servers(count: int, log_dir: Path):
    env = dict(os.environ, DJANGO_SETTINGS_MODULE="core.settings", DATABASE_URL=_database_url(),
               REDIS_URL=os.environ["REDIS_URL"], DATA_DIR=str(settings.DATA_DIR), DEBUG="1",
               ALLOWED_HOSTS="127.0.0.1,localhost")
    ports, processes = [_free_port() for _ in range(count)], []
    try:
        for port in ports:
            log = open(log_dir / f"uvicorn-{port}.log", "wb")  # noqa: SIM115 - closed with the process
            processes.append((subprocess.Popen(
                [sys.executable, "-m", "uvicorn", "core.asgi:application", "--host", "127.0.0.1", "--port", str(port),
                 "--lifespan", "off", "--log-level", "warning"], cwd=ROOT, env=env, stdout=log, stderr=log), log))
        deadline = time.monotonic() + 60
        for port, (process, _) in zip(ports, processes, strict=True):
            while True:
                assert process.poll() is None, (log_dir / f"uvicorn-{port}.log").read_text()
                try:
                    if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert time.monotonic() < deadline, f"server on {port} did not start"
                time.sleep(0.2)
        yield ports
    finally:
        for process, log in processes:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
            log.close()


async def _next_event(ws, name: str, timeout=10.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        message = json.loads(await asyncio.wait_for(ws.recv(), timeout=max(0.1, deadline - time.monotonic())))
        if message["event"] == name:
            return message


async def _quiet(ws, seconds=1.0) -> list[dict]:
    received = []
    try:
        while True:
            received.append(json.loads(await asyncio.wait_for(ws.recv(), timeout=seconds)))
    except TimeoutError:
        return received


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
                assert (await _next_event(ws, "feed.ready"))["project"] == cast.project.pk
            reads = []
            for name in ("annotator", "second_annotator"):
                headers = {"Authorization": f"Token {tokens[name]}"}
                claimed = await http.post("/api/queue/next/", json={}, headers=headers)
                assert claimed.status_code == 200, claimed.text
                reads.append(claimed.json()["read"])
                if name == "annotator":
                    seen = await _next_event(reader, "read.claimed")
                    assert seen["data"]["read"] == reads[0] and seen["data"]["task"] == task.pk
                submitted = await http.post(f"/api/reads/{reads[-1]}/submit/", headers=headers, json={
                    "findings": [{"label": "finding_laterality", "value": "left"}]})
                assert submitted.status_code == 200, submitted.text
            consensus = await _next_event(manager, "task.consensus")
            others = await _quiet(other)
        return reads, consensus, others

    with _servers(2, tmp_path) as (a, b):
        reads, consensus, others = asyncio.run(scenario(a, b))
    assert consensus["data"] == {"task": task.pk, "method": "agreed"} and consensus["project"] == cast.project.pk
    # the second reader's socket carried their own claim and submit, never the first reader's
    assert {(e["event"], e["data"]["read"]) for e in others if e["event"].startswith("read.")} == {
        ("read.claimed", reads[1]), ("read.submitted", reads[1])}
