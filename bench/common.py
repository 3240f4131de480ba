"""What every benchmark needs: a PostgreSQL database of its own, Django set up, one JSON line."""

import json
import os
import sys
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parent.parent


def use_bench_database(default_name: str) -> str:
    """Point Django at DATABASE_URL (default: a local PostgreSQL database of this name), creating it.

    The name must contain "bench": benchmarks empty their tables between runs.
    """
    url = os.environ.get("DATABASE_URL") or f"postgres://postgres@127.0.0.1:5432/{default_name}"
    os.environ["DATABASE_URL"] = url
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "core.settings")
    os.environ.setdefault("LOG_LEVEL", "WARNING")
    sys.path.insert(0, str(ROOT))
    import psycopg2

    parts = urlsplit(url)
    name = parts.path.lstrip("/")
    if "bench" not in name:
        sys.exit(f"Refusing to run on database {name!r}: benchmarks empty tables; use a *bench* database.")
    admin = psycopg2.connect(urlunsplit(parts._replace(path="/postgres")))
    admin.autocommit = True
    with admin.cursor() as cursor:
        cursor.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name])
        if cursor.fetchone() is None:
            cursor.execute(f'CREATE DATABASE "{name}"')
    admin.close()
    return name


def setup_django(migrate: bool = True) -> None:
    import django
    from django.conf import settings
    from django.core.management import call_command

    django.setup()
    settings.DEBUG = False  # no query log: it would slow every phase and grow without bound
    if migrate:
        call_command("migrate", verbosity=0)


def print_result(result: dict) -> None:
    """The figures as one JSON line, last."""
    print(json.dumps(result, sort_keys=True))


def reset_audit_trail(cursor) -> None:
    """Empty the audit trail and re-seed its chain heads, inside the caller's transaction.

    Only on a benchmark's own database: the trail's truncate door opens for this transaction only,
    and only for a member of radqueue_retention (audit migration 0004; a superuser is one).
    """
    from audit.models import AuditChainHead
    from audit.trail import GENESIS, SHARD_COUNT

    cursor.execute("SET LOCAL radqueue.audit_allow_truncate = 'on'")
    cursor.execute("TRUNCATE audit_auditevent, audit_auditchainhead, audit_auditanchor RESTART IDENTITY")
    AuditChainHead.objects.bulk_create([AuditChainHead(shard=s, seq=0, hash=GENESIS) for s in range(SHARD_COUNT)])


def bench_organizations():
    """The vendor and client organisations every benchmark's project belongs to: (vendor, client)."""
    from core.models import Organization

    vendor, _ = Organization.objects.get_or_create(name="Bench vendor", defaults={"kind": "vendor"})
    client, _ = Organization.objects.get_or_create(name="Bench client", defaults={"kind": "client"})
    return vendor, client


def print_machine(database: str) -> None:
    """One line naming the database, the CPUs and the load before the run (runs compare only at like load)."""
    from django.db import connection

    load = os.getloadavg()
    print(f"database {database} on PostgreSQL {connection.pg_version}, {os.cpu_count()} CPUs, "
          f"load average before the run {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")


def seed_queued_tasks(cursor, project_id: int, version_id: int, tasks: int, k: int, study_uid_prefix: str) -> None:
    """``tasks`` studies with one queued production task each and its ``k`` free tier-1 slots, laid
    out as tasks.creation lays them out, in three INSERT ... SELECT generate_series statements."""
    cursor.execute("""
        INSERT INTO core_study (project_id, study_uid, patient_pseudonym, patient_age_years, study_date,
                                description, modalities, body_parts, series_count, instance_count,
                                created_at, updated_at)
        SELECT %s, %s || g, 'PSEUDO-' || g, NULL, '', '', '["CT"]', '[]', 0, 0, now(), now()
        FROM generate_series(1, %s) AS g""", [project_id, study_uid_prefix, tasks])
    cursor.execute("""
        INSERT INTO tasks_task (project_id, protocol_version_id, study_id, series_id, kind, state, flag_reason,
                                reads_required, reads_submitted, first_read_tier, first_read_subspecialty,
                                adjudication_tier, adjudication_subspecialty, priority, client_priority,
                                created_by_id, created_at, updated_at, completed_at)
        SELECT project_id, %s, id, NULL, 'production', 'queued', '', %s, 0, 1, '', 2, '', 0, 0, NULL,
               now(), now(), NULL
        FROM core_study WHERE project_id = %s ORDER BY id""", [version_id, k, project_id])
    # A task's k slots are adjacent in id order, as tasks.creation.create_tasks makes them.
    cursor.execute("""
        INSERT INTO tasks_queueslot (project_id, task_id, priority, tier, subspecialty)
        SELECT t.project_id, t.id, 0, 1, '' FROM tasks_task t, generate_series(1, %s)
        WHERE t.project_id = %s ORDER BY t.id""", [k, project_id])
