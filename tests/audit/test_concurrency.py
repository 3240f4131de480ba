"""Concurrent writers against PostgreSQL: every shard's chain stays gap-free and valid."""

import threading
from contextlib import nullcontext
from unittest import mock

import pytest
from django.db import connection, transaction
from django.db.models import Count, Max, Min

from audit.models import AuditEvent
from audit.trail import record_event, verify_chains

WRITERS = 32
EVENTS_EACH = 15


def _write_concurrently(shard_of_thread=None) -> list[BaseException]:
    start = threading.Barrier(WRITERS)
    errors: list[BaseException] = []

    def writer(n: int) -> None:
        try:
            start.wait()
            for i in range(EVENTS_EACH):
                with transaction.atomic():
                    record_event("view", object_type="bench.writer", object_id=f"{n}:{i}", extra={"writer": n})
        except BaseException as exc:  # reported by the test below
            errors.append(exc)
        finally:
            connection.close()

    forced = mock.patch("audit.trail._shard_for_writer", side_effect=shard_of_thread) if shard_of_thread else None
    with forced or nullcontext():
        threads = [threading.Thread(target=writer, args=(n,)) for n in range(WRITERS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
    return errors


def _assert_valid_chains():
    assert AuditEvent.objects.count() == WRITERS * EVENTS_EACH
    result = verify_chains()
    assert result.ok, [str(b) for b in result.breaks]
    assert result.events == WRITERS * EVENTS_EACH
    for shard in AuditEvent.objects.values("shard").annotate(n=Count("id"), lo=Min("seq"), hi=Max("seq")):
        assert (shard["lo"], shard["hi"]) == (1, shard["n"]), shard  # with (shard, seq) unique: contiguous
    written = set(AuditEvent.objects.values_list("object_id", flat=True))
    assert written == {f"{n}:{i}" for n in range(WRITERS) for i in range(EVENTS_EACH)}


@pytest.mark.django_db(transaction=True)
def test_32_concurrent_writers_leave_valid_chains():
    assert _write_concurrently() == []
    _assert_valid_chains()


@pytest.mark.django_db(transaction=True)
def test_32_writers_forced_onto_two_shards_serialise_on_the_head_lock():
    assert _write_concurrently(lambda: threading.get_ident() % 2) == []
    _assert_valid_chains()
    assert set(AuditEvent.objects.values_list("shard", flat=True)) <= {0, 1}


@pytest.mark.django_db(transaction=True)
def test_a_new_database_session_prepares_the_append_again():
    first = record_event("view")
    connection.close()
    second = record_event("view")
    assert second.prev_hash == first.hash
    assert verify_chains().ok
