"""Fault injection: radqueue as deploy/ runs it, under a claim-and-submit load, while its processes
are killed and its backing services restarted; after each fault, every promise checked with SQL.

    .venv/bin/python bench/faults.py [--quick] [--soak MINUTES] [--keep]

Nothing shared is touched: the run initdb's its own PostgreSQL (Debian's binaries under
/usr/lib/postgresql/*/bin, else the pip wheel's; a free port, a temporary directory; as an account
of its own when run as root)
and starts its own Redis on another free port; both go when the run ends (--keep leaves the
directory and its logs).

1. Setup: migrate, one project with k reads per task (--k, default 3), N tasks (--quick: 6,000),
   R tier-1 readers and a manager with knox tokens; then every process of deploy/systemd, with the
   environment deploy/radqueue.env.example describes (DEBUG=0): the API on gunicorn (core.wsgi,
   sync workers, --preload, DB_CONN_MAX_AGE=600), the feed on uvicorn (core.asgi, 2 workers,
   DB_CONN_MAX_AGE=0), a Celery worker (-Q celery -c 2) and beat. One difference, for the clock:
   every process runs bench/faults_settings.py, core.settings with beat's sweeps every 10 s and
   BATCH_BUILD_TIMEOUT 150 s (--quick; the full run 600 s, production's minimum), so that the
   sweeps act within the run.
2. Load, over real HTTP (httpx, one thread per reader): claim, then submit with an Idempotency-Key
   (5% released instead), pause, again. A request that fails without an answer, or with a 5xx,
   is retried: a submit with the same key, a lost claim by claiming again (where the server returns
   the read the reader already holds, the held read is recovered; otherwise it stays held until
   its lease ends). A manager polls the progress endpoint; a websocket client holds the project's
   feed on uvicorn and reconnects when it closes.
3. Faults, in sequence, each followed by a window of load (--window): web_worker_kill, kill -9 of
   three gunicorn workers a second apart, each caught serving a request where possible;
   claim_response_lost, three readers' claims give up before the answer comes (a connection lost
   after the request went out: the claim commits, the reader claims again); feed_worker_kill,
   kill -9 of the uvicorn worker holding the feed's socket; celery_worker_kill, kill -9 of the
   whole Celery worker while it builds a delivered batch's report and exports (started again 5 s
   later, as systemd's RestartSec=5 does; the build's message is gone with it, beat's
   fail-stale-batch-builds sweep marks the build failed after BATCH_BUILD_TIMEOUT, the manager
   then asks for a rebuild: recovery_s runs to the rebuilt exports); postgres_restart (pg_ctl
   restart -m fast); postgres_stop_5s; redis_restart (SIGTERM, which saves its snapshot, and
   start); redis_stop_5s, with a batch delivered while Redis is down (refused 503 with
   Retry-After and rolled back, since Celery's broker cannot take its build; delivered again after
   Retry-After, its build followed to the exports).
4. After each fault the load pauses (every reader finishes its claim and submit) and the database
   is checked: every acknowledged submit stored exactly once (the read submitted, one submit audit
   event, counted once on its task), no task over k reads, no reader twice on a task, no orphan
   queue slot, no read held that its reader does not know of, progress (the endpoint) equal to the
   tables, `manage.py audit_verify` passing. Client side: failed requests, seconds from the fault
   to the last failure, and during PostgreSQL and Redis outages whether every failure was a 503
   with Retry-After (server_errors_during_outage counts the others, dropped connections included).

--soak MINUTES instead runs the mixed load (claims, heartbeats, submits, releases, progress polls,
the feed, a batch delivered and built every minute) without faults, samples the memory of every
server process (RSS, and PSS, which counts pages the gunicorn workers share once) and each minute's
p99 latency, writes the plot (--plot, PNG; docs/img/soak.png by default) and a markdown table
(--table), and checks that memory does not grow once warm: the least-squares slope of the
processes' RSS over the second half of the samples must stay under --max-growth MB per minute.

Human-readable lines first; the last line is one JSON object (acknowledged, lost, duplicated,
over_read, recovery_s per fault, server_errors_during_outage, retry_after_present, and the
details). Exit status 1 when a promise does not hold.
"""

import argparse
import base64
import contextlib
import math
import os
import random
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import (  # noqa: E402
    ROOT,
    bench_organizations,
    print_result,
    seed_queued_tasks,
    setup_django,
    use_bench_database,
)
from core.postgresql.embedded import server_programs  # noqa: E402

DATABASE = "radqueue_bench_faults"
STUDY_UID = "1.2.826.0.1.3680043.8.498.77.{}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def process_tree(root_pid: int) -> list[int]:
    """``root_pid`` and all its descendants (from /proc)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue  # gone meanwhile
        children.setdefault(ppid, []).append(int(stat.parent.name))
    found, todo = [], [root_pid]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, ()))
    return found


def _sockets(pid: int) -> int:
    """How many sockets the process has open."""
    try:
        return sum(1 for fd in Path(f"/proc/{pid}/fd").iterdir() if os.readlink(fd).startswith("socket:"))
    except OSError:
        return 0


def _serving(pids, port: int) -> list[int]:
    """Those of ``pids`` holding an established connection on local ``port``: a sync worker serving a request."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                parts = line.split()
                if parts[3] == "01" and int(parts[1].rsplit(":", 1)[1], 16) == port:
                    inodes.add(parts[9])
    found = []
    for pid in pids:
        with contextlib.suppress(OSError):
            if any(os.readlink(fd)[8:-1] in inodes for fd in Path(f"/proc/{pid}/fd").iterdir()
                   if os.readlink(fd).startswith("socket:")):
                found.append(pid)
    return found


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def memory_kb(pids) -> tuple[int, int]:
    """(RSS, PSS) of these processes, in kB; PSS shares each page among the processes mapping it
    (gunicorn's --preload workers share the parent's pages, which RSS counts once per worker)."""
    rss = pss = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Rss:"):
                    rss += int(line.split()[1])
                elif line.startswith("Pss:"):
                    pss += int(line.split()[1])
        except OSError:
            continue
    return rss, pss


# --- the backing services, our own ----------------------------------------------------------------

def _as_postgres(command: list[str]) -> list[str]:
    # initdb and postgres refuse to run as root.
    account = server_programs()[1]
    return ["runuser", "-u", account, "--", *command] if account else command


class Postgres:
    """A PostgreSQL cluster of our own in ``root``, on ``port``; pg_ctl starts, restarts and stops it."""

    def __init__(self, root: Path, port: int) -> None:
        # Debian's PostgreSQL where installed, else the wheel's (core.postgresql.embedded).
        self.bin, account = server_programs()
        self.port = port
        self.data, logs = root / "pg", root / "pglog"
        self.log = logs / "postgres.log"
        for d in (self.data, logs):
            d.mkdir(mode=0o700)
            if account:
                shutil.chown(d, account, account)

    def url(self, database: str = "postgres") -> str:
        return f"postgres://postgres@127.0.0.1:{self.port}/{database}"

    def init(self) -> None:
        subprocess.run(_as_postgres([str(self.bin / "initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres",
                                     "-E", "UTF8", "--no-sync"]), check=True, capture_output=True)
        # deploy/README.md's advice (autovacuum every 10 s); everything else PostgreSQL's defaults.
        with open(self.data / "postgresql.conf", "a") as conf:
            conf.write(f"\nport = {self.port}\nlisten_addresses = '127.0.0.1'\n"
                       f"unix_socket_directories = '{self.data}'\nmax_connections = 200\n"
                       "autovacuum_naptime = 10s\n")

    def ctl(self, *args: str) -> None:
        subprocess.run(_as_postgres([str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-w",
                                     "-t", "120", *args]), check=True, capture_output=True)

    def start(self) -> None:
        self.ctl("start")

    def restart(self) -> None:
        self.ctl("restart", "-m", "fast")

    def stop(self) -> None:
        self.ctl("stop", "-m", "fast")

    def pids(self) -> list[int]:
        try:
            return process_tree(int((self.data / "postmaster.pid").read_text().split()[0]))
        except (OSError, ValueError, IndexError):
            return []

    def destroy(self) -> None:
        with contextlib.suppress(subprocess.CalledProcessError):
            self.ctl("stop", "-m", "immediate")


class Redis:
    """A Redis of our own on ``port``, with Redis's default snapshots (saved on SIGTERM)."""

    def __init__(self, root: Path, port: int) -> None:
        self.dir, self.port = root / "redis", port
        self.dir.mkdir()
        self.process: subprocess.Popen | None = None

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def start(self) -> None:
        import redis

        self.process = subprocess.Popen(["redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
                                         "--dir", str(self.dir), "--logfile", str(self.dir / "redis.log")],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 30
        while True:
            try:
                redis.Redis(port=self.port, socket_timeout=1).ping()
                return
            except redis.RedisError:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    raise RuntimeError("redis-server did not start") from None
                time.sleep(0.05)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=30)

    def pids(self) -> list[int]:
        return [self.process.pid] if self.process is not None and self.process.poll() is None else []


# --- radqueue's processes ------------------------------------------------------------------------

class Service:
    """One of deploy/systemd's processes (and its children), its output in ``log``."""

    def __init__(self, name: str, command: list[str], env: dict, log: Path, ready) -> None:
        self.name, self.command, self.env, self.log, self.ready = name, command, env, log, ready
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 120) -> None:
        with open(self.log, "a") as out:
            self.process = subprocess.Popen(self.command, cwd=ROOT, env=self.env, stdout=out,
                                            stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while not self.ready(self):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} did not come up (exit code {self.process.poll()}):\n"
                                   f"{self.log.read_text(errors='replace')[-3000:]}")
            time.sleep(0.2)

    def pids(self) -> list[int]:
        return process_tree(self.process.pid) if self.process is not None and self.process.poll() is None else []

    def children(self) -> list[int]:
        """The direct children: gunicorn's and uvicorn's workers, Celery's pool."""
        if self.process is None or self.process.poll() is not None:
            return []
        found = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            with contextlib.suppress(OSError, IndexError, ValueError):
                fields = stat.read_text().rsplit(")", 1)[1].split()
                if int(fields[1]) == self.process.pid and fields[0] != "Z":
                    found.append(int(stat.parent.name))
        return found

    def kill_all(self) -> None:
        """kill -9 of the process and every child: what the OOM killer or a lost node leaves."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.kill_all()

    def tracebacks(self) -> int:
        return self.log.read_text(errors="replace").count("Traceback (most recent call last)")


def _http_ready(port: int):
    def ready(_service) -> bool:
        import httpx

        try:
            return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False
    return ready


def _log_says(text: str):
    def ready(service) -> bool:
        return text in service.log.read_text(errors="replace")
    return ready


def server_env(pg: Postgres, redis_: Redis, root: Path, build_timeout: int, uvicorn_port: int) -> dict:
    """The environment every process gets: deploy/radqueue.env.example's, pointed at our instances."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_URL", "REDIS_URL", "DJANGO_"))}
    env.update(
        DJANGO_SETTINGS_MODULE="bench.faults_settings", DEBUG="0", SECRET_KEY=secrets.token_urlsafe(64),
        ALLOWED_HOSTS="127.0.0.1,localhost", CSRF_TRUSTED_ORIGINS=f"http://127.0.0.1:{uvicorn_port}",
        DATABASE_URL=pg.url(DATABASE), REDIS_URL=redis_.url(0),
        RADQUEUE_STORAGE_KEY="k1:" + base64.b64encode(os.urandom(32)).decode(),
        RADQUEUE_DATA_DIR=str(root / "data"), RADQUEUE_AUDIT_ANCHOR_DIR=str(root / "anchors"),
        RADQUEUE_AUDIT_ANCHOR_KEY=base64.b64encode(os.urandom(32)).decode(),
        SECURE_SSL_REDIRECT="0", LOG_LEVEL="WARNING", FAULTS_BATCH_BUILD_TIMEOUT=str(build_timeout),
        FAULTS_SWEEP_SECONDS="10", PYTHONUNBUFFERED="1",
    )
    return env


def radqueue_services(env: dict, root: Path, api_port: int, feed_port: int) -> dict[str, Service]:
    """deploy/systemd's units (API, feed, worker, beat), their commands as the units run them."""
    py = sys.executable
    return {
        "api": Service("api (gunicorn core.wsgi)",
                       [py, "-m", "gunicorn", "core.wsgi:application", "--preload", "--worker-class", "sync",
                        "--workers", "4", "--bind", f"127.0.0.1:{api_port}", "--timeout", "60",
                        "--graceful-timeout", "30",
                        # gunicorn 27's control socket defaults to one path per user: a second
                        # gunicorn on the machine (another bench's, the bulk unit's) would take it over.
                        "--control-socket", str(root / "gunicorn.ctl")],
                       env | {"DB_CONN_MAX_AGE": "600"}, root / "api.log", _http_ready(api_port)),
        "feed": Service("feed (uvicorn core.asgi)",
                        [py, "-m", "uvicorn", "core.asgi:application", "--host", "127.0.0.1", "--port",
                         str(feed_port), "--workers", "2"],
                        env | {"DB_CONN_MAX_AGE": "0"}, root / "feed.log", _http_ready(feed_port)),
        "worker": Service("worker (celery -Q celery -c 2)",
                          [py, "-m", "celery", "-A", "core", "worker", "-Q", "celery", "-c", "2", "--loglevel",
                           "INFO", "--hostname", f"faults-{os.getpid()}@%h"],
                          env, root / "worker.log", _log_says(" ready.")),
        "beat": Service("beat (celery beat)",
                        [py, "-m", "celery", "-A", "core", "beat", "--loglevel", "INFO", "--schedule",
                         str(root / "celerybeat-schedule")],
                        env, root / "beat.log", _log_says("beat: Starting")),
    }


# --- the project -----------------------------------------------------------------------------------

@dataclass
class Cast:
    project_id: int
    reader_ids: list[int]
    reader_tokens: list[str]
    manager_token: str


def seed(tasks: int, k: int, readers: int) -> Cast:
    """One project (k reads per task, no gold, no calibration), ``tasks`` tasks with their k slots
    each as tasks.creation lays them out, ``readers`` annotators and a manager, with tokens."""
    from django.db import connection
    from knox.models import AuthToken

    from core.memberships import grant_membership
    from core.models import Project, User
    from core.protocols import create_protocol_version, mark_protocol_version_used
    from tasks.progress import recount_progress

    vendor, client = bench_organizations()
    project = Project.objects.create(name="Faults bench", client=client, vendor=vendor, modalities=["CT"],
                                     reads_per_task=k, gold_rate=0, requires_calibration=False)
    version = create_protocol_version(project=project, name="Faults bench", template="generic_findings")
    manager = User.objects.create(username="faults-manager", organization=vendor)
    grant_membership(project=project, user=manager, role="manager")
    users = []
    for i in range(readers):
        user = User.objects.create(username=f"faults-reader-{i:02d}", organization=vendor)
        grant_membership(project=project, user=user, role="annotator")
        users.append(user)
    with connection.cursor() as cursor:
        seed_queued_tasks(cursor, project.pk, version.pk, tasks, k, STUDY_UID.format(""))
    mark_protocol_version_used(version)
    recount_progress(project.pk)
    with connection.cursor() as cursor:
        for table in ("core_study", "tasks_task", "tasks_queueslot", "tasks_read"):
            cursor.execute(f"VACUUM ANALYZE {table}")
    return Cast(project.pk, [u.pk for u in users], [AuthToken.objects.create(u)[1] for u in users],
                AuthToken.objects.create(manager)[1])


# --- the load ---------------------------------------------------------------------------------------

@dataclass(slots=True)
class Request:
    t0: float
    t1: float
    kind: str
    status: int | None  # None: no answer (refused, reset, timed out)
    retry_after: str | None
    code: str  # the JSON error's code, or the transport error's class


def _retry_delay(response, attempt: int) -> float:
    """Retry-After when the server sent one (capped: a run of minutes), else a short backoff."""
    if response is not None:
        with contextlib.suppress(TypeError, ValueError):
            return min(float(response.headers.get("Retry-After")), 10.0)
    return min(0.2 * 2 ** attempt, 2.0)


class Load:
    """The readers' threads, a progress poller and the feed listener, and what they saw."""

    def __init__(self, base: str, cast: Cast, think_s: float, release_share: float, heartbeat_share: float,
                 seed_: int) -> None:
        self.base, self.cast, self.think_s = base, cast, think_s
        self.release_share, self.heartbeat_share = release_share, heartbeat_share
        self.requests: list[Request] = []
        self.handed: dict[int, int] = {}  # read id -> the reader it was handed to
        self.double_handouts = 0
        self.acked: set[int] = set()
        self.released: set[int] = set()
        self.release_unsure: set[int] = set()  # a retried release answered 409: the first one may have landed
        self.refused: dict[str, int] = {}
        self.empty_claims = 0
        self.lose_claim: set[int] = set()  # readers whose next claim loses its answer
        self._lock = threading.Lock()
        self._active = 0
        self._running = threading.Event()
        self._stopping = threading.Event()
        self._rng = random.Random(seed_)
        self.threads: list[threading.Thread] = []

    # The readers run their claim-and-finish cycles while running is set; pause() waits until every
    # cycle under way has finished, so the database is checked with no read in a client's hands.
    def start(self) -> None:
        self._running.set()
        for i, token in enumerate(self.cast.reader_tokens):
            rng = random.Random(self._rng.random())
            self.threads.append(threading.Thread(target=self._reader, args=(i, token, rng), daemon=True,
                                                 name=f"reader-{i}"))
        self.threads.append(threading.Thread(target=self._progress_poller, daemon=True, name="progress"))
        for thread in self.threads:
            thread.start()

    def pause(self, timeout: float = 180) -> bool:
        with self._lock:
            self._running.clear()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if self._active == 0:
                    return True
            time.sleep(0.05)
        return False

    def resume(self) -> None:
        self._running.set()

    def stop(self) -> None:
        self.pause()
        self._stopping.set()
        self._running.set()
        for thread in self.threads:
            thread.join(timeout=30)

    def _enter(self) -> bool:
        with self._lock:
            if not self._running.is_set():
                return False
            self._active += 1
            return True

    def _leave(self) -> None:
        with self._lock:
            self._active -= 1

    def call(self, client, kind: str, method: str, path: str, **kwargs):
        """One request, recorded; the response, or None when none came."""
        import httpx

        t0 = time.monotonic()
        try:
            response = client.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            self.requests.append(Request(t0, time.monotonic(), kind, None, None, type(exc).__name__))
            return None
        code = ""
        if response.status_code >= 400:
            with contextlib.suppress(ValueError, AttributeError):
                code = str(response.json().get("code", ""))
        self.requests.append(Request(t0, time.monotonic(), kind, response.status_code,
                                     response.headers.get("Retry-After"), code))
        return response

    def _reader(self, index: int, token: str, rng: random.Random) -> None:
        import httpx

        with httpx.Client(base_url=self.base, headers={"Authorization": f"Token {token}"},
                          timeout=httpx.Timeout(20.0)) as client:
            while not self._stopping.is_set():
                if not self._enter():
                    self._running.wait(0.2)
                    continue
                try:
                    read = self._claim(client, index)
                    if read is not None:
                        roll = rng.random()
                        if roll < self.heartbeat_share:
                            self._finish(client, read, "heartbeat")
                        if rng.random() < self.release_share:
                            self._finish(client, read, "release")
                        else:
                            self._finish(client, read, "submit")
                finally:
                    self._leave()
                time.sleep(self.think_s if read is not None else 0.25)

    def _claim(self, client, index: int) -> int | None:
        """Claim until answered (a lost answer is claimed again): the read id, or None (204, 4xx)."""
        import httpx

        for attempt in range(10_000):
            lose = {}
            if index in self.lose_claim:
                self.lose_claim.discard(index)
                lose = {"timeout": httpx.Timeout(20.0, read=0.0005)}  # the claim commits; its answer is lost
            response = self.call(client, "claim", "POST", "/api/queue/next/", json={}, **lose)
            if response is None or response.status_code >= 500:
                time.sleep(_retry_delay(response, attempt))
                continue
            if response.status_code == 204:
                self.empty_claims += 1
                return None
            if response.status_code != 200:
                self._note_refusal("claim", response)
                return None
            read = int(response.json()["read"])
            with self._lock:
                if self.handed.get(read, index) != index or read in self.acked or read in self.released:
                    self.double_handouts += 1
                self.handed[read] = index
            return read
        return None

    def _finish(self, client, read: int, action: str) -> None:
        """Heartbeat, submit (one Idempotency-Key for all its tries) or release, retried until answered."""
        headers = {"Idempotency-Key": str(uuid.uuid4())} if action == "submit" else {}
        body = {"findings": []} if action == "submit" else {}
        for attempt in range(10_000):
            response = self.call(client, action, "POST", f"/api/reads/{read}/{action}/", json=body, headers=headers)
            if response is None or response.status_code >= 500:
                time.sleep(_retry_delay(response, attempt))
                continue
            if response.status_code == 200:
                if action == "submit":
                    self.acked.add(read)
                elif action == "release":
                    self.released.add(read)
            elif action == "release" and attempt > 0 and response.status_code == 409:
                self.release_unsure.add(read)
            else:
                self._note_refusal(action, response)
            return

    def _note_refusal(self, kind: str, response) -> None:
        key = f"{kind} {response.status_code} {self.requests[-1].code}".strip()
        with self._lock:
            self.refused[key] = self.refused.get(key, 0) + 1

    def _progress_poller(self) -> None:
        import httpx

        with httpx.Client(base_url=self.base, headers={"Authorization": f"Token {self.cast.manager_token}"},
                          timeout=httpx.Timeout(20.0)) as client:
            while not self._stopping.wait(2.0):
                if self._running.is_set():
                    self.call(client, "progress", "GET", f"/api/projects/{self.cast.project_id}/progress/")


class Feed(threading.Thread):
    """The manager's websocket on the project's feed (uvicorn): counts events, reconnects after a close."""

    def __init__(self, port: int, project_id: int, token: str) -> None:
        super().__init__(daemon=True, name="feed")
        self.url = f"ws://127.0.0.1:{port}/ws/projects/{project_id}/"
        self.origin, self.token = f"http://127.0.0.1:{port}", token
        self.events = 0
        self.connects = 0
        self.closes: list[tuple[float, str]] = []  # (when, why)
        self.opened_at: list[float] = []
        self._halt = threading.Event()

    def run(self) -> None:
        from websockets.exceptions import ConnectionClosed, InvalidStatus, WebSocketException
        from websockets.sync.client import connect

        while not self._halt.is_set():
            try:
                with connect(self.url, subprotocols=["radqueue", f"token.{self.token}"], origin=self.origin,
                             open_timeout=5, close_timeout=2) as ws:
                    self.connects += 1
                    self.opened_at.append(time.monotonic())
                    while not self._halt.is_set():
                        try:
                            ws.recv(timeout=0.5)
                            self.events += 1
                        except TimeoutError:
                            continue
            except InvalidStatus as exc:  # the handshake refused with an HTTP status
                self.closes.append((time.monotonic(), f"rejected {exc.response.status_code}"))
            except ConnectionClosed as exc:
                self.closes.append((time.monotonic(), f"closed {exc.rcvd.code if exc.rcvd else 'without a frame'}"))
            except (OSError, WebSocketException, TimeoutError) as exc:
                self.closes.append((time.monotonic(), type(exc).__name__))
            self._halt.wait(1.0)  # then reconnect (a client resyncs from the progress endpoint)

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=10)

    def reopened_after(self, t: float) -> float | None:
        """Seconds from ``t`` to the first connection opened after it (None: none yet)."""
        later = [o for o in self.opened_at if o > t]
        return round(later[0] - t, 2) if later else None


# --- the checks -------------------------------------------------------------------------------------

def db_checks(dsn: str, project_id: int, load: Load) -> dict:
    """Every promise of the queue, read back in one snapshot (the load paused)."""
    import psycopg2

    conn = psycopg2.connect(dsn)
    try:
        conn.set_session(isolation_level="REPEATABLE READ")
        with conn.cursor() as cur:
            cur.execute("CREATE TEMP TABLE faults_acked (read_id bigint) ON COMMIT DROP")
            cur.execute("INSERT INTO faults_acked SELECT unnest(%s::bigint[])", [sorted(load.acked)])
            checks = {}
            # An acknowledged submit: its read submitted, and stored once (one submit event).
            cur.execute("""SELECT count(*) FROM faults_acked a LEFT JOIN tasks_read r ON r.id = a.read_id
                           WHERE r.state IS DISTINCT FROM 'submitted'""")
            checks["lost"] = cur.fetchone()[0]
            cur.execute("""SELECT count(*) FROM (SELECT object_id FROM audit_auditevent
                           WHERE action = 'submit' AND project_id = %s GROUP BY object_id HAVING count(*) > 1) x""",
                        [project_id])
            checks["duplicated"] = cur.fetchone()[0]
            # No task over k; its count of submitted reads is its submitted reads.
            cur.execute("""SELECT count(*) FROM tasks_task t LEFT JOIN (
                               SELECT task_id, count(*) FILTER (WHERE state IN ('claimed', 'submitted')) AS live,
                                      count(*) FILTER (WHERE state = 'submitted') AS done
                               FROM tasks_read WHERE project_id = %(p)s AND NOT is_check GROUP BY task_id) r
                             ON r.task_id = t.id
                           WHERE t.project_id = %(p)s AND (coalesce(r.live, 0) > t.reads_required
                              OR t.reads_submitted > t.reads_required OR t.reads_submitted <> coalesce(r.done, 0))""",
                        {"p": project_id})
            checks["over_read"] = cur.fetchone()[0]
            cur.execute("""SELECT count(*) FROM (SELECT 1 FROM tasks_read WHERE project_id = %s
                           AND state IN ('claimed', 'submitted') GROUP BY task_id, reader_id HAVING count(*) > 1) x""",
                        [project_id])
            checks["reader_twice"] = cur.fetchone()[0]
            # Orphan slots: a slot holding a read that is not a live read of its holder; a leased slot
            # without a read; a claimed read without its slot; a task whose open slots are not the
            # reads it still needs.
            cur.execute("""SELECT
                (SELECT count(*) FROM tasks_queueslot s LEFT JOIN tasks_read r ON r.id = s.read_id
                 WHERE s.project_id = %(p)s AND s.read_id IS NOT NULL
                   AND (r.state IS DISTINCT FROM 'claimed' OR r.reader_id IS DISTINCT FROM s.reader_id))
              + (SELECT count(*) FROM tasks_queueslot WHERE project_id = %(p)s
                 AND (reader_id IS NULL) <> (read_id IS NULL))
              + (SELECT count(*) FROM tasks_read r WHERE r.project_id = %(p)s AND r.state = 'claimed' AND NOT r.is_check
                 AND NOT EXISTS (SELECT 1 FROM tasks_queueslot s WHERE s.read_id = r.id))
              + (SELECT count(*) FROM tasks_task t WHERE t.project_id = %(p)s
                 AND (SELECT count(*) FROM tasks_queueslot s WHERE s.task_id = t.id)
                     <> CASE WHEN t.state IN ('queued', 'in_reading') THEN t.reads_required - t.reads_submitted
                             ELSE 0 END)""", {"p": project_id})
            checks["orphan_slots"] = cur.fetchone()[0]
            # Held reads: with the load paused, every read a client knows of is finished; a read
            # still claimed is one whose claim answer was lost and that no claim since returned.
            cur.execute("SELECT id FROM tasks_read WHERE project_id = %s AND state = 'claimed'", [project_id])
            held = [row[0] for row in cur.fetchall()]
            checks["held_unknown"] = sum(1 for r in held if r not in load.handed)
            checks["held_known"] = len(held) - checks["held_unknown"]
            # The clients' releases: each released read no longer claimed.
            cur.execute("""SELECT count(*) FROM tasks_read WHERE id = ANY(%s) AND state <> 'released'""",
                        [sorted(load.released)])
            checks["release_lost"] = cur.fetchone()[0]
            cur.execute("""SELECT state, count(*), sum(CASE WHEN state IN ('queued', 'in_reading')
                                                        THEN reads_required - reads_submitted ELSE 0 END)
                           FROM tasks_task WHERE project_id = %s AND kind = 'production' GROUP BY state""",
                        [project_id])
            rows = cur.fetchall()
            checks["tables"] = {"by_state": {s: n for s, n, _ in rows}, "reads_left": sum(left for *_, left in rows)}
            cur.execute("SELECT count(*) FROM tasks_read WHERE project_id = %s AND state = 'submitted'", [project_id])
            checks["submitted_reads"] = cur.fetchone()[0]
        conn.rollback()
        return checks
    finally:
        conn.close()


def progress_check(base: str, cast: Cast, tables: dict) -> bool | None:
    """Whether the progress endpoint says what the tables say (None: it did not answer)."""
    import httpx

    try:
        answer = httpx.get(f"{base}/api/projects/{cast.project_id}/progress/", timeout=30,
                           headers={"Authorization": f"Token {cast.manager_token}"})
    except httpx.HTTPError:
        return None
    if answer.status_code != 200:
        return None
    progress = answer.json()
    shown = {s: n for s, n in progress["tasks"]["by_state"].items() if n}
    equal = shown == tables["by_state"] and progress["eta"]["reads_left"] == tables["reads_left"]
    if not equal:
        print(f"    progress says {shown}, {progress['eta']['reads_left']} reads left; the tables {tables}")
    return equal


def audit_verified(env: dict) -> bool:
    out = subprocess.run([sys.executable, "manage.py", "audit_verify"], cwd=ROOT, env=env, capture_output=True,
                         text=True, check=False)
    if out.returncode != 0:
        print(f"    audit_verify: {(out.stderr or out.stdout).strip()[-500:]}")
    return out.returncode == 0


# --- the faults -------------------------------------------------------------------------------------

@dataclass
class Fault:
    name: str
    outage: bool  # a backing service down: every failure must be a 503 with Retry-After
    injected_at: float = 0.0
    window_end: float = 0.0
    details: dict = field(default_factory=dict)


class Run:
    def __init__(self, args, root: Path) -> None:
        self.args, self.root = args, root
        self.pg = Postgres(root, free_port())
        self.redis = Redis(root, free_port())
        self.api_port, self.feed_port = free_port(), free_port()
        self.services: dict[str, Service] = {}
        self.faults: list[Fault] = []
        self.checks: list[dict] = []
        self.load: Load | None = None
        self.feed: Feed | None = None
        self.cast: Cast | None = None
        self.env: dict = {}
        # Delivery builds the faults left to recover (fault name -> what happened to it), each
        # followed by a thread of its own.
        self.builds: dict[str, dict] = {}
        self.build_watches: list[threading.Thread] = []

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    def manager(self):
        import httpx

        return httpx.Client(base_url=self.base, headers={"Authorization": f"Token {self.cast.manager_token}"},
                            timeout=httpx.Timeout(60.0))

    # -- setup

    def setup(self, tasks: int) -> None:
        started = time.monotonic()
        self.pg.init()
        self.pg.start()
        self.redis.start()
        self.env = server_env(self.pg, self.redis, self.root, self.args.build_timeout, self.feed_port)
        for name in ("DATABASE_URL", "REDIS_URL", "DJANGO_SETTINGS_MODULE", "RADQUEUE_DATA_DIR",
                     "FAULTS_BATCH_BUILD_TIMEOUT", "FAULTS_SWEEP_SECONDS"):
            os.environ[name] = self.env[name]
        use_bench_database(DATABASE)
        setup_django(migrate=True)
        self.cast = seed(tasks, self.args.k, self.args.readers)
        from django.db import connection

        connection.close()
        print(f"PostgreSQL {self.pg.bin.parent.name} on :{self.pg.port}, Redis on :{self.redis.port}, "
              f"{tasks} tasks (k = {self.args.k}), {self.args.readers} readers; seeded in "
              f"{time.monotonic() - started:.0f} s")
        self.services = radqueue_services(self.env, self.root, self.api_port, self.feed_port)
        for service in self.services.values():
            service.start()
        print(f"started {', '.join(s.name for s in self.services.values())} in {time.monotonic() - started:.0f} s")
        self.load = Load(self.base, self.cast, self.args.think, self.args.release_share, self.args.heartbeat_share,
                         self.args.seed)
        self.feed = Feed(self.feed_port, self.cast.project_id, self.cast.manager_token)

    def teardown(self) -> None:
        if self.load is not None:
            self.load.stop()
        if self.feed is not None and self.feed.is_alive():
            self.feed.stop()
        for service in self.services.values():
            service.stop()
        self.redis.stop()
        self.pg.destroy()

    # -- between faults

    def check(self, label: str) -> dict:
        paused = self.load.pause()
        try:
            checks = db_checks(self.pg.url(DATABASE), self.cast.project_id, self.load)
            checks["progress_equal"] = progress_check(self.base, self.cast, checks.pop("tables"))
            checks["audit_verified"] = audit_verified(self.env)
        finally:
            self.load.resume()
        checks["paused"] = paused
        checks["after"] = label
        checks["acknowledged"] = len(self.load.acked)
        checks["double_handouts"] = self.load.double_handouts
        self.checks.append(checks)
        print(f"  checks after {label}: " + ", ".join(f"{k} {v}" for k, v in checks.items() if k != "after"))
        return checks

    def fault(self, name: str, outage: bool, inject, window_s: float) -> Fault:
        fault = Fault(name, outage)
        tracebacks = {n: s.tracebacks() for n, s in self.services.items()}
        fault.injected_at = time.monotonic()
        fault.details.update(inject() or {})
        time.sleep(window_s)
        fault.window_end = time.monotonic()
        fault.details["logged_tracebacks"] = {n: s.tracebacks() - tracebacks[n] for n, s in self.services.items()
                                              if s.tracebacks() - tracebacks[n]}
        self.faults.append(fault)
        summary = self.summarise(fault)
        print(f"  {name}: " + ", ".join(f"{k} {v}" for k, v in summary.items()))
        self.check(name)
        return fault

    def summarise(self, fault: Fault) -> dict:
        seen = [r for r in self.load.requests if fault.injected_at <= r.t0 < fault.window_end]
        failed = [r for r in seen if r.status is None or r.status >= 500]
        feed = [why for when, why in self.feed.closes if fault.injected_at <= when < fault.window_end]
        answer = {"requests": len(seen), "failed": len(failed),
                  "dropped": sum(1 for r in failed if r.status is None),
                  "recovery_s": round(max(r.t1 for r in failed) - fault.injected_at, 2) if failed else 0.0,
                  "feed_closes": feed, **fault.details}
        if fault.outage:
            proper = [r for r in failed if r.status == 503 and r.retry_after]
            answer["answered_503_retry_after"] = len(proper)
            answer["server_errors"] = len(failed) - len(proper)
            # A websocket handshake the server refused with a 5xx is an answer too; the feed's
            # promise for an outage is a close with 1013 (try again later), the client reconnecting.
            answer["feed_server_errors"] = sum(1 for why in feed if why.startswith("rejected 5"))
        return answer

    # -- the faults themselves

    def kill_web_workers(self) -> dict:
        """kill -9 of gunicorn workers, one a second, each while it serves a request where one is
        caught in 5 s; the master forks new ones."""
        kills = []
        for _ in range(self.args.web_kills):
            kills.append(self.kill_web_worker())
            time.sleep(1)
        return {"kills": len(kills), "mid_request": sum(k["mid_request"] for k in kills),
                "respawned_s_max": max(k["respawned_s"] for k in kills)}

    def kill_web_worker(self) -> dict:
        """kill -9 of one gunicorn worker, one serving a request if possible."""
        api = self.services["api"]
        workers = api.children()
        victim, busy = random.Random(self.args.seed).choice(workers), False
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            if serving := _serving(workers, self.api_port):
                victim, busy = serving[0], True
                break
            time.sleep(0.002)
        os.kill(victim, signal.SIGKILL)
        t = time.monotonic()
        while (victim in api.children() or len(api.children()) < len(workers)) and time.monotonic() - t < 30:
            time.sleep(0.02)
        return {"killed_pid": victim, "mid_request": busy, "respawned_s": round(time.monotonic() - t, 2)}

    def lose_claim_responses(self) -> dict:
        """The next claim of each of the first three readers gives up before its answer comes (a
        connection lost after the request went out): the server commits the claim, the reader
        claims again. Where the server returns the read the reader holds, nothing is left held."""
        for index in range(min(3, len(self.cast.reader_tokens))):
            self.load.lose_claim.add(index)
        return {"claims_lost": min(3, len(self.cast.reader_tokens))}

    def kill_feed_worker(self) -> dict:
        """kill -9 of one uvicorn worker (the one holding the feed's socket where we can tell);
        uvicorn's supervisor starts a new one, the client reconnects."""
        feed = self.services["feed"]
        # The supervisor's children are its workers and multiprocessing's resource tracker.
        workers = [pid for pid in feed.children() if "spawn_main" in _cmdline(pid)]
        holding = [pid for pid in workers if _sockets(pid) > min(_sockets(w) for w in workers)]
        victim = (holding or workers)[0]
        t = time.monotonic()
        os.kill(victim, signal.SIGKILL)

        def alive():
            return [pid for pid in feed.children() if "spawn_main" in _cmdline(pid)]
        while (victim in alive() or len(alive()) < len(workers)) and time.monotonic() - t < 30:
            time.sleep(0.05)
        respawned = round(time.monotonic() - t, 2)
        time.sleep(3)
        closed = any(when > t for when, _ in self.feed.closes)
        return {"killed_pid": victim, "respawned_s": respawned, "feed_closed": closed,
                "feed_reopened_s": self.feed.reopened_after(t) if closed else None}

    def restart_postgres(self) -> dict:
        t = time.monotonic()
        self.pg.restart()
        return {"down_s": round(time.monotonic() - t, 2)}

    def stop_postgres(self) -> dict:
        t = time.monotonic()
        self.pg.stop()
        time.sleep(5)
        self.pg.start()
        return {"down_s": round(time.monotonic() - t, 2)}

    def restart_redis(self) -> dict:
        t = time.monotonic()
        self.redis.stop()
        self.redis.start()
        return {"down_s": round(time.monotonic() - t, 2)}

    def stop_redis(self) -> dict:
        """Redis stopped for 5 s, a batch delivered meanwhile: Celery's broker cannot take its build,
        so the delivery is refused (503 with Retry-After) and rolled back; the manager delivers again
        after Retry-After, as a client does, and a thread follows the build to its exports."""
        tasks = self.consensus_tasks(10_000)
        path = f"/api/projects/{self.cast.project_id}/batches/"
        with self.manager() as client:
            created = client.post(path, json={"name": f"faults redis {time.time():.0f}", "tasks": tasks})
            created.raise_for_status()
            batch = created.json()["id"]
            t = time.monotonic()
            self.redis.stop()
            time.sleep(1)
            first = answer = self.load.call(client, "deliver", "POST", f"{path}{batch}/deliver/")
            answered_at = time.monotonic()
            state_meanwhile = self.batch_row(batch)[0]
            time.sleep(max(0.0, t + 5 - time.monotonic()))
            self.redis.start()
            down_s = round(time.monotonic() - t, 2)
            for attempt in range(20):
                if answer is not None and answer.status_code < 500:
                    break
                time.sleep(max(0.0, answered_at + _retry_delay(answer, attempt) - time.monotonic()))
                answer = self.load.call(client, "deliver", "POST", f"{path}{batch}/deliver/")
                answered_at = time.monotonic()
            delivered_s = round(answered_at - t, 2) if answer is not None and answer.status_code == 200 else None
        self.follow_build("redis_stop_5s", {"batch": batch, "tasks": len(tasks), "since": t,
                                            "deliver_status": None if first is None else first.status_code,
                                            "delivered_s": delivered_s})
        return {"down_s": down_s, "batch": batch, "deliver_status": None if first is None else first.status_code,
                "deliver_retry_after": None if first is None else first.headers.get("Retry-After"),
                "export_state_while_down": state_meanwhile, "delivered_s": delivered_s}

    def deliver_batch(self, client, task_ids: list[int]) -> dict:
        """A batch of these consensus tasks, delivered (its build queued): the batch as the API shows it."""
        created = client.post(f"/api/projects/{self.cast.project_id}/batches/",
                              json={"name": f"faults {len(task_ids)} tasks {time.time():.0f}", "tasks": task_ids})
        created.raise_for_status()
        delivered = client.post(f"/api/projects/{self.cast.project_id}/batches/{created.json()['id']}/deliver/")
        delivered.raise_for_status()
        return delivered.json()

    def consensus_tasks(self, limit: int) -> list[int]:
        import psycopg2

        with contextlib.closing(psycopg2.connect(self.pg.url(DATABASE))) as conn, conn.cursor() as cur:
            cur.execute("""SELECT id FROM tasks_task WHERE project_id = %s AND state = 'consensus'
                           AND batch_id IS NULL ORDER BY id LIMIT %s""", [self.cast.project_id, limit])
            return [row[0] for row in cur.fetchall()]

    def batch_row(self, batch_id: int) -> tuple:
        import psycopg2

        with contextlib.closing(psycopg2.connect(self.pg.url(DATABASE))) as conn, conn.cursor() as cur:
            cur.execute("SELECT export_state, report_computed_at FROM tasks_batch WHERE id = %s", [batch_id])
            return cur.fetchone()

    def kill_celery_worker(self) -> dict:
        """Deliver a batch, kill -9 the worker (all its processes) once it has taken the build, start
        it again 5 s later; a thread follows the build to its rebuilt exports."""
        worker = self.services["worker"]
        received = "Task tasks.build_batch_delivery["
        for _attempt in range(3):
            tasks = self.consensus_tasks(10_000)
            jobs = worker.log.read_text(errors="replace").count(received)
            with self.manager() as client:
                batch = self.deliver_batch(client, tasks)
            # The worker has the build's message once its log says so; the pool starts it at once.
            deadline = time.monotonic() + 60
            while worker.log.read_text(errors="replace").count(received) == jobs and time.monotonic() < deadline:
                time.sleep(0.01)
            taken_at = time.monotonic()
            time.sleep(self.args.kill_delay)
            state, report_at = self.batch_row(batch["id"])
            if state != "building":
                print(f"    batch {batch['id']} ({len(tasks)} tasks) was {state} before the kill; again with another")
                continue
            worker.kill_all()
            killed_at = time.monotonic()
            break
        else:
            return {"killed_mid_build": False}
        time.sleep(5)  # systemd's RestartSec=5 (deploy/systemd/radqueue-worker.service)
        worker.start()
        # The job computes the batch's report first, then builds the files: a report already
        # stored at the kill says the job was past its first step.
        build = {"batch": batch["id"], "tasks": len(tasks), "killed_mid_build": True,
                 "report_stored_before_kill": report_at is not None,
                 "killed_after_received_s": round(killed_at - taken_at, 2), "since": killed_at}
        self.follow_build("celery_worker_kill", build)
        return {k: v for k, v in build.items() if k != "since"}

    def follow_build(self, fault: str, build: dict) -> None:
        self.builds[fault] = build
        watch = threading.Thread(target=self._watch_build, args=(build,), daemon=True, name=f"build-{fault}")
        self.build_watches.append(watch)
        watch.start()

    def _watch_build(self, build: dict) -> None:
        """As a manager would: wait until the build is ready, or marked failed (by beat's sweep, once
        BATCH_BUILD_TIMEOUT has passed), then ask for a rebuild and wait until that is ready."""
        batch_id, killed_at = build["batch"], build["since"]
        deadline = killed_at + self.args.build_timeout + 300
        asked_rebuild = False
        with self.manager() as client:
            while time.monotonic() < deadline:
                time.sleep(1.0)
                try:
                    answer = client.get(f"/api/projects/{self.cast.project_id}/batches/{batch_id}/")
                except Exception:  # noqa: BLE001 - the outages come and go meanwhile; ask again
                    continue
                if answer.status_code != 200:
                    continue
                state = answer.json()["export_state"]
                if state == "failed" and not asked_rebuild:
                    build["failed_s"] = round(time.monotonic() - killed_at, 1)
                    build["error"] = answer.json()["export_error"]
                    with contextlib.suppress(Exception):
                        asked_rebuild = client.post(f"/api/projects/{self.cast.project_id}/batches/{batch_id}/"
                                                    "exports/").status_code == 202
                elif state == "ready":
                    exports = answer.json()["exports"]
                    names = [e["name"] for e in exports]
                    build.update(recovered_s=round(time.monotonic() - killed_at, 1), files=len(exports),
                                      files_unique=len(names) == len(set(names)), rebuilt=asked_rebuild)
                    return
        build["recovered_s"] = None

    # -- the whole sequence

    def run_faults(self) -> dict:
        args = self.args
        self.load.start()
        self.feed.start()
        time.sleep(args.warmup)
        self.check("warm-up")
        window = args.window
        self.fault("web_worker_kill", False, self.kill_web_workers, window)
        self.fault("claim_response_lost", False, self.lose_claim_responses, window)
        self.fault("feed_worker_kill", False, self.kill_feed_worker, window)
        self.fault("celery_worker_kill", False, self.kill_celery_worker, window)
        self.fault("postgres_restart", True, self.restart_postgres, window)
        self.fault("postgres_stop_5s", True, self.stop_postgres, window)
        self.fault("redis_restart", True, self.restart_redis, window)
        self.fault("redis_stop_5s", True, self.stop_redis, window)
        if self.build_watches:
            print(f"  waiting for the lost builds to be swept and rebuilt (BATCH_BUILD_TIMEOUT {args.build_timeout} s "
                  "from the worker's start)...")
            for watch in self.build_watches:
                watch.join()
        self.load.stop()
        self.feed.stop()
        return self.check("all faults")

    def result(self, final: dict) -> dict:
        summaries = {f.name: self.summarise(f) for f in self.faults}
        recovery = {name: s["recovery_s"] for name, s in summaries.items()}
        if "celery_worker_kill" in recovery:
            recovery["celery_worker_kill"] = self.builds.get("celery_worker_kill", {}).get("recovered_s")
        outage_failures = [r for f in self.faults if f.outage for r in self.load.requests
                           if f.injected_at <= r.t0 < f.window_end and (r.status is None or r.status >= 500)]
        server_errors = sum(s.get("server_errors", 0) for s in summaries.values())
        feed_errors = sum(s.get("feed_server_errors", 0) for s in summaries.values())
        worst = {key: max((c.get(key) or 0) for c in self.checks)
                 for key in ("lost", "duplicated", "over_read", "reader_twice", "orphan_slots", "release_lost")}
        return {
            "acknowledged": len(self.load.acked), "lost": worst["lost"], "duplicated": worst["duplicated"],
            "over_read": worst["over_read"], "recovery_s": recovery,
            "server_errors_during_outage": server_errors, "feed_server_errors_during_outage": feed_errors,
            "retry_after_present": (not server_errors) if outage_failures else None,
            "reader_twice": worst["reader_twice"], "orphan_slots": worst["orphan_slots"],
            "release_lost": worst["release_lost"], "double_handouts": self.load.double_handouts,
            "held_reads_unrecovered": final["held_unknown"],
            "held_reads_unrecovered_max": max(c["held_unknown"] for c in self.checks),
            "progress_equal": all(c["progress_equal"] for c in self.checks),
            "audit_verified": all(c["audit_verified"] for c in self.checks),
            "submitted_reads": final["submitted_reads"],
            "requests": len(self.load.requests),
            "failed_requests": sum(1 for r in self.load.requests if r.status is None or r.status >= 500),
            "refused": self.load.refused, "empty_claims": self.load.empty_claims,
            "feed": {"events": self.feed.events, "connects": self.feed.connects, "closes": len(self.feed.closes)},
            "batch_builds": {fault: {k: v for k, v in build.items() if k != "since"}
                             for fault, build in self.builds.items()},
            "faults": summaries,
        }


# --- the soak ---------------------------------------------------------------------------------------

def _slope(xs: list[float], ys: list[float]) -> float | None:
    if len(xs) < 2:
        return None
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    den = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / den if den else None


def run_soak(run: Run, minutes: float) -> dict:
    """Mixed load for ``minutes``, a batch delivered every sample; memory and p99 per sample."""
    args, load = run.args, run.load
    load.start()
    run.feed.start()
    started = time.monotonic()
    samples = []
    batches = []
    every = args.sample_s
    for i in range(1, max(1, round(minutes * 60 / every)) + 1):
        with run.manager() as client:
            tasks = run.consensus_tasks(2_000)
            if tasks:
                with contextlib.suppress(Exception):
                    batches.append(run.deliver_batch(client, tasks)["id"])
        time.sleep(max(0.0, started + i * every - time.monotonic()))
        t = time.monotonic()
        window = [r for r in load.requests if t - every <= r.t1 < t]
        latencies = sorted(r.t1 - r.t0 for r in window if r.kind in ("claim", "submit") and r.status == 200)
        server_pids = [p for s in run.services.values() for p in s.pids()]
        rss, pss = memory_kb(server_pids)
        row = {"minute": round((t - started) / 60, 2), "rss_mb": round(rss / 1024, 1), "pss_mb": round(pss / 1024, 1),
               "postgres_rss_mb": round(memory_kb(run.pg.pids())[0] / 1024, 1),
               "redis_rss_mb": round(memory_kb(run.redis.pids())[0] / 1024, 1),
               "processes": len(server_pids), "requests_per_s": round(len(window) / every, 1),
               "p50_ms": round(latencies[len(latencies) // 2] * 1000, 1) if latencies else None,
               "p99_ms": round(latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))] * 1000, 1)
               if latencies else None,
               "failed": sum(1 for r in window if r.status is None or r.status >= 500)}
        samples.append(row)
        print("  " + ", ".join(f"{k} {v}" for k, v in row.items()))
    final = run.check("soak")
    load.stop()
    run.feed.stop()
    half = samples[len(samples) // 2:]
    slope = _slope([s["minute"] for s in half], [s["rss_mb"] for s in half])
    ready = 0
    import psycopg2

    with contextlib.closing(psycopg2.connect(run.pg.url(DATABASE))) as conn, conn.cursor() as cur:
        cur.execute("SELECT export_state, count(*) FROM tasks_batch GROUP BY export_state")
        built = dict(cur.fetchall())
        ready = built.get("ready", 0)
    return {"final": final, "soak": {
        "minutes": round((time.monotonic() - started) / 60, 1), "samples": samples,
        "rss_slope_mb_per_min_second_half": None if slope is None else round(slope, 2),
        "memory_flat": None if slope is None else slope < args.max_growth, "max_growth_mb_per_min": args.max_growth,
        "p99_ms_max": max((s["p99_ms"] for s in samples if s["p99_ms"] is not None), default=None),
        "batches_delivered": len(batches), "batches_built": ready, "batch_states": built}}


def write_soak(soak: dict, plot: Path | None, table: Path | None) -> None:
    samples = soak["samples"]
    lines = ["| minute | RSS MB | PSS MB | PostgreSQL RSS MB | Redis RSS MB | requests/s | p50 ms | p99 ms | failed |",
             "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    lines += [f"| {s['minute']} | {s['rss_mb']} | {s['pss_mb']} | {s['postgres_rss_mb']} | {s['redis_rss_mb']} | "
              f"{s['requests_per_s']} | {s['p50_ms']} | {s['p99_ms']} | {s['failed']} |" for s in samples]
    text = "\n".join(lines) + "\n"
    print(text)
    if table is not None:
        table.write_text(text)
    if plot is None:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    minutes = [s["minute"] for s in samples]
    fig, (mem, lat) = plt.subplots(2, 1, figsize=(7, 5), sharex=True, dpi=80)
    mem.plot(minutes, [s["rss_mb"] for s in samples], marker="o", label="radqueue processes, RSS")
    mem.plot(minutes, [s["pss_mb"] for s in samples], marker="o", label="radqueue processes, PSS")
    mem.plot(minutes, [s["postgres_rss_mb"] for s in samples], marker=".", label="PostgreSQL, RSS")
    mem.set_ylabel("MB")
    mem.set_ylim(bottom=0)
    mem.legend(fontsize=8)
    mem.set_title(f"Soak: {soak['minutes']} min of mixed load; RSS slope over the second half "
                  f"{soak['rss_slope_mb_per_min_second_half']} MB/min", fontsize=9)
    lat.plot(minutes, [s["p99_ms"] for s in samples], marker="o", color="tab:red", label="p99 (claim, submit)")
    lat.plot(minutes, [s["p50_ms"] for s in samples], marker=".", color="tab:gray", label="p50")
    lat.set_ylabel("ms")
    lat.set_xlabel("minute")
    lat.set_ylim(bottom=0)
    lat.legend(fontsize=8)
    fig.tight_layout()
    plot.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(plot)
    plt.close(fig)
    print(f"plot written to {plot}")


# --- main -------------------------------------------------------------------------------------------

def commit() -> str:
    out = subprocess.run(["git", "-C", str(ROOT), "describe", "--always", "--dirty"], capture_output=True, text=True,
                         check=False)
    return out.stdout.strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n\n".join(__doc__.split("\n\n")[2:]))
    parser.add_argument("--quick", action="store_true", help="Smaller and shorter: a few minutes in all.")
    parser.add_argument("--soak", type=float, metavar="MINUTES", help="Run the mixed-load soak instead of faults.")
    parser.add_argument("--tasks", type=int, help="Tasks to seed (default: 6,000 quick, 20,000 full; the soak "
                                                  "enough for its minutes).")
    parser.add_argument("--k", type=int, default=3, choices=(1, 2, 3), help="Reads per task (default 3).")
    parser.add_argument("--readers", type=int, default=6, help="Reader threads (default 6).")
    parser.add_argument("--think", type=float, default=0.05, help="Seconds each reader pauses between reads.")
    parser.add_argument("--release-share", type=float, default=0.05, help="Share of claims released (0.05).")
    parser.add_argument("--heartbeat-share", type=float, default=0.2, help="Share of claims heartbeated first.")
    parser.add_argument("--window", type=float, help="Seconds of load after each fault (10 quick, 30 full).")
    parser.add_argument("--warmup", type=float, help="Seconds of load before the first fault (6 quick, 20 full).")
    parser.add_argument("--web-kills", type=int, default=3, help="gunicorn workers killed, one a second (3).")
    parser.add_argument("--kill-delay", type=float, default=1.0,
                        help="Seconds between the worker taking the build and its kill -9.")
    parser.add_argument("--build-timeout", type=int, help="BATCH_BUILD_TIMEOUT for the run (150 quick, 600 full).")
    parser.add_argument("--sample-s", type=float, default=60, help="Soak: seconds between samples (60).")
    parser.add_argument("--max-growth", type=float, default=1.0,
                        help="Soak: the most MB per minute the processes' RSS may grow over the second half (1.0).")
    parser.add_argument("--plot", type=Path, help="Soak: where to write the PNG plot.")
    parser.add_argument("--table", type=Path, help="Soak: where to write the markdown table.")
    parser.add_argument("--seed", type=int, default=18)
    parser.add_argument("--keep", action="store_true", help="Keep the temporary directory (logs, data).")
    args = parser.parse_args()
    args.window = args.window or (10 if args.quick else 30)
    args.warmup = args.warmup or (6 if args.quick else 20)
    args.build_timeout = args.build_timeout or (150 if args.quick else 600)
    if args.tasks is None:
        if args.soak:
            # Enough for the readers at full pace: a cycle is a claim, a submit and the pause.
            reads = args.readers * args.soak * 60 / (args.think + 0.04)
            args.tasks = min(300_000, math.ceil(reads / args.k * 1.2))
        else:
            args.tasks = 6_000 if args.quick else 20_000
    if args.soak and args.plot is None:
        args.plot = ROOT / "docs" / "img" / "soak.png"

    root = Path(tempfile.mkdtemp(prefix="radqueue-faults-"))
    root.chmod(0o755)  # PostgreSQL's user must reach its directories inside
    load = os.getloadavg()
    print(f"radqueue {commit()}; {os.cpu_count()} CPUs, load average before the run {load[0]:.2f} {load[1]:.2f} "
          f"{load[2]:.2f}; in {root}")
    run = Run(args, root)
    started = time.monotonic()
    try:
        run.setup(args.tasks)
        if args.soak:
            outcome = run_soak(run, args.soak)
            final, soak = outcome["final"], outcome["soak"]
            write_soak(soak, args.plot, args.table)
            result = {"acknowledged": len(run.load.acked), "lost": final["lost"], "duplicated": final["duplicated"],
                      "over_read": final["over_read"], "recovery_s": {}, "server_errors_during_outage": 0,
                      "retry_after_present": None, "reader_twice": final["reader_twice"],
                      "orphan_slots": final["orphan_slots"], "held_reads_unrecovered": final["held_unknown"],
                      "progress_equal": final["progress_equal"], "audit_verified": final["audit_verified"],
                      "soak": soak}
            broken = [k for k in ("lost", "duplicated", "over_read", "reader_twice", "orphan_slots") if result[k]]
            broken += [k for k in ("progress_equal", "audit_verified") if not result[k]]
            if soak["memory_flat"] is False:
                broken.append("memory grows")
        else:
            final = run.run_faults()
            result = run.result(final)
            broken = [k for k in ("lost", "duplicated", "over_read", "reader_twice", "orphan_slots", "release_lost",
                                  "double_handouts", "held_reads_unrecovered", "server_errors_during_outage")
                      if result[k]]
            broken += [k for k in ("progress_equal", "audit_verified") if not result[k]]
            if result["retry_after_present"] is False:
                broken.append("retry_after_present")
            broken += [f"{fault}: batch build not recovered" for fault, build in result["batch_builds"].items()
                       if not build.get("recovered_s")]
    except BaseException:
        for service in run.services.values():
            if service.log.exists():
                print(f"--- {service.name}, last lines:\n{service.log.read_text(errors='replace')[-2000:]}")
        raise
    finally:
        run.teardown()
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    result.update(commit=commit(), quick=args.quick, tasks=args.tasks, k=args.k, readers=args.readers,
                  seconds=round(time.monotonic() - started), load_average_after=round(os.getloadavg()[0], 2))
    if broken:
        print(f"PROMISES NOT KEPT: {', '.join(broken)}")
    print_result(result)
    if broken:
        sys.exit(1)


if __name__ == "__main__":
    main()
