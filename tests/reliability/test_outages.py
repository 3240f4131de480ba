"""Outages of PostgreSQL and Redis against real servers (uvicorn, and gunicorn as deploy/ runs it),
each on a PostgreSQL and a Redis of the test's own that the test stops and starts again.

PostgreSQL down: every path (the API, the token check, the login, DICOMweb) answers 503 in the API's
JSON error format with Retry-After, and the same server answers again as soon as PostgreSQL is
back, persistent connections included; a feed socket opened meanwhile closes with 1013 (try again
later). Redis down: the API keeps working and publishing events, logins answer 503 (their counters
live in the cache), the feed's sockets close with 1013 and its events are dropped with one log line
for the outage and one for its end. Requests that queue a background job (a delivery's build, a
report, a learning job) answer 503 while Celery's broker (Redis) is down and change nothing."""

import asyncio
import time

import httpx
import psycopg2
import pytest

from tasks.management.commands.seed_demo import DEMO_PASSWORD
from tests.reliability.services import PrivatePostgres, PrivateRedis, postgres_bin, prepare_database
from tests.servers import asgi_servers, gunicorn_api_server, next_event

pytestmark = pytest.mark.skipif(postgres_bin() is None, reason="needs PostgreSQL's programs (initdb, pg_ctl): "
                                                               "install Debian's `postgresql` package (.ci/run does)")

OUTAGE_LINE = "is unreachable"
BACK_LINE = "is reachable again"


@pytest.fixture(scope="module")
def postgres():
    pg = PrivatePostgres()
    try:
        prepare_database(pg.url)
        pg.create_database("seeded", template="radqueue")  # as seeded, for tests that need it untouched
        yield pg
    finally:
        pg.close()


@pytest.fixture
def seeded_database(postgres, request) -> str:
    """A database of the test's own on the module's PostgreSQL, as seed_demo left it."""
    return postgres.create_database(f"t{abs(hash(request.node.nodeid))}", template="seeded")


@pytest.fixture
def redis(tmp_path):
    server = PrivateRedis(tmp_path / "redis")
    yield server
    server.close()


def _connection(url: str):
    return psycopg2.connect(url.replace("postgres://", "postgresql://"))


def _token(http: httpx.Client, username: str) -> str:
    response = http.post("/api/auth/token/", json={"username": username, "password": DEMO_PASSWORD})
    assert response.status_code == 200, response.text
    return response.json()["token"]


def _paths(http: httpx.Client, token: str) -> dict[str, httpx.Response]:
    """One request on each kind of path: token-authenticated API, DICOMweb, and the login."""
    auth = {"Authorization": f"Token {token}"}
    return {
        "me": http.get("/api/me/", headers=auth),
        "projects": http.get("/api/projects/", headers=auth),
        "dicomweb": http.get("/dicomweb/studies", headers=auth),
        "login": http.post("/api/auth/token/", json={"username": "manager", "password": DEMO_PASSWORD}),
    }


def _assert_unavailable(response: httpx.Response, code: str) -> None:
    assert response.status_code == 503, response.text
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {"code": code, "detail": response.json()["detail"], "errors": {}}
    assert int(response.headers["Retry-After"]) > 0


def _log(folder) -> str:
    return "\n".join(path.read_text() for path in sorted(folder.glob("*.log")))


@pytest.mark.parametrize("server", ["uvicorn", "gunicorn"])
def test_postgres_down_is_503_with_retry_after_on_every_path_and_the_server_recovers_alone(
        postgres, server, tmp_path):
    env = {"DATABASE_URL": postgres.url, "REDIS_URL": ""}
    # gunicorn as deploy/ runs it: two workers holding persistent connections (CONN_MAX_AGE 600)
    started = asgi_servers(1, tmp_path, env=env) if server == "uvicorn" else gunicorn_api_server(tmp_path, env=env)
    with started as ports:
        port = ports[0] if server == "uvicorn" else ports
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as http:
            token = _token(http, "manager")
            for _ in range(4):  # every worker opens (and keeps) its connection
                assert {name: r.status_code for name, r in _paths(http, token).items()} == dict.fromkeys(
                    ("me", "projects", "dicomweb", "login"), 200)

            postgres.stop()
            try:
                for _ in range(3):
                    for response in _paths(http, token).values():
                        _assert_unavailable(response, "database_unavailable")
                assert http.get("/healthz").status_code == 200  # the process itself is fine
            finally:
                postgres.start()

            # back at once: no request after PostgreSQL returns fails, on any worker
            for _ in range(4):
                assert {name: r.status_code for name, r in _paths(http, token).items()} == dict.fromkeys(
                    ("me", "projects", "dicomweb", "login"), 200)

            # a restart while nobody asked: every worker's persistent connection is dead unnoticed
            postgres.stop()
            postgres.start()
            for _ in range(4):
                assert {name: r.status_code for name, r in _paths(http, token).items()} == dict.fromkeys(
                    ("me", "projects", "dicomweb", "login"), 200)

    log = _log(tmp_path)
    workers = 1 if server == "uvicorn" else 2
    # once per process and outage, not once per refused request (twelve of them)
    assert 1 <= log.count(f"PostgreSQL {OUTAGE_LINE}") <= workers, log
    assert 1 <= log.count(f"PostgreSQL {BACK_LINE}") <= workers, log
    # the first error's traceback (psycopg2's, and Django's that wraps it), and no other
    assert log.count("Traceback") == 2 * log.count(f"PostgreSQL {OUTAGE_LINE}"), log


async def _closed_code(ws, timeout: float) -> int:
    from websockets.exceptions import ConnectionClosed

    try:
        while True:
            await asyncio.wait_for(ws.recv(), timeout=timeout)
    except ConnectionClosed:
        return ws.close_code


def test_redis_down_keeps_the_api_serving_and_the_feed_logs_the_outage_once(postgres, redis, tmp_path):
    from websockets.asyncio.client import connect

    env = {"DATABASE_URL": postgres.url, "REDIS_URL": redis.url}

    async def scenario(port: int):
        base = f"http://127.0.0.1:{port}"
        async with httpx.AsyncClient(base_url=base, timeout=30) as http:
            tokens = {}
            for name in ("manager", "annotator"):
                response = await http.post("/api/auth/token/", json={"username": name, "password": DEMO_PASSWORD})
                assert response.status_code == 200, response.text
                tokens[name] = response.json()["token"]
            project = (await http.get("/api/projects/", headers={"Authorization": f"Token {tokens['manager']}"})
                       ).json()["results"][0]["id"]
            reader = {"Authorization": f"Token {tokens['annotator']}"}

            def socket_for(name):
                return connect(f"ws://127.0.0.1:{port}/ws/projects/{project}/", origin=base,
                               subprotocols=["radqueue", f"token.{tokens[name]}"])

            async def claim_and_release() -> int:
                claimed = await http.post("/api/queue/next/", json={}, headers=reader)
                assert claimed.status_code == 200, claimed.text
                read = claimed.json()["read"]
                released = await http.post(f"/api/reads/{read}/release/", headers=reader)
                assert released.status_code == 200, released.text
                return read

            async with socket_for("manager") as watching:
                await next_event(watching, "feed.ready")
                redis.stop()
                try:
                    # the socket whose layer went away closes, asking the client to come back later
                    assert await _closed_code(watching, timeout=20) == 1013
                    # requests that publish events succeed, their events are dropped
                    for _ in range(15):
                        await claim_and_release()
                    assert (await http.get("/api/me/", headers=reader)).status_code == 200
                    # the login counters live in the cache: closed, with Retry-After
                    _assert_unavailable(await http.post("/api/auth/token/", json={
                        "username": "manager", "password": DEMO_PASSWORD}), "cache_unavailable")
                    # a socket opened meanwhile is closed the same way
                    async with socket_for("manager") as late:
                        assert await _closed_code(late, timeout=20) == 1013
                finally:
                    redis.start()

            # back: logins, and the feed carries events again
            deadline = time.monotonic() + 20
            while (await http.post("/api/auth/token/", json={"username": "manager", "password": DEMO_PASSWORD})
                   ).status_code != 200:
                assert time.monotonic() < deadline, "logins did not come back with Redis"
                await asyncio.sleep(0.5)
            async with socket_for("annotator") as own:
                await next_event(own, "feed.ready")
                read = await claim_and_release()
                assert (await next_event(own, "read.claimed"))["data"]["read"] == read

    with asgi_servers(1, tmp_path, env=env) as (port,):
        asyncio.run(scenario(port))

    log = _log(tmp_path)
    assert log.count(f"Redis (the live feed's channel layer) {OUTAGE_LINE}") == 1, log
    assert log.count(f"Redis (the live feed's channel layer) {BACK_LINE}") == 1, log
    assert log.count(f"Redis (the cache) {OUTAGE_LINE}") == 1, log
    # the first error's traceback per outage logged (the layer's, the cache's; with what each wraps),
    # not one per dropped event (thirty)
    assert log.count("Traceback") <= 4, log


def test_postgres_down_closes_a_new_feed_socket_with_1013_and_the_feed_opens_again_after(postgres, tmp_path):
    from websockets.asyncio.client import connect

    env = {"DATABASE_URL": postgres.url, "REDIS_URL": ""}

    async def scenario(port: int):
        base = f"http://127.0.0.1:{port}"
        async with httpx.AsyncClient(base_url=base, timeout=30) as http:
            token = (await http.post("/api/auth/token/", json={"username": "manager", "password": DEMO_PASSWORD})
                     ).json()["token"]
            project = (await http.get("/api/projects/", headers={"Authorization": f"Token {token}"})
                       ).json()["results"][0]["id"]

        def socket():
            return connect(f"ws://127.0.0.1:{port}/ws/projects/{project}/", origin=base,
                           subprotocols=["radqueue", f"token.{token}"])

        postgres.stop()
        try:
            for _ in range(3):  # the token is looked up before the feed: the handshake is answered, then closed
                async with socket() as refused:
                    assert await _closed_code(refused, timeout=20) == 1013
        finally:
            postgres.start()
        async with socket() as back:
            await next_event(back, "feed.ready")

    with asgi_servers(1, tmp_path, env=env) as (port,):
        asyncio.run(scenario(port))

    log = _log(tmp_path)
    assert log.count(f"PostgreSQL {OUTAGE_LINE}") == 1, log
    assert log.count(f"PostgreSQL {BACK_LINE}") == 1, log
    assert log.count("Traceback") == 2, log  # the first error's (psycopg2's and Django's), not one per socket


def _consensus_task(http: httpx.Client, project: int, manager: str) -> int:
    """A task brought to consensus through the API: the demo's two annotators read it alike (k = 2)."""
    readers = [{"Authorization": f"Token {_token(http, name)}"} for name in ("annotator", "second_annotator")]
    for _ in range(10):
        for reader in readers:
            claimed = http.post("/api/queue/next/", json={}, headers=reader)
            assert claimed.status_code == 200, claimed.text
            submitted = http.post(f"/api/reads/{claimed.json()['read']}/submit/", json={"findings": []},
                                  headers=reader)
            assert submitted.status_code == 200, submitted.text
        done = http.get(f"/api/projects/{project}/tasks/", params={"state": "consensus"},
                        headers={"Authorization": f"Token {manager}"}).json()["results"]
        if done:
            return done[0]["id"]
    raise AssertionError("no task reached consensus")


@pytest.mark.parametrize("server", ["uvicorn", "gunicorn"])
def test_jobs_asked_for_while_the_broker_is_down_are_503_and_leave_nothing_half_done(
        seeded_database, redis, server, tmp_path):
    import redis as redis_py

    # Jobs go to Celery's broker (this Redis) as in production, where no worker takes them here.
    env = {"DATABASE_URL": seeded_database, "REDIS_URL": redis.url, "RADQUEUE_TEST_SERVER_CELERY_EAGER": "0"}
    started = asgi_servers(1, tmp_path, env=env) if server == "uvicorn" else gunicorn_api_server(tmp_path, env=env)
    with started as ports, httpx.Client(base_url=f"http://127.0.0.1:{ports[0] if server == 'uvicorn' else ports}",
                                        timeout=30) as http:
        token = _token(http, "manager")
        auth = {"Authorization": f"Token {token}"}
        project = http.get("/api/projects/", headers=auth).json()["results"][0]["id"]
        task = _consensus_task(http, project, token)
        created = http.post(f"/api/projects/{project}/batches/", json={"name": "outage", "tasks": [task]}, headers=auth)
        assert created.status_code == 201, created.text
        batch = f"/api/projects/{project}/batches/{created.json()['id']}/"
        with _connection(seeded_database) as conn, conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM audit_auditevent")
            events = cur.fetchone()[0]

        redis.stop()
        try:
            _assert_unavailable(http.post(f"{batch}deliver/", headers=auth), "queue_unavailable")
            _assert_unavailable(http.post(f"{batch}report/", headers=auth), "queue_unavailable")
            _assert_unavailable(http.post(f"/api/projects/{project}/learning/jobs/", json={"kind": "score"},
                                          headers=auth), "queue_unavailable")
            # nothing was done: no delivery, report or job recorded (the views below record theirs), the
            # batch is open, its task not delivered, no job waits for a message that was never sent
            with _connection(seeded_database) as conn, conn.cursor() as cur:
                cur.execute("SELECT count(*) FROM audit_auditevent")
                assert cur.fetchone()[0] == events
            shown = http.get(batch, headers=auth).json()
            assert (shown["state"], shown["export_state"]) == ("open", "none"), shown
            assert http.get(f"/api/projects/{project}/tasks/{task}/", headers=auth).json()["state"] == "consensus"
            assert http.get(f"/api/projects/{project}/learning/jobs/", headers=auth).json()["results"] == []
        finally:
            redis.start()

        # back: the same requests are taken, and their jobs are queued
        delivered = http.post(f"{batch}deliver/", headers=auth)
        assert delivered.status_code == 200, delivered.text
        assert (delivered.json()["state"], delivered.json()["export_state"]) == ("delivered", "building")
        assert http.post(f"{batch}report/", headers=auth).status_code == 202
        started = http.post(f"/api/projects/{project}/learning/jobs/", json={"kind": "score"}, headers=auth)
        assert started.status_code == 202, started.text
        broker = redis_py.Redis.from_url(redis.url)
        queued = [message for queue in ("celery", "learning") for message in broker.lrange(queue, 0, -1)]
        assert sum(b"tasks.build_batch_delivery" in m for m in queued) == 1, queued
        assert sum(b"tasks.compute_batch_report" in m for m in queued) == 1, queued
        assert sum(b"learning.run_job" in m for m in queued) == 1, queued

    log = _log(tmp_path)
    # once per process and outage; a gunicorn worker logs the end at its next job (if the requests after
    # the outage came to it)
    broker = "Redis (Celery's broker)"
    refused, back = log.count(f"{broker} {OUTAGE_LINE}"), log.count(f"{broker} {BACK_LINE}")
    if server == "uvicorn":
        assert (refused, back) == (1, 1), log
    else:
        assert 1 <= refused <= 2 and back <= refused, log


@pytest.mark.django_db
def test_a_build_the_broker_lost_between_its_check_and_the_send_is_failed_at_once_and_can_be_rebuilt(
        cast, api, monkeypatch, django_capture_on_commit_callbacks):
    """The window the check before commit leaves (milliseconds): the delivery has committed, so it
    is answered as done, and its build is failed now instead of building until the sweep."""
    from kombu.exceptions import OperationalError

    from core import jobs
    from core.celery import app
    from tasks.batches import build_batch_delivery_job
    from tests.delivery.conftest import consensus_tasks, laterality

    tasks = consensus_tasks(cast, api, [laterality("left")])
    url = f"/api/projects/{cast.project.pk}/batches/"
    batch = api(cast.manager).post(url, {"name": "lost", "tasks": [t.pk for t in tasks]}, format="json").json()["id"]

    def gone(*args, **kwargs):
        raise OperationalError("Error 111 connecting to 127.0.0.1:6379. Connection refused.")

    monkeypatch.setitem(app.conf, "task_always_eager", False)
    monkeypatch.setattr(jobs, "_check_broker", lambda app: None)  # the broker answered the check ...
    monkeypatch.setattr(build_batch_delivery_job, "apply_async", gone)  # ... and was gone at the send
    with django_capture_on_commit_callbacks(execute=True):
        delivered = api(cast.manager).post(f"{url}{batch}/deliver/")
    assert delivered.status_code == 200, delivered.json()
    shown = api(cast.manager).get(f"{url}{batch}/").json()
    assert (shown["state"], shown["export_state"]) == ("delivered", "failed")
    assert "could not be queued" in shown["export_error"]

    monkeypatch.undo()  # the broker is back (in-process here): the rebuild is queued and built
    with django_capture_on_commit_callbacks(execute=True):
        rebuilt = api(cast.manager).post(f"{url}{batch}/exports/")
    assert rebuilt.status_code == 202, rebuilt.json()
    assert api(cast.manager).get(f"{url}{batch}/").json()["export_state"] == "ready"
