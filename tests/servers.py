"""Real server processes for the end-to-end tests: uvicorn running core.asgi, or gunicorn running
core.wsgi as deploy/ does, on loopback ports, against the test database (which the test must
commit to: transactional tests)."""

import os
import secrets
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import httpx
from django.conf import settings
from django.db import connection

ROOT = Path(__file__).resolve().parents[1]


def shared_database_url() -> str:
    db = connection.settings_dict
    auth = db["USER"] + (f":{db['PASSWORD']}" if db["PASSWORD"] else "")
    if not db["HOST"] or db["HOST"].startswith("/"):
        # A Unix socket (the embedded server's): its folder travels in PGHOST, which the server
        # inherits (django-environ does not decode a %2F host).
        return f"postgres://{auth}@/{db['NAME']}"
    return f"postgres://{auth}@{db['HOST']}:{db['PORT'] or 5432}/{db['NAME']}"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_until_serving(port: int, process: subprocess.Popen, log_path: Path, deadline: float) -> None:
    while True:
        assert process.poll() is None, log_path.read_text()
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, f"server on {port} did not start:\n{log_path.read_text()}"
        time.sleep(0.2)


def _stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()


@contextmanager
def asgi_servers(count: int, log_dir: Path, env: dict | None = None):
    """``count`` uvicorn processes of core.asgi:application; yields their ports. With REDIS_URL set
    they share the Redis channel layer; without it each has its own in-memory layer. ``env``
    overrides their environment (another DATABASE_URL or REDIS_URL)."""
    # core.settings_test: the same settings the test process uses (its password hasher, too)
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "core.settings_test", "DATABASE_URL": shared_database_url(),
           "RADQUEUE_TEST_DATA_DIR": str(settings.DATA_DIR),
           "DEBUG": "1", "ALLOWED_HOSTS": "127.0.0.1,localhost", **(env or {})}
    ports, processes = [_free_port() for _ in range(count)], []
    try:
        for port in ports:
            log = open(log_dir / f"uvicorn-{port}.log", "wb")  # noqa: SIM115 - closed with the process
            processes.append((subprocess.Popen(
                [sys.executable, "-m", "uvicorn", "core.asgi:application", "--host", "127.0.0.1", "--port", str(port),
                 "--lifespan", "off", "--log-level", "warning"], cwd=ROOT, env=env, stdout=log, stderr=log), log))
        deadline = time.monotonic() + 60
        for port, (process, _) in zip(ports, processes, strict=True):
            _wait_until_serving(port, process, log_dir / f"uvicorn-{port}.log", deadline)
        yield ports
    finally:
        for process, log in processes:
            _stop(process)
            log.close()


@contextmanager
def gunicorn_api_server(log_dir: Path, workers: int = 2, env: dict | None = None):
    """The API as deploy/systemd/radqueue-api.service serves it (core.wsgi, --preload, sync
    workers, persistent database connections); yields its port. ``env`` overrides its environment."""
    env = {**dict(os.environ, DJANGO_SETTINGS_MODULE="core.settings_test", DATABASE_URL=shared_database_url(),
                  RADQUEUE_TEST_DATA_DIR=str(settings.DATA_DIR),
                  DEBUG="0", SECRET_KEY=secrets.token_urlsafe(64), ALLOWED_HOSTS="127.0.0.1",
                  RADQUEUE_TEST_SERVER_CONN_MAX_AGE="600",
                  SECURE_SSL_REDIRECT="0", RADQUEUE_STORAGE_KEY=settings.RADQUEUE_STORAGE_KEYS), **(env or {})}
    port = _free_port()
    log_path = log_dir / f"gunicorn-{port}.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "core.wsgi:application", "--preload", "--worker-class", "sync",
             "--workers", str(workers), "--bind", f"127.0.0.1:{port}", "--log-level", "warning"],
            cwd=ROOT, env=env, stdout=log, stderr=log)
        try:
            _wait_until_serving(port, process, log_path, time.monotonic() + 60)
            yield port
        finally:
            _stop(process)


def redis_unavailable() -> str:
    """Why a test that needs the Redis at REDIS_URL cannot run here ("" when it can)."""
    url = os.environ.get("REDIS_URL", "")
    if not url:
        return "needs Redis: set REDIS_URL (CI does)"
    import redis

    try:
        redis.Redis.from_url(url, socket_connect_timeout=2).ping()
    except redis.RedisError as exc:
        return f"needs Redis at REDIS_URL: {exc}"
    return ""


async def next_event(ws, name: str, timeout=10.0) -> dict:
    """The next feed message called ``name`` on a websocket, skipping others."""
    import asyncio
    import json

    deadline = time.monotonic() + timeout
    while True:
        message = json.loads(await asyncio.wait_for(ws.recv(), timeout=max(0.1, deadline - time.monotonic())))
        if message["event"] == name:
            return message


async def quiet(ws, seconds=1.0) -> list[dict]:
    """Every message a websocket receives until it has been silent for ``seconds``."""
    import asyncio
    import json

    received = []
    try:
        while True:
            received.append(json.loads(await asyncio.wait_for(ws.recv(), timeout=seconds)))
    except TimeoutError:
        return received
