"""Truncating or rewinding a chain is detected, and the application's role cannot do it at all.

The attacker of issue 17 item 11 holds the application's database credentials: they may switch
the retention setting on in their session and delete the newest events of a chain and its head.
"""

import io
import json
from unittest import mock

import pytest
from django.core.management import CommandError, call_command
from django.db import connection, transaction

from audit.models import AuditChainHead, AuditEvent
from audit.trail import record_event
from tests.audit.conftest import HEADS, TABLE, cut_chain_end

pytestmark = pytest.mark.django_db


def _events(n, shard=5):
    with mock.patch("audit.trail._shard_for_writer", return_value=shard):
        return [record_event("view", object_type="core.project", object_id=i) for i in range(n)]


def _verify(*args):
    out, err = io.StringIO(), io.StringIO()
    try:
        call_command("audit_verify", *args, stdout=out, stderr=err)
    except CommandError as exc:
        return False, out.getvalue() + err.getvalue() + str(exc)
    return True, out.getvalue() + err.getvalue()


# --- verification ---------------------------------------------------------------------------

def test_verify_fails_when_the_newest_events_and_the_head_are_deleted():
    _events(4)
    cut_chain_end(5, keep=2)
    ok, text = _verify()
    assert not ok
    assert "shard 5: chain head missing" in text
    assert "no head row" in text


def test_verify_fails_when_the_head_is_behind_the_newest_event():
    events = _events(4)
    # Even as a superuser the raw update is refused by the head trigger (see below), so rewind with it off.
    with connection.cursor() as cursor:
        cursor.execute(f"ALTER TABLE {HEADS} DISABLE TRIGGER USER")
        cursor.execute(f"UPDATE {HEADS} SET seq = 2, hash = %s WHERE shard = 5", [events[1].hash])
        cursor.execute(f"ALTER TABLE {HEADS} ENABLE TRIGGER USER")
    ok, text = _verify()
    assert not ok
    assert "shard 5: chain head behind the newest event" in text


def test_verify_passes_an_untouched_trail_with_heads():
    _events(3)
    ok, text = _verify()
    assert ok, text
    assert AuditEvent.objects.filter(shard=5).count() == 3


# --- the head table's trigger ---------------------------------------------------------------

@pytest.mark.parametrize("statement", [
    f"DELETE FROM {HEADS} WHERE shard = 5",
    f"UPDATE {HEADS} SET seq = seq - 1 WHERE shard = 5",
    f"UPDATE {HEADS} SET seq = seq + 2, prev_hash = hash WHERE shard = 5",
    f"UPDATE {HEADS} SET seq = seq + 1 WHERE shard = 5",  # a move that does not link to the old hash
])
def test_head_trigger_refuses_rewinding_or_deleting_a_head(statement):
    _events(3)
    with pytest.raises(Exception, match="only moves forward"), transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(statement)
    head = AuditChainHead.objects.get(shard=5)
    assert head.seq == 3
    ok, text = _verify()
    assert ok, text


def test_appends_still_move_the_head_past_its_trigger():
    _events(5)  # the append (one statement) moves the head the trigger guards
    assert AuditChainHead.objects.get(shard=5).seq == 5
    ok, text = _verify()
    assert ok, text


# --- the retention switch needs the retention role ------------------------------------------

APP_ROLE = "rq_anchor_tamper_app"


@pytest.fixture
def app_role_cursor(transactional_db):
    """A psycopg2 cursor of an ordinary (not superuser) login role with the application's table rights."""
    import psycopg2

    with connection.cursor() as cursor:
        cursor.execute(f"DROP OWNED BY {APP_ROLE}" if _role_exists() else "SELECT 1")
        cursor.execute(f"DROP ROLE IF EXISTS {APP_ROLE}")
        cursor.execute(f"CREATE ROLE {APP_ROLE} LOGIN NOSUPERUSER")
        cursor.execute(f"GRANT SELECT, INSERT, UPDATE, DELETE, TRUNCATE ON ALL TABLES IN SCHEMA public TO {APP_ROLE}")
        cursor.execute(f"GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO {APP_ROLE}")
    params = connection.get_connection_params()
    conn = psycopg2.connect(dbname=params["dbname"], host=params.get("host"), port=params.get("port"),
                            user=APP_ROLE, password=None)
    conn.autocommit = True
    try:
        yield conn.cursor()
    finally:
        conn.close()
        with connection.cursor() as cursor:
            cursor.execute(f"DROP OWNED BY {APP_ROLE}")
            cursor.execute(f"DROP ROLE {APP_ROLE}")


def _role_exists():
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [APP_ROLE])
        return cursor.fetchone() is not None


@pytest.mark.parametrize("setting,statement", [
    ("audit_retention", f"DELETE FROM {TABLE} WHERE shard = 5 AND seq > 2"),
    ("audit_retention", f"DELETE FROM {HEADS} WHERE shard = 5"),
    ("audit_retention", f"UPDATE {HEADS} SET seq = 2 WHERE shard = 5"),
    ("audit_allow_truncate", f"TRUNCATE {TABLE}"),
    ("audit_allow_truncate", f"TRUNCATE {HEADS}"),
    ("audit_retention", "INSERT INTO audit_auditanchor (shard, seq, hash, archive, signature, created_at) "
                        "VALUES (5, 2, 'x', 'x', 'x', now())"),
])
def test_an_ordinary_role_cannot_switch_retention_on(app_role_cursor, setting, statement):
    import psycopg2

    _events(4)
    app_role_cursor.execute(f"SET radqueue.{setting} = 'on'")
    with pytest.raises(psycopg2.Error) as exc:
        app_role_cursor.execute(statement)
    assert exc.value.pgcode == "42501"  # insufficient_privilege, raised by the trigger
    assert AuditEvent.objects.filter(shard=5).count() == 4
    assert AuditChainHead.objects.get(shard=5).seq == 4
    ok, text = _verify()
    assert ok, text


def test_audit_retain_stops_before_archiving_without_the_retention_role(tmp_path):
    _events(2)
    with connection.cursor() as cursor:  # rolled back with the test: roles are transactional
        cursor.execute("CREATE ROLE rq_anchor_not_retention NOLOGIN")
        cursor.execute("SET LOCAL ROLE rq_anchor_not_retention")
    with pytest.raises(CommandError, match="'rq_anchor_not_retention' is not a member of radqueue_retention"):
        call_command("audit_retain", "--older-than-days", "0", "--archive-dir", str(tmp_path), stdout=io.StringIO())
    assert not list(tmp_path.iterdir())


# --- head anchors outside the database ------------------------------------------------------

def _anchor(path):
    call_command("audit_anchor", "--out", str(path), stdout=io.StringIO())
    return path


def _rewind(shard, keep):
    """As an attacker able to cut a chain: remove events after ``keep`` and move the head back to it,
    so the database alone shows an intact, shorter chain."""
    kept = AuditEvent.objects.get(shard=shard, seq=keep)
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SET LOCAL radqueue.audit_retention = 'on'")
        cursor.execute(f"ALTER TABLE {HEADS} DISABLE TRIGGER USER")
        cursor.execute(f"DELETE FROM {TABLE} WHERE shard = %s AND seq > %s", [shard, keep])
        cursor.execute(f"UPDATE {HEADS} SET seq = %s, hash = %s, prev_hash = %s WHERE shard = %s",
                       [keep, kept.hash, kept.prev_hash, shard])
        cursor.execute(f"ALTER TABLE {HEADS} ENABLE TRIGGER USER")


def test_verify_against_an_untouched_anchor_passes_as_the_trail_grows(tmp_path):
    _events(3)
    anchor = _anchor(tmp_path / "heads.json")
    _events(2)
    _events(1, shard=6)
    ok, text = _verify("--anchor", str(anchor))
    assert ok, text


def test_verify_against_an_anchor_finds_a_truncated_chain_the_database_alone_does_not(tmp_path):
    _events(4)
    anchor = _anchor(tmp_path / "heads.json")
    _rewind(5, keep=2)
    assert _verify()[0]  # what the anchor exists for: the rewound chain is consistent by itself
    ok, text = _verify("--anchor", str(anchor))
    assert not ok
    assert "shard 5: chain behind its head anchor" in text
    assert "head at seq 2" in text


def test_verify_against_an_anchor_finds_the_anchored_event_replaced(tmp_path):
    _events(4)
    anchor = _anchor(tmp_path / "heads.json")
    _rewind(5, keep=2)
    _events(2)  # forged seq 3 and 4, linked correctly
    assert _verify()[0]
    ok, text = _verify("--anchor", str(anchor))
    assert not ok
    assert "(shard 5, seq 4): anchored event replaced" in text


def test_verify_refuses_a_tampered_anchor_file(tmp_path):
    events = _events(4)
    anchor = _anchor(tmp_path / "heads.json")
    doc = json.loads(anchor.read_text())
    doc["heads"]["5"] = {"seq": 2, "hash": events[1].hash}  # as if the chain had been shorter
    anchor.write_text(json.dumps(doc))
    ok, text = _verify("--anchor", str(anchor))
    assert not ok
    assert "the signature is wrong" in text


def test_verify_refuses_an_anchor_signed_with_another_key(tmp_path, settings):
    _events(2)
    settings.RADQUEUE_AUDIT_ANCHOR_KEY = "another key"
    anchor = _anchor(tmp_path / "heads.json")
    settings.RADQUEUE_AUDIT_ANCHOR_KEY = "the real key"
    ok, text = _verify("--anchor", str(anchor))
    assert not ok and "the signature is wrong" in text


def test_anchor_refuses_to_run_without_a_key(tmp_path, settings):
    settings.RADQUEUE_AUDIT_ANCHOR_KEY = ""
    with pytest.raises(CommandError, match="RADQUEUE_AUDIT_ANCHOR_KEY is not set"):
        _anchor(tmp_path / "heads.json")
    assert not (tmp_path / "heads.json").exists()


def test_the_beat_job_writes_a_signed_anchor_into_the_anchor_dir(tmp_path, settings):
    from audit.head_anchor import load_anchor
    from audit.jobs import anchor_heads_job

    assert settings.CELERY_BEAT_SCHEDULE["audit-anchor-heads"]["task"] == "audit.anchor_heads"
    events = _events(3)
    settings.RADQUEUE_AUDIT_ANCHOR_DIR = ""
    assert anchor_heads_job() is None
    settings.RADQUEUE_AUDIT_ANCHOR_DIR = str(tmp_path / "anchors")
    written = anchor_heads_job()
    assert load_anchor(written)[5] == (3, events[2].hash)
