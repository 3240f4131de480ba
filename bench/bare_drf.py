"""The peer of bench/claims.py's claim-only phase: a bare DRF endpoint that does nothing but token
auth, the bare claim statement and one insert (the issue's "bare DRF endpoint", about 690 claims/s
under wrk where it was measured).

Served by the same gunicorn command as the API, with ``DJANGO_SETTINGS_MODULE=bench.bare_drf``:
this module is its settings and its URLconf. The settings are the API's (same database, same
token table) with only Django's own middleware (startproject's list) and DRF's JSON renderer; the
token check is the API's own (core.authentication, knox's checks in one SQL statement: the
thinnest knox there is, so the peer is not slowed by knox's per-request token cleanup). The
claim is the bare ``UPDATE ... WHERE id = (SELECT ... FOR UPDATE SKIP LOCKED LIMIT 1)`` that
pgbench drives, and the insert is the read it hands out, in one transaction.
"""

import os

from core.settings import *  # noqa: F403 - the API's settings, then what differs
from core.settings import MIDDLEWARE, REST_FRAMEWORK

ROOT_URLCONF = "bench.bare_drf"
# The API's middleware less what radqueue added to startproject's list (static files, CORS, the
# request id and audit context): what a bare DRF project runs.
MIDDLEWARE = [m for m in MIDDLEWARE if m.split(".")[0] == "django"]
REST_FRAMEWORK = {**REST_FRAMEWORK, "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
                  "DEFAULT_AUTHENTICATION_CLASSES": ["core.authentication.TokenAuthentication"]}

# bench/claims.py's bare_statement, the one pgbench drives: the project is the bench's.
CLAIM = """
UPDATE tasks_queueslot SET reader_id = %s, lease_expires_at = now() + interval '30 minutes'
WHERE id = (SELECT id FROM tasks_queueslot WHERE project_id = %s AND tier = 1
            AND reader_id IS NULL ORDER BY priority DESC, id LIMIT 1 FOR UPDATE SKIP LOCKED)
RETURNING id, project_id, task_id, lease_expires_at"""
READ = """
INSERT INTO tasks_read (project_id, task_id, reader_id, state, tier, claimed_at, lease_expires_at, active_seconds,
                        findings_count, slices_touched, idempotency_key, is_check)
VALUES (%s, %s, %s, 'claimed', 1, now(), %s, 0, 0, 0, '', false)
ON CONFLICT DO NOTHING RETURNING id"""


def _urlpatterns():
    from django.db import connection, transaction
    from django.urls import path
    from rest_framework.response import Response
    from rest_framework.views import APIView

    from core import health

    bench_project = int(os.environ["BENCH_BARE_PROJECT"])

    class BareClaim(APIView):
        def post(self, request):
            with transaction.atomic(), connection.cursor() as cursor:
                cursor.execute(CLAIM, [request.user.pk, bench_project])
                slot = cursor.fetchone()
                if slot is None:
                    return Response(status=204)
                _slot_id, project_id, task_id, lease_expires_at = slot
                cursor.execute(READ, [project_id, task_id, request.user.pk, lease_expires_at])
                # None where the reader already holds the task's other slot: the bare statement does
                # not skip those, and the live-read unique index refuses a second read.
                read_id = (cursor.fetchone() or [None])[0]
            return Response({"read": read_id, "task": task_id, "lease_expires_at": lease_expires_at})

    return [path("healthz", health.healthz), path("api/queue/next/", BareClaim.as_view())]


def __getattr__(name):
    # The URLconf's patterns are built on first use, after settings are configured.
    if name == "urlpatterns":
        return _urlpatterns()
    raise AttributeError(name)
