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
