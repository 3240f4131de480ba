"""Claim benchmark: readers claiming and submitting over real HTTP against a multi-worker server,
next to the raw SQL claim rate of the same statement on the same database.

    .venv/bin/python bench/claims.py [--quick] [--audit-overhead] [--profile N]

Uses DATABASE_URL (default postgres://postgres@127.0.0.1:5432/radqueue_bench_claims; created if
missing, migrated on every run). The database name must contain "bench": each run empties the
queue, study and audit tables. One run, one database, in this order:

1. Seed: 1,000,000 tasks with k = 2 (--quick: 20,000), i.e. 2,000,000 queue slots, one project,
   one protocol version, 32 annotators with memberships (object permissions) and knox tokens.
   Rows go in with INSERT ... SELECT generate_series, then VACUUM ANALYZE.
2. Raw SQL: pgbench, 8 connections, drives the claim statement of tasks.queue._claim_postgresql
   (built by that very function for one reader's eligibility; the reader id and the clock become
   pgbench's :reader and now()) inside the app's transaction: BEGIN; pg_advisory_xact_lock;
   claim; COMMIT. Simple query protocol, as psycopg2 sends it. For context also the bare
   UPDATE ... WHERE id = (SELECT ... FOR UPDATE SKIP LOCKED LIMIT 1), one per transaction.
   The queue is reset to fresh after each (the freed slots, reads and task states).
3. HTTP: `uvicorn core.asgi:application --workers 2` (DEBUG=0, persistent DB connections
   allowed), 8 and then 32 closed-loop virtual readers, one keep-alive HTTP/1.1 connection
   each, each its own user: POST /api/queue/next/, then POST /api/reads/{id}/submit/ with
   {"findings": []}; again. Warm-up excluded; a reader that is told to stop finishes its submit.
   The load generator is a minimal asyncio HTTP/1.1 client on uvloop in this process (httpx or
   aiohttp would take several times the CPU per request from the two cores the server needs);
   its own CPU share is printed. Latency is per claim request: from writing the request to the
   whole response read, on the client.
4. --audit-overhead: 8 readers against a second server started with AUDIT_ENABLED=0 and the
   first (AUDIT_ENABLED=1), alternating off/on twice each to cancel drift; overhead is
   (off - on) / off over the mean claims/s of each mode.

Exactness, read back from the database after every HTTP phase (all must be 0, and the run fails
otherwise): double handouts (a read id returned to two claims or to a reader who does not hold it
in the database; a reader with two live reads of a task; a claimed read whose slot has been handed
to another read); over-read tasks (more live reads than reads_required, or more submitted than
required); lost submissions (a submit acknowledged with 200 whose read is not 'submitted').

--profile N: cProfile of N claim requests through DRF's test client in this process (token auth,
all middleware), top functions printed. The SQL statements one claim request makes are always
printed. Human-readable lines first, then one JSON line with the results.
"""

import argparse
import asyncio
import base64
import gc
import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from unittest import mock

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import ROOT, print_result, setup_django, use_bench_database  # noqa: E402

READERS = 32
READ_LOCK = 7301  # tasks.queue's advisory lock class for one reader's claims
STUDY_UID = "1.2.826.0.1.3680043.8.498.{}"
QUEUE_TABLES = ("tasks_queueslot", "tasks_read", "tasks_task", "core_study")


# --- the database ----------------------------------------------------------------------------

def prepare() -> tuple:
    """Empty the tables, (re)create the project, its protocol version and the readers; their tokens."""
    from django.db import connection, transaction
    from knox.models import AuthToken

    from audit.models import AuditAnchor, AuditChainHead
    from audit.trail import GENESIS, SHARD_COUNT
    from core.memberships import grant_membership
    from core.models import Organization, Project, User
    from core.protocols import create_protocol_version

    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("TRUNCATE tasks_queueslot, tasks_read, tasks_task, core_instance, core_series, core_study "
                       "RESTART IDENTITY CASCADE")
        # The bench's own database: open the audit trail's truncate door for this transaction only.
        cursor.execute("SET LOCAL radqueue.audit_allow_truncate = 'on'")
        cursor.execute("TRUNCATE audit_auditevent RESTART IDENTITY")
        AuditAnchor.objects.all().delete()
        AuditChainHead.objects.all().delete()
        AuditChainHead.objects.bulk_create([AuditChainHead(shard=s, seq=0, hash=GENESIS) for s in range(SHARD_COUNT)])
    vendor, _ = Organization.objects.get_or_create(name="Bench vendor", defaults={"kind": "vendor"})
    client, _ = Organization.objects.get_or_create(name="Bench client", defaults={"kind": "client"})
    project, _ = Project.objects.get_or_create(name="Claims bench", client=client,
                                               defaults={"vendor": vendor, "modalities": ["CT"]})
    Project.objects.filter(pk=project.pk).update(reads_per_task=2, max_open_reads=1000, lease_seconds=1800,
                                                 gold_rate=0, requires_calibration=False, is_active=True)
    version = project.current_protocol_version() or create_protocol_version(
        project=project, name="Claims bench", template="generic_findings")
    readers, tokens = [], []
    for i in range(READERS):
        user, _ = User.objects.get_or_create(username=f"bench-claims-reader-{i:02d}",
                                             defaults={"organization": vendor})
        grant_membership(project=project, user=user, role="annotator")
        AuthToken.objects.filter(user=user).delete()
        tokens.append(AuthToken.objects.create(user)[1])
        readers.append(user)
    return project, version, readers, tokens


def seed(project, version, tasks: int) -> None:
    """``tasks`` studies, one production task each with two slots, as tasks.creation lays them out."""
    from django.db import connection

    from core.protocols import mark_protocol_version_used

    with connection.cursor() as cursor:
        cursor.execute("SET synchronous_commit = off")
        cursor.execute("""
            INSERT INTO core_study (project_id, study_uid, patient_pseudonym, patient_age_years, study_date,
                                    description, modalities, body_parts, series_count, instance_count,
                                    created_at, updated_at)
            SELECT %s, %s || g, 'PSEUDO-' || g, NULL, '', '', '["CT"]', '[]', 0, 0, now(), now()
            FROM generate_series(1, %s) AS g""", [project.pk, STUDY_UID.format(""), tasks])
        cursor.execute("""
            INSERT INTO tasks_task (project_id, protocol_version_id, study_id, series_id, kind, state, flag_reason,
                                    reads_required, reads_submitted, first_read_tier, first_read_subspecialty,
                                    adjudication_tier, adjudication_subspecialty, priority, client_priority,
                                    created_by_id, created_at, updated_at, completed_at)
            SELECT project_id, %s, id, NULL, 'production', 'queued', '', 2, 0, 1, '', 2, '', 0, 0, NULL,
                   now(), now(), NULL
            FROM core_study WHERE project_id = %s ORDER BY id""", [version.pk, project.pk])
        # A task's k slots are adjacent in id order, as tasks.creation.create_tasks makes them.
        cursor.execute("""
            INSERT INTO tasks_queueslot (project_id, task_id, priority, tier, subspecialty)
            SELECT t.project_id, t.id, 0, 1, '' FROM tasks_task t, generate_series(1, 2)
            WHERE t.project_id = %s ORDER BY t.id""", [project.pk])
        cursor.execute("SET synchronous_commit = on")
    mark_protocol_version_used(version)
    vacuum()


def vacuum() -> None:
    from django.db import connection

    with connection.cursor() as cursor:
        for table in (*QUEUE_TABLES, "tasks_consensus", "tasks_adjudication", "audit_auditevent"):
            cursor.execute(f"VACUUM ANALYZE {table}")


def reset_queue(project) -> None:
    """Back to a fresh queue: every slot free, no reads, every task queued, no audit events.

    Slots deleted by submits come back at the end of the queue (new ids); leased ones are freed
    where they are, so the head of the queue is where it was.
    """
    from django.db import connection, transaction

    from audit.models import AuditChainHead
    from audit.trail import GENESIS

    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SET LOCAL synchronous_commit = off")
        cursor.execute("UPDATE tasks_queueslot SET reader_id = NULL, read_id = NULL, lease_expires_at = NULL "
                       "WHERE reader_id IS NOT NULL OR read_id IS NOT NULL")
        cursor.execute("DELETE FROM tasks_consensus")
        cursor.execute("DELETE FROM tasks_adjudication")
        cursor.execute("DELETE FROM tasks_read")
        cursor.execute("""
            INSERT INTO tasks_queueslot (project_id, task_id, priority, tier, subspecialty)
            SELECT t.project_id, t.id, 0, 1, '' FROM tasks_task t
            CROSS JOIN LATERAL generate_series(1, t.reads_required - (
                SELECT count(*) FROM tasks_queueslot s WHERE s.task_id = t.id)::int)
            WHERE t.project_id = %s AND t.state <> 'queued' ORDER BY t.id""", [project.pk])
        cursor.execute("UPDATE tasks_task SET state = 'queued', reads_submitted = 0, completed_at = NULL "
                       "WHERE project_id = %s AND state <> 'queued'", [project.pk])
        cursor.execute("SET LOCAL radqueue.audit_allow_truncate = 'on'")
        cursor.execute("TRUNCATE audit_auditevent")
        AuditChainHead.objects.update(seq=0, hash=GENESIS)
    vacuum()


def exactness(project, handed: dict[int, int], acked: set[int]) -> dict:
    """What the database says after a phase; ``handed`` maps each claimed read id to its reader's
    id (a duplicate claim is recorded as -1), ``acked`` holds the read ids whose submit got 200."""
    from django.db import connection

    duplicates = sum(1 for reader in handed.values() if reader == -1)
    with connection.cursor() as cursor:
        cursor.execute("CREATE TEMP TABLE IF NOT EXISTS bench_handed (read_id bigint, reader_id bigint)")
        cursor.execute("TRUNCATE bench_handed")
        if handed:
            cursor.execute("INSERT INTO bench_handed SELECT * FROM unnest(%s::bigint[], %s::bigint[])",
                           [list(handed), list(handed.values())])
        cursor.execute("""SELECT count(*) FROM bench_handed h LEFT JOIN tasks_read r ON r.id = h.read_id
                          WHERE h.reader_id <> -1 AND r.reader_id IS DISTINCT FROM h.reader_id""")
        wrong_reader = cursor.fetchone()[0]
        cursor.execute("""SELECT count(*) FROM (SELECT 1 FROM tasks_read WHERE project_id = %s
                          AND state IN ('claimed', 'submitted') GROUP BY task_id, reader_id HAVING count(*) > 1) x""",
                       [project.pk])
        twice = cursor.fetchone()[0]
        cursor.execute("""SELECT count(*) FROM tasks_read r WHERE r.project_id = %s AND r.state = 'claimed'
                          AND NOT r.is_check AND NOT EXISTS (SELECT 1 FROM tasks_queueslot s
                          WHERE s.read_id = r.id AND s.reader_id = r.reader_id)""", [project.pk])
        slot_lost = cursor.fetchone()[0]
        cursor.execute("""SELECT count(*) FROM tasks_task t JOIN (
                              SELECT task_id, count(*) AS live, count(*) FILTER (WHERE state = 'submitted') AS done
                              FROM tasks_read WHERE project_id = %s AND state IN ('claimed', 'submitted')
                              GROUP BY task_id) r ON r.task_id = t.id
                          WHERE r.live > t.reads_required OR r.done > t.reads_required
                             OR t.reads_submitted <> r.done""", [project.pk])
        over_read = cursor.fetchone()[0]
        cursor.execute("CREATE TEMP TABLE IF NOT EXISTS bench_acked (read_id bigint)")
        cursor.execute("TRUNCATE bench_acked")
        if acked:
            cursor.execute("INSERT INTO bench_acked SELECT unnest(%s::bigint[])", [list(acked)])
        cursor.execute("""SELECT count(*) FROM bench_acked a LEFT JOIN tasks_read r ON r.id = a.read_id
                          WHERE r.state IS DISTINCT FROM 'submitted'""")
        lost = cursor.fetchone()[0]
    return {"double_handouts": duplicates + wrong_reader + twice + slot_lost, "over_read_tasks": over_read,
            "lost_submissions": lost}


# --- raw SQL with pgbench ----------------------------------------------------------------------

def _statement_and_args(rules, leases, reader, now) -> tuple[str, list]:
    """tasks.queue's claim statement and arguments, without running it."""
    from tasks import queue

    if hasattr(queue, "claim_statement"):
        return queue.claim_statement(reader, rules, leases, now)

    class Capture:  # an older tasks.queue builds and runs it in one function: catch it in flight
        vendor = "postgresql"
        sql, args = "", []

        def cursor(self):
            return self

        def __enter__(self):
            return self

        def __exit__(self, *exc) -> None:
            return None

        def execute(self, sql, args) -> None:
            self.sql, self.args = sql, list(args)

        def fetchone(self) -> None:
            return None

    capture = Capture()
    with mock.patch.object(queue, "connection", capture):
        queue._claim_postgresql(SimpleNamespace(pk=reader), rules, leases, now)
    return capture.sql, capture.args


def claim_statement(project, reader) -> str:
    """tasks.queue's claim statement for ``reader``'s eligibility, with :reader and now() for pgbench."""
    from django.db import connection
    from django.utils import timezone

    from core.models import Project
    from tasks.routing import eligibility

    rules = eligibility(reader, Project.objects.filter(pk=project.pk))
    assert len(rules) == 1, rules
    leases = {r.project_id: r.lease_seconds for r in rules}
    stand_in_reader, stand_in_now = object(), timezone.now()
    sql, args = _statement_and_args(rules, leases, stand_in_reader, stand_in_now)
    pieces = sql.split("%s")
    assert len(pieces) == len(args) + 1 and "%" not in "".join(pieces), "unexpected placeholders"
    text = pieces[0]
    with connection.cursor() as cursor:
        for arg, piece in zip(args, pieces[1:], strict=True):
            if arg is stand_in_reader:
                value = ":reader"
            elif arg is stand_in_now:
                value = "now()"
            else:
                value = cursor.mogrify("%s", [arg]).decode()
            text += value + piece
    return text.strip()


def bare_statement(project) -> str:
    return (f"UPDATE tasks_queueslot SET reader_id = :reader, lease_expires_at = now() + interval '30 minutes'\n"
            f"WHERE id = (SELECT id FROM tasks_queueslot WHERE project_id = {int(project.pk)} AND tier = 1\n"
            f"            AND reader_id IS NULL ORDER BY priority DESC, id LIMIT 1 FOR UPDATE SKIP LOCKED)")


def pgbench(script: str, first_reader: int, clients: int, seconds: float) -> tuple[float, int]:
    """(transactions per second without connection time, transactions) of ``script`` on ``clients``
    connections; client n is reader ``first_reader + n``."""
    body = f"\\set reader {first_reader} + :client_id\n{script}\n"
    with tempfile.NamedTemporaryFile("w", suffix=".sql", prefix="claims-") as f:
        f.write(body)
        f.flush()
        out = subprocess.run(["pgbench", "-n", "-M", "simple", "-c", str(clients), "-j", "2",
                              "-T", str(max(1, round(seconds))), "-f", f.name, os.environ["DATABASE_URL"]],
                             capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"pgbench failed: {out.stderr.strip()[-2000:]}")
    tps = re.search(r"tps = ([\d.]+) \(without initial connection time\)", out.stdout)
    done = re.search(r"number of transactions actually processed: (\d+)", out.stdout)
    failed = re.search(r"number of failed transactions: (\d+)", out.stdout)
    if tps is None or done is None:
        raise RuntimeError(f"cannot read pgbench's output:\n{out.stdout}")
    if failed and int(failed.group(1)):
        raise RuntimeError(f"pgbench: {failed.group(0)}")
    return float(tps.group(1)), int(done.group(1))


def raw_sql_rates(project, readers, clients: int, seconds: float) -> tuple[float, float]:
    """Claims/s of the app's claim statement (in the app's transaction) and of the bare statement."""
    from tasks.models import QueueSlot, Read

    claim = claim_statement(project, readers[0])
    app_script = f"BEGIN;\nSELECT pg_advisory_xact_lock({READ_LOCK}, :reader);\n{claim};\nCOMMIT;"
    rate, done = pgbench(app_script, readers[0].pk, clients, seconds)
    reads = Read.objects.count()
    # Every transaction must have claimed a slot (an empty queue would count as a fast claim).
    assert reads == done, f"pgbench ran {done} transactions but {reads} reads exist (queue ran dry?)"
    print(f"  claim statement (tasks.queue), {clients} connections: {rate:8.0f} claims/s ({done} in {seconds:.0f} s)")
    reset_queue(project)
    bare, done = pgbench(bare_statement(project) + ";", readers[0].pk, clients, seconds)
    leased = QueueSlot.objects.filter(reader__isnull=False).count()
    assert leased == done, f"pgbench ran {done} transactions but {leased} slots are leased"
    print(f"  bare UPDATE ... SKIP LOCKED,       {clients} connections: {bare:8.0f} claims/s "
          f"({done} in {seconds:.0f} s)")
    reset_queue(project)
    return rate, bare


# --- the server ------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def running_server(audit: bool, interface: str = "asgi", workers: int = 2):
    """uvicorn with ``workers`` processes on a free port, serving core.asgi (or core.wsgi); yields the port."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "DJANGO_SETTINGS_MODULE")}
    env.update(
        DJANGO_SETTINGS_MODULE="core.settings", DEBUG="0", SECRET_KEY=secrets.token_urlsafe(64),
        ALLOWED_HOSTS="127.0.0.1", RADQUEUE_STORAGE_KEY="k1:" + base64.b64encode(os.urandom(32)).decode(),
        SECURE_SSL_REDIRECT="0", DB_CONN_MAX_AGE="600", AUDIT_ENABLED="1" if audit else "0", LOG_LEVEL="WARNING",
    )
    command = [sys.executable, "-m", "uvicorn", f"core.{interface}:application",
               "--interface", "asgi3" if interface == "asgi" else interface,
               "--workers", str(workers),
               "--host", "127.0.0.1", "--port", str(port), "--no-access-log", "--log-level", "warning"]
    process = subprocess.Popen(command, cwd=ROOT, env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"uvicorn did not come up (exit code {process.poll()})")
            time.sleep(0.2)
        yield port
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


# --- the load generator ------------------------------------------------------------------------

@dataclass
class Phase:
    clients: int
    started: float = 0.0
    stopped: float = 0.0
    claim_latencies: list[float] = field(default_factory=list)
    submits: int = 0
    empty: int = 0
    errors: list[str] = field(default_factory=list)
    handed: dict[int, int] = field(default_factory=dict)
    acked: set[int] = field(default_factory=set)
    cpu_s: float = 0.0

    @property
    def seconds(self) -> float:
        return self.stopped - self.started

    def percentile(self, q: float) -> float:
        ordered = sorted(self.claim_latencies)
        return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))] * 1000 if ordered else float("nan")


class HttpConnection:
    """One keep-alive HTTP/1.1 connection: just enough protocol for POSTing JSON to uvicorn."""

    def __init__(self, port: int, token: str) -> None:
        self.port, self.token = port, token
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def open(self) -> None:
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        self.writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    async def post(self, path: str, body: bytes) -> tuple[int, bytes]:
        head = (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\nAuthorization: Token {self.token}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode()
        self.writer.write(head + body)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        length = re.search(rb"(?i)\r\ncontent-length: *(\d+)", head)
        if length is not None:
            return status, await self.reader.readexactly(int(length.group(1)))
        if re.search(rb"(?i)\r\ntransfer-encoding: *chunked", head):
            chunks = []
            while size := int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16):
                chunks.append(await self.reader.readexactly(size))
                await self.reader.readexactly(2)
            await self.reader.readuntil(b"\r\n")
            return status, b"".join(chunks)
        return status, b""

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


async def virtual_reader(phase: Phase, port: int, token: str, reader_id: int, stop: asyncio.Event) -> None:
    connection = HttpConnection(port, token)
    await connection.open()
    clock = time.perf_counter
    try:
        while not stop.is_set():
            t0 = clock()
            status, body = await connection.post("/api/queue/next/", b"{}")
            t1 = clock()
            measured = phase.started <= t1 <= phase.stopped
            if status == 204:
                phase.empty += 1
                await asyncio.sleep(0.01)
                continue
            if status != 200:
                phase.errors.append(f"claim {status}: {body[:200]!r}")
                continue
            read = json.loads(body)["read"]
            phase.handed[read] = -1 if read in phase.handed else reader_id
            if measured:
                phase.claim_latencies.append(t1 - t0)
            status, body = await connection.post(f"/api/reads/{read}/submit/", b'{"findings": []}')
            if status != 200:
                phase.errors.append(f"submit {status}: {body[:200]!r}")
                continue
            phase.acked.add(read)
            if phase.started <= clock() <= phase.stopped:
                phase.submits += 1
    finally:
        connection.close()


async def drive(port: int, tokens: list[str], reader_ids: list[int], clients: int, warmup_s: float,
                seconds: float) -> Phase:
    phase = Phase(clients)
    stop = asyncio.Event()
    now = time.perf_counter()
    phase.started, phase.stopped = now + warmup_s, now + warmup_s + seconds
    readers = [asyncio.create_task(virtual_reader(phase, port, tokens[i], reader_ids[i], stop))
               for i in range(clients)]
    await asyncio.sleep(warmup_s)
    cpu = time.process_time()
    await asyncio.sleep(phase.stopped - time.perf_counter())
    phase.cpu_s = time.process_time() - cpu
    stop.set()
    await asyncio.gather(*readers)
    return phase


def run_phase(port: int, tokens, readers, clients: int, warmup_s: float, seconds: float, project,
              label: str) -> Phase:
    import uvloop

    gc.collect()
    gc.freeze()  # Django's objects stay out of the load generator's collections
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        phase = runner.run(drive(port, tokens, [r.pk for r in readers], clients, warmup_s, seconds))
    gc.unfreeze()
    claims = len(phase.claim_latencies)
    checks = exactness(project, phase.handed, phase.acked)
    print(f"  {label}: {claims / phase.seconds:7.1f} claims/s, {phase.submits / phase.seconds:7.1f} submits/s; "
          f"claim latency p50 {phase.percentile(50):.1f} ms, p95 {phase.percentile(95):.1f} ms, "
          f"p99 {phase.percentile(99):.1f} ms; load generator CPU {phase.cpu_s / phase.seconds:.0%} of a core; "
          f"{phase.empty} empty, {len(phase.errors)} errors; exactness {checks}")
    for error in phase.errors[:5]:
        print(f"    {error}")
    phase.checks = checks
    return phase


# --- in-process: SQL per claim, profile ---------------------------------------------------------

def claim_requests(tokens, count: int):
    from rest_framework.test import APIClient

    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {tokens[0]}")

    def claim_and_submit() -> None:
        answer = client.post("/api/queue/next/", {}, format="json")
        assert answer.status_code == 200, answer.status_code
        submitted = client.post(f"/api/reads/{answer.json()['read']}/submit/", {"findings": []}, format="json")
        assert submitted.status_code == 200, submitted.status_code

    return client, claim_and_submit


def statements_per_claim(tokens) -> tuple[int, int, list[str]]:
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    client, claim_and_submit = claim_requests(tokens, 1)
    claim_and_submit()  # warm caches as a running server's would be
    with CaptureQueriesContext(connection) as claim:
        answer = client.post("/api/queue/next/", {}, format="json")
    with CaptureQueriesContext(connection) as submit:
        client.post(f"/api/reads/{answer.json()['read']}/submit/", {"findings": []}, format="json")
    return len(claim.captured_queries), len(submit.captured_queries), [q["sql"] for q in claim.captured_queries]


def profile_claims(tokens, count: int) -> None:
    import cProfile
    import pstats

    from rest_framework.test import APIClient

    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {tokens[1]}")
    profiler = cProfile.Profile()
    started = time.perf_counter()
    for _ in range(count):
        profiler.enable()
        answer = client.post("/api/queue/next/", {}, format="json")
        profiler.disable()
        client.post(f"/api/reads/{answer.json()['read']}/submit/", {"findings": []}, format="json")
    print(f"  {count} claims through DRF's test client, one thread: {time.perf_counter() - started:.1f} s with "
          "their submits")
    stats = pstats.Stats(profiler)
    stats.sort_stats("cumulative").print_stats(45)
    stats.sort_stats("tottime").print_stats(25)


# --- main ------------------------------------------------------------------------------------

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="20,000 tasks, 8 readers, under a minute.")
    parser.add_argument("--audit-overhead", action="store_true", help="Claims/s with the audit trail on vs off.")
    parser.add_argument("--profile", type=int, metavar="N", default=0,
                        help="Profile N claim requests in this process (DRF test client) after the run.")
    args = parser.parse_args()
    if args.quick:
        tasks, raw_s, warmup_s, phase_s, phase32_s, audit_s, audit_rounds = 20_000, 3, 1.5, 6, 4, 3, 2
    else:
        tasks, raw_s, warmup_s, phase_s, phase32_s, audit_s, audit_rounds = 1_000_000, 10, 2, 20, 15, 10, 2

    name = use_bench_database("radqueue_bench_claims")
    setup_django()
    from django.db import connection

    load = os.getloadavg()
    print(f"database {name} on PostgreSQL {connection.pg_version}, {os.cpu_count()} CPUs, "
          f"load average before the run {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    started = time.perf_counter()
    project, version, readers, tokens = prepare()
    seed(project, version, tasks)
    print(f"seeded {tasks} tasks (k = 2, {2 * tasks} slots) and {READERS} readers in "
          f"{time.perf_counter() - started:.1f} s")

    claim_sql, submit_sql, _ = statements_per_claim(tokens)
    print(f"SQL statements per request (in-process, token auth, all middleware): claim {claim_sql}, "
          f"submit {submit_sql}")
    reset_queue(project)

    print("raw SQL (pgbench):")
    raw, bare = raw_sql_rates(project, readers, 8, raw_s)

    result = {"tasks": tasks}
    print("HTTP (uvicorn core.asgi, 2 workers; audit on):")
    with running_server(audit=True) as port:
        eight = run_phase(port, tokens, readers, 8, warmup_s, phase_s, project, "8 readers")
        if args.quick:
            many = None
        else:
            many = run_phase(port, tokens, readers, 32, warmup_s, phase32_s, project, "32 readers")
        claims = len(eight.claim_latencies) / eight.seconds
        result.update(
            claims_per_s=round(claims, 1), submits_per_s=round(eight.submits / eight.seconds, 1),
            p50_ms=round(eight.percentile(50), 1), p95_ms=round(eight.percentile(95), 1),
            p99_ms=round(eight.percentile(99), 1), **eight.checks,
            raw_sql_claims_per_s=round(raw, 1), raw_bare_claims_per_s=round(bare, 1),
            ratio_to_raw=round(claims / raw, 3),
            claims_per_s_32=round(len(many.claim_latencies) / many.seconds, 1) if many else None,
            p50_ms_32=round(many.percentile(50), 1) if many else None,
            p99_ms_32=round(many.percentile(99), 1) if many else None,
        )
        phases = [eight, *([many] if many else [])]
        if args.audit_overhead:
            with running_server(audit=False) as off_port:
                rates = {False: [], True: []}
                for _ in range(audit_rounds):
                    for audit in (False, True):
                        phase = run_phase(off_port if not audit else port, tokens, readers, 8, warmup_s / 2,
                                          audit_s, project, f"8 readers, audit {'on ' if audit else 'off'}")
                        rates[audit].append(len(phase.claim_latencies) / phase.seconds)
                        phases.append(phase)
            off, on = (sum(rates[m]) / len(rates[m]) for m in (False, True))
            result.update(claims_per_s_audit_off=round(off, 1), claims_per_s_audit_on=round(on, 1),
                          audit_overhead_pct=round((off - on) / off * 100, 2))
            print(f"  audit overhead: {result['audit_overhead_pct']:.1f} %")
    print(f"ratio to raw SQL: {result['ratio_to_raw']:.3f}; whole run {time.perf_counter() - started:.0f} s; "
          f"load average now {os.getloadavg()[0]:.2f}")
    if args.profile:
        reset_queue(project)
        profile_claims(tokens, args.profile)
    for phase in phases:
        assert not any(phase.checks.values()), f"exactness violated: {phase.checks}"
        assert not phase.errors, f"{len(phase.errors)} failed requests, first: {phase.errors[0]}"
    print_result(result)


if __name__ == "__main__":
    main()
