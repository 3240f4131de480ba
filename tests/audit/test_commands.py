"""audit_verify finds tampering, audit_export round-trips, audit_retain archives and re-anchors."""

import csv
import hashlib
import io
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from unittest import mock

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone

from audit.export import FIELDS, values_from_csv_row, values_from_document
from audit.models import AuditAnchor, AuditChainHead, AuditEvent
from audit.trail import GENESIS, event_hash, record_event, verify_chains
from tests.audit.conftest import TABLE, tampering

pytestmark = pytest.mark.django_db


def _events(n, shard=3, **kwargs):
    with mock.patch("audit.trail._shard_for_writer", return_value=shard):
        return [record_event("view", object_type="core.project", object_id=i, **kwargs) for i in range(n)]


def _verify():
    out, err = io.StringIO(), io.StringIO()
    try:
        call_command("audit_verify", stdout=out, stderr=err)
    except CommandError as exc:
        return False, out.getvalue(), err.getvalue() + str(exc)
    return True, out.getvalue(), err.getvalue()


def _at(moment):
    return mock.patch("audit.trail.timezone.now", return_value=moment)


# --- audit_verify ---------------------------------------------------------------------------

def test_verify_passes_an_intact_trail_and_reports_counts():
    _events(4, shard=1)
    _events(3, shard=2)
    ok, out, _ = _verify()
    assert ok
    assert "7 events checked in 64 shards" in out


@pytest.mark.parametrize("column,value", [("object_id", "'999'"), ("outcome", "'denied'"),
                                          ("occurred_at", "occurred_at + interval '1 second'")])
def test_verify_finds_a_field_edited_with_raw_sql(column, value):
    events = _events(5)
    target = events[2]
    with tampering() as cursor:
        cursor.execute(f"UPDATE {TABLE} SET {column} = {value} WHERE id = %s", [target.pk])
    edited = AuditEvent.objects.filter(pk=target.pk).values().get()
    ok, _, err = _verify()
    assert not ok
    assert f"event {target.pk} (shard 3, seq 3): event hash" in err
    assert f"expected {event_hash(edited)}, found {target.hash}" in err
    assert "BROKEN in 1 shard(s)" in err


def test_verify_exits_non_zero_like_a_command_line_run():
    events = _events(2)
    with tampering() as cursor:
        cursor.execute(f"UPDATE {TABLE} SET reason = 'edited' WHERE id = %s", [events[0].pk])
    with pytest.raises(CommandError) as exc:
        call_command("audit_verify", stdout=io.StringIO(), stderr=io.StringIO())
    assert exc.value.returncode == 1


def test_verify_finds_an_event_removed_from_the_middle():
    events = _events(5)
    with tampering() as cursor:
        cursor.execute(f"DELETE FROM {TABLE} WHERE id = %s", [events[2].pk])
    ok, _, err = _verify()
    assert not ok
    assert f"event {events[3].pk} (shard 3, seq 4): missing event before this one: expected seq 3, found seq 4" in err


def test_verify_finds_the_last_event_removed_by_the_head():
    events = _events(4)
    with tampering() as cursor:
        cursor.execute(f"DELETE FROM {TABLE} WHERE id = %s", [events[-1].pk])
    ok, _, err = _verify()
    assert not ok
    assert "shard 3: chain head" in err
    assert f"expected head at seq 3 {events[2].hash}, found head at seq 4 {events[3].hash}" in err


def test_verify_finds_a_rehashed_event_by_its_broken_successor_link():
    events = _events(3)
    forged = AuditEvent.objects.filter(pk=events[1].pk).values().get()
    forged["object_id"] = "forged"
    new_hash = event_hash(forged)
    with tampering() as cursor:
        cursor.execute(f"UPDATE {TABLE} SET object_id = 'forged', hash = %s WHERE id = %s", [new_hash, events[1].pk])
    ok, _, err = _verify()
    assert not ok
    assert f"event {events[2].pk} (shard 3, seq 3): prev_hash: expected {new_hash}, found {events[1].hash}" in err


def test_verify_names_the_first_break_of_each_shard():
    a, b = _events(3, shard=1), _events(3, shard=2)
    with tampering() as cursor:
        cursor.execute(f"UPDATE {TABLE} SET reason = 'x' WHERE id IN (%s, %s, %s)", [a[0].pk, a[2].pk, b[1].pk])
    ok, _, err = _verify()
    assert not ok
    assert f"event {a[0].pk} " in err and f"event {b[1].pk} " in err and f"event {a[2].pk} " not in err


# --- audit_export ---------------------------------------------------------------------------

@pytest.fixture
def exported_events(cast):
    old = datetime(2025, 3, 1, 12, 0, 0, 123456, tzinfo=UTC)
    with _at(old):
        record_event("view", actor=cast.manager, project=cast.project, study_uid="1.2.3", extra={"note": "ü"})
        record_event("list", actor=cast.foreign_manager, project=cast.foreign_project)
    record_event("view", actor=cast.auditor, project=cast.project, outcome="denied", reason="404 not_found: x")
    return old


def _export(tmp_path, fmt, *args):
    path = tmp_path / f"out.{fmt}"
    call_command("audit_export", "--format", fmt, "--output", str(path), *args, stderr=io.StringIO())
    return path


def _db_rows(qs=None):
    return {row["id"]: row for row in (qs if qs is not None else AuditEvent.objects.all()).values(*FIELDS)}


def test_export_jsonl_round_trips_every_field_and_hash(tmp_path, exported_events):
    lines = _export(tmp_path, "jsonl").read_text(encoding="utf-8").splitlines()
    docs = [json.loads(line) for line in lines]
    db = _db_rows()
    assert [d["id"] for d in docs] == sorted(db)
    for doc in docs:
        assert set(doc) == set(FIELDS)
        assert doc["occurred_at"].endswith("Z")
        values = values_from_document(doc)
        assert values == db[doc["id"]]
        assert event_hash(values) == doc["hash"] == db[doc["id"]]["hash"]


def test_export_csv_round_trips_every_field_and_hash(tmp_path, exported_events):
    with open(_export(tmp_path, "csv"), newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        assert tuple(reader.fieldnames) == FIELDS
        rows = list(reader)
    db = _db_rows()
    assert [int(r["id"]) for r in rows] == sorted(db)
    for row in rows:
        values = values_from_csv_row(row)
        assert values == db[values["id"]]
        assert event_hash(values) == row["hash"]


def test_export_filters_by_project_and_time(tmp_path, cast, exported_events):
    path = _export(tmp_path, "jsonl", "--project", str(cast.project.pk), "--since", "2025-03-01",
                   "--until", "2025-03-02T00:00:00Z")
    docs = [json.loads(line) for line in path.read_text().splitlines()]
    assert [(d["action"], d["study_uid"], d["extra"]) for d in docs] == [("view", "1.2.3", {"note": "ü"})]
    path = _export(tmp_path, "jsonl", "--since", "2025-03-02")
    recent = AuditEvent.objects.filter(occurred_at__gte=datetime(2025, 3, 2, tzinfo=UTC))
    assert recent.exists() and recent.count() < AuditEvent.objects.count()
    exported = {json.loads(line)["id"] for line in path.read_text().splitlines()}
    assert exported == set(recent.values_list("id", flat=True))


def test_export_to_stdout_and_bad_dates_are_refused(exported_events):
    out = io.StringIO()
    call_command("audit_export", "--format", "jsonl", stdout=out)
    assert len(out.getvalue().splitlines()) == AuditEvent.objects.count()
    with pytest.raises(CommandError, match="not an ISO-8601"):
        call_command("audit_export", "--since", "yesterday")


# --- audit_retain ---------------------------------------------------------------------------

def test_retention_archives_verifies_and_removes_the_old_prefix_of_each_shard(tmp_path):
    now = timezone.now()
    old, older = now - timedelta(days=400), now - timedelta(days=500)
    with _at(older):
        a_old = _events(3, shard=3)
        b_old = _events(2, shard=7)
    with _at(now - timedelta(days=1)):
        a_new_early = _events(1, shard=3)  # newer, but before an old-dated event: part of the prefix
    with _at(old):
        a_late_old = _events(1, shard=3)
    kept = _events(2, shard=3) + _events(1, shard=7)
    out = io.StringIO()
    call_command("audit_retain", "--older-than-days", "365", "--archive-dir", str(tmp_path), stdout=out)
    assert "Removed 7 events from 2 shard(s)" in out.getvalue()

    removed = a_old + a_new_early + a_late_old + b_old
    assert not AuditEvent.objects.filter(pk__in=[e.pk for e in removed]).exists()
    assert AuditEvent.objects.filter(pk__in=[e.pk for e in kept]).count() == 3
    for shard, last in ((3, a_late_old[-1]), (7, b_old[-1])):
        anchor = AuditAnchor.objects.get(shard=shard)
        assert (anchor.seq, anchor.hash) == (last.seq, last.hash)
        archive = Path(anchor.archive)
        digest = hashlib.sha256(archive.read_bytes()).hexdigest()
        assert Path(f"{archive}.sha256").read_text() == f"{digest}  {archive.name}\n"
        docs = [json.loads(line) for line in archive.read_text().splitlines()]
        assert [d["seq"] for d in docs] == list(range(1, last.seq + 1))
        assert docs[0]["prev_hash"] == GENESIS
        retention = AuditEvent.objects.get(action="audit_retention", extra__shard=shard)
        assert retention.extra["removed"] == last.seq
        assert retention.extra["archive"] == anchor.archive and retention.extra["sha256"] == digest
    assert verify_chains().ok
    assert _verify()[0]


def test_retention_twice_continues_from_the_anchor(tmp_path):
    now = timezone.now()
    with _at(now - timedelta(days=100)):
        first = _events(2)
    with _at(now - timedelta(days=50)):
        second = _events(2)
    _events(1)
    call_command("audit_retain", "--older-than-days", "80", "--archive-dir", str(tmp_path), stdout=io.StringIO())
    assert AuditAnchor.objects.get(shard=3).seq == first[-1].seq
    call_command("audit_retain", "--older-than-days", "20", "--archive-dir", str(tmp_path), stdout=io.StringIO())
    anchor = AuditAnchor.objects.get(shard=3)
    assert (anchor.seq, anchor.hash) == (second[-1].seq, second[-1].hash)
    docs = [json.loads(line) for line in Path(anchor.archive).read_text().splitlines()]
    assert [d["seq"] for d in docs] == [3, 4] and docs[0]["prev_hash"] == first[-1].hash
    assert verify_chains().ok


def test_retention_refuses_to_remove_a_tampered_prefix(tmp_path):
    with _at(timezone.now() - timedelta(days=100)):
        events = _events(3)
    with tampering() as cursor:
        cursor.execute(f"UPDATE {TABLE} SET object_id = 'x' WHERE id = %s", [events[1].pk])
    with pytest.raises(CommandError, match="does not match its fields"):
        call_command("audit_retain", "--older-than-days", "30", "--archive-dir", str(tmp_path))
    assert AuditEvent.objects.filter(pk__in=[e.pk for e in events]).count() == 3
    assert not AuditAnchor.objects.exists()
    assert not list(tmp_path.glob("*.sha256"))


@pytest.mark.parametrize("field,value", [("hash", "f" * 64), ("seq", 1), ("archive", "/elsewhere.jsonl")])
def test_tampered_anchor_is_detected(tmp_path, field, value):
    with _at(timezone.now() - timedelta(days=100)):
        _events(2)
    _events(1)
    call_command("audit_retain", "--older-than-days", "30", "--archive-dir", str(tmp_path), stdout=io.StringIO())
    assert verify_chains().ok
    AuditAnchor.objects.filter(shard=3).update(**{field: value})
    ok, _, err = _verify()
    assert not ok
    assert "shard 3: anchor signature" in err


def test_retention_with_nothing_old_changes_nothing(tmp_path):
    _events(2)
    out = io.StringIO()
    call_command("audit_retain", "--archive-dir", str(tmp_path), stdout=out)
    assert "Removed 0 events from 0 shard(s)" in out.getvalue()
    assert AuditEvent.objects.count() == 2 and not AuditAnchor.objects.exists()
    assert AuditChainHead.objects.get(shard=3).seq == 2
