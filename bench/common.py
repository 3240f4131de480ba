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
