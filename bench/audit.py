"""Audit trail benchmark on PostgreSQL: claim overhead, concurrent writers, verification speed.

    .venv/bin/python bench/audit.py [--quick]

Uses DATABASE_URL (default postgres://postgres@127.0.0.1:5432/radqueue_bench; created if missing,
migrated on every run). The database name must contain "bench": each run empties its audit
tables so runs are comparable. Measures, in one run on one database:

(a) a claim-like write transaction (lock one row of a small queue with SELECT ... FOR UPDATE
    SKIP LOCKED, UPDATE it, INSERT a log row) per second from 8 threads, with the audit event
    recorded in the same transaction and with AUDIT_ENABLED off; phases alternate to cancel drift;
(b) events per second written by 32 threads, one transaction per event;
(c) audit_verify's time, scaled to one million events, after bulk-inserting valid chained rows.

Human-readable lines first, then one JSON line with the results.
"""

import argparse
import json
import os
import sys
import threading
import time
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import bench_organizations, reset_audit_trail, setup_django, use_bench_database  # noqa: E402

QUEUE_ROWS = 64
STUDY_UID = "1.2.826.0.1.3680043.8.498.{}"


def prepare(name: str):
    """Migrate, empty the audit tables, create the bench queue and a reader with a membership."""
    from django.core.management import call_command
    from django.db import connection, transaction

    from core.models import Membership, Project, User

    call_command("migrate", verbosity=0)
    with transaction.atomic(), connection.cursor() as cursor:
        reset_audit_trail(cursor)
        cursor.execute("DROP TABLE IF EXISTS bench_queue, bench_claim_log")
        cursor.execute("CREATE TABLE bench_queue (id bigint PRIMARY KEY, claimed_by int, claimed_at timestamptz)")
        cursor.execute("CREATE TABLE bench_claim_log (id bigserial PRIMARY KEY, queue_id bigint NOT NULL, "
                       "worker int NOT NULL, at timestamptz NOT NULL DEFAULT now())")
        cursor.execute("INSERT INTO bench_queue (id) SELECT generate_series(1, %s)", [QUEUE_ROWS])
    vendor, client = bench_organizations()
    project, _ = Project.objects.get_or_create(name="Bench project", client=client,
                                               defaults={"vendor": vendor, "modalities": ["CT"]})
    reader, _ = User.objects.get_or_create(username="bench-reader", defaults={"organization": vendor})
    Membership.objects.get_or_create(user=reader, project=project, role="radiologist")
    connection.cursor().execute("VACUUM ANALYZE bench_queue")
    return reader, project


def run_threads(count: int, seconds: float, work) -> tuple[int, float]:
    """Run ``work(n)`` in a loop on ``count`` threads for ``seconds``; (iterations, elapsed)."""
    from django.db import connection

    ready = threading.Barrier(count + 1)
    stop = threading.Event()
    done = [0] * count
    errors: list[BaseException] = []

    def loop(n: int) -> None:
        try:
            connection.ensure_connection()
            ready.wait()
            while not stop.is_set():
                work(n)
                done[n] += 1
        except BaseException as exc:
            errors.append(exc)
            stop.set()
        finally:
            connection.close()

    threads = [threading.Thread(target=loop, args=(n,), daemon=True) for n in range(count)]
    for t in threads:
        t.start()
    ready.wait()
    started = time.perf_counter()
    stop.wait(seconds)
    stop.set()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - started
    if errors:
        raise errors[0]
    return sum(done), elapsed


def make_claim(reader, project):
    from django.db import connection, transaction

    from audit.trail import record_event

    def claim(n: int) -> None:
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute("SELECT id FROM bench_queue ORDER BY claimed_at NULLS FIRST, id LIMIT 1 "
                           "FOR UPDATE SKIP LOCKED")
            row = cursor.fetchone()
            if row is None:
                return
            cursor.execute("UPDATE bench_queue SET claimed_by = %s, claimed_at = clock_timestamp() WHERE id = %s",
                           [n, row[0]])
            cursor.execute("INSERT INTO bench_claim_log (queue_id, worker) VALUES (%s, %s)", [row[0], n])
            record_event("claim", actor=reader, project_id=project.pk, object_type="tasks.read", object_id=row[0],
                         study_uid=STUDY_UID.format(row[0]), protocol_version=1, extra={"lease_s": 900})

    return claim


def bench_claims(reader, project, threads: int, phase_s: float, rounds: int) -> dict:
    from django.conf import settings

    claim = make_claim(reader, project)
    totals = {False: [0, 0.0], True: [0, 0.0]}
    run_threads(threads, min(phase_s, 2.0), claim)  # warm-up
    for _ in range(rounds):
        for enabled in (False, True):
            settings.AUDIT_ENABLED = enabled
            n, elapsed = run_threads(threads, phase_s, claim)
            totals[enabled][0] += n
            totals[enabled][1] += elapsed
            print(f"  claims, audit {'on ' if enabled else 'off'}: {n / elapsed:8.0f}/s ({n} in {elapsed:.1f} s)")
    settings.AUDIT_ENABLED = True
    off = totals[False][0] / totals[False][1]
    on = totals[True][0] / totals[True][1]
    return {"claims_per_s_audit_off": round(off, 1), "claims_per_s_audit_on": round(on, 1),
            "audit_overhead_pct": round((off - on) / off * 100, 2)}


def bench_writers(reader, project, writers: int, seconds: float) -> float:
    from django.db import transaction

    from audit.trail import record_event

    def write(n: int) -> None:
        with transaction.atomic():
            record_event("view", actor=reader, project_id=project.pk, object_type="tasks.read", object_id=n,
                         study_uid=STUDY_UID.format(n))

    n, elapsed = run_threads(writers, seconds, write)
    print(f"  {writers} writers: {n / elapsed:8.0f} events/s ({n} in {elapsed:.1f} s)")
    return n / elapsed


def bulk_chain(total: int, batch: int = 5000) -> None:
    """Append ``total`` valid chained events spread over every shard, as record_event would link them."""
    from django.db import connection, transaction
    from django.utils import timezone

    from audit.models import AuditChainHead, AuditEvent
    from audit.trail import SHARD_COUNT, event_hash

    base = timezone.now() - timedelta(days=30)
    per_shard = total // SHARD_COUNT
    for shard in range(SHARD_COUNT):
        with transaction.atomic():
            with connection.cursor() as cursor:  # a head jumps ahead only for the retention role (audit 0004)
                cursor.execute("SET LOCAL radqueue.audit_retention = 'on'")
            head = AuditChainHead.objects.select_for_update().get(shard=shard)
            seq, prev = head.seq, head.hash
            rows = []
            for i in range(per_shard):
                seq += 1
                values = {
                    "shard": shard, "seq": seq, "occurred_at": base + timedelta(microseconds=seq * SHARD_COUNT + shard),
                    "actor_id": 1 + i % 50, "actor_roles": "radiologist", "actor_tier": 2, "action": "view",
                    "object_type": "tasks.read", "object_id": str(i), "project_id": 1 + i % 5,
                    "study_uid": STUDY_UID.format(i), "protocol_version": 1, "client_ip": "10.0.0.1",
                    "user_agent": "bench", "request_id": f"{shard:02d}{seq:030d}", "outcome": "allowed",
                    "reason": "", "extra": {"method": "GET", "status": 200}, "prev_hash": prev,
                }
                values["hash"] = prev = event_hash(values)
                rows.append(AuditEvent(**values))
                if len(rows) >= batch:
                    AuditEvent.objects.bulk_create(rows)
                    rows = []
            AuditEvent.objects.bulk_create(rows)
            AuditChainHead.objects.filter(shard=shard).update(seq=seq, hash=prev)


def bench_verify(events: int) -> tuple[float, int]:
    import io

    from django.core.management import call_command
    from django.db import connection

    from audit.models import AuditEvent

    started = time.perf_counter()
    bulk_chain(events)
    print(f"  bulk-inserted {events} chained events in {time.perf_counter() - started:.1f} s")
    connection.cursor().execute("VACUUM ANALYZE audit_auditevent")
    total = AuditEvent.objects.count()
    out = io.StringIO()
    started = time.perf_counter()
    call_command("audit_verify", stdout=out)  # raises CommandError on any broken link
    elapsed = time.perf_counter() - started
    per_million = elapsed / total * 1_000_000
    print(f"  audit_verify: {out.getvalue().strip()}")
    print(f"  {elapsed:.2f} s for {total} events = {per_million:.1f} s per million")
    return per_million, total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="Smaller sizes (the whole run takes under a minute).")
    args = parser.parse_args()
    phase_s, rounds, writer_s, verify_events = (2.5, 2, 3.0, 20_000) if args.quick else (8.0, 3, 10.0, 200_000)

    name = use_bench_database("radqueue_bench")
    setup_django(migrate=False)  # prepare() migrates
    from django.db import connection

    reader, project = prepare(name)
    print(f"database {name} on PostgreSQL {connection.pg_version}, {os.cpu_count()} CPUs")
    print(f"(a) claim transactions, 8 threads, {rounds} x {phase_s:.0f} s per mode, alternating:")
    results = bench_claims(reader, project, threads=8, phase_s=phase_s, rounds=rounds)
    print(f"  audit overhead: {results['audit_overhead_pct']:.1f} %")
    print("(b) concurrent audit writers:")
    results["events_per_s_32_writers"] = round(bench_writers(reader, project, 32, writer_s), 1)
    print("(c) verification:")
    per_million, verified = bench_verify(verify_events)
    results["verify_s_per_million"] = round(per_million, 2)
    results["events_verified"] = verified
    print(json.dumps(results, sort_keys=False))


if __name__ == "__main__":
    main()
