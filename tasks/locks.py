"""Every lock the reading workflow takes, and the order it takes them in.

The lock order, said once: within a transaction, a reader's claim lock (advisory) first; then rows
in the order read -> queue slot -> adjudication -> task -> batch, each kind in primary-key order.
A heartbeat or submit locks its read, then the read's slot, then the task; a resolution locks the
adjudication, then the task; a task leaving reading (cancel, gold settle) locks its open work in
that same order before the task itself (``lock_task_work``). Taking them in one order is what keeps
any two of these from waiting on each other in a cycle (a deadlock PostgreSQL would break by
failing one of them).

Row locks take only the row itself, FOR NO KEY UPDATE (``ROW_LOCK``): no key ever changes, and a
plain FOR UPDATE on joined rows made a concurrent claim's foreign-key check (KEY SHARE on the task)
wait on a submit that in turn waited on the claim's audit shard: a deadlock. Queue slots that are
deleted take the full row lock.
"""

from dataclasses import dataclass
from enum import IntEnum

from django.db import connection

from tasks.models import Adjudication, QueueSlot, Read
from tasks.states import ReadState

ROW_LOCK = {"of": ("self",), "no_key": True}


class AdvisoryLock(IntEnum):
    """Classes of two-key transaction-level advisory locks (``pg_advisory_xact_lock(class, key)``).

    The one-message claim also tries the one-key advisory lock of the task it takes (the task's
    id, ``pg_try_advisory_xact_lock(task_id)``: tasks.queue's candidates); no other code uses
    one-key advisory locks, whose key space is apart from the two-key ones."""

    CLAIM = 7301  # one reader's claims, keyed by the reader's id (bench/claims.py takes it too)
    FOLD = 7302  # one progress fold or recount per project, keyed by the project's id


def advisory_xact_lock(lock: AdvisoryLock, key: int) -> None:
    """Wait for and take ``lock`` on ``key`` until the transaction ends."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_xact_lock(%s, %s)", [int(lock), key])


@dataclass
class TaskWork:
    """A task's open work, locked: its claimed reads, its queue slots, its open or claimed adjudication."""

    task_id: int
    reads: list[Read]
    slot_ids: list[int]
    adjudication: Adjudication | None


def lock_task_work(task_id: int) -> TaskWork:
    """Lock a task's open work before the task itself, in the order a heartbeat or submit (read,
    slot, then task) and a resolution (adjudication, then task) take theirs, each kind in
    primary-key order, so a state change of the task never waits on them while they wait on it."""
    def claimed_reads():
        return list(Read.objects.select_for_update(**ROW_LOCK).select_related("task__study")
                    .filter(task_id=task_id, state=ReadState.CLAIMED).order_by("pk"))

    reads = claimed_reads()
    # Slots are deleted, so they take the full row lock. Once they are held no claim can take one.
    slot_ids = list(QueueSlot.objects.select_for_update(of=("self",)).filter(task_id=task_id)
                    .order_by("pk").values_list("pk", flat=True))
    if slot_ids:
        reads = claimed_reads()  # a claim that committed in between
    adjudication = (Adjudication.objects.select_for_update(**ROW_LOCK)
                    .filter(task_id=task_id, state__in=[Adjudication.State.OPEN, Adjudication.State.CLAIMED])
                    .first())
    return TaskWork(task_id, reads, slot_ids, adjudication)
