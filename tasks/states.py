"""The one state machine for tasks and reads: which transitions are legal.

Every state change goes through tasks.transitions (``advance_task``, ``advance_tasks``,
``advance_read``), which checks these tables and refuses an illegal transition with a 409 instead
of writing it; the claim statement's own writes are guarded by the same source states.
"""

from django.db import models

from core.errors import Conflict


class TaskState(models.TextChoices):
    QUEUED = "queued", "Queued"  # read slots outstanding, none claimed yet
    IN_READING = "in_reading", "In reading"  # at least one read claimed or submitted
    READS_COMPLETE = "reads_complete", "Reads complete"  # all k reads in, agreement pending
    AWAITING_ADJUDICATION = "awaiting_adjudication", "Awaiting adjudication"
    CONSENSUS = "consensus", "Consensus"
    DELIVERED = "delivered", "Delivered"
    FLAGGED = "flagged", "Flagged"  # not queued: e.g. a required MR sequence is missing
    CANCELLED = "cancelled", "Cancelled"


class ReadState(models.TextChoices):
    CLAIMED = "claimed", "Claimed"
    SUBMITTED = "submitted", "Submitted"
    RELEASED = "released", "Released"
    EXPIRED = "expired", "Expired"
    CANCELLED = "cancelled", "Cancelled"


LIVE_READ_STATES = (ReadState.CLAIMED, ReadState.SUBMITTED)  # one per reader per task

TASK_TRANSITIONS: dict[str, set[str]] = {
    TaskState.QUEUED: {TaskState.IN_READING, TaskState.CANCELLED},
    TaskState.IN_READING: {TaskState.QUEUED, TaskState.READS_COMPLETE, TaskState.CANCELLED},
    TaskState.READS_COMPLETE: {TaskState.CONSENSUS, TaskState.AWAITING_ADJUDICATION, TaskState.CANCELLED},
    TaskState.AWAITING_ADJUDICATION: {TaskState.CONSENSUS, TaskState.CANCELLED},
    TaskState.CONSENSUS: {TaskState.DELIVERED},
    TaskState.DELIVERED: set(),
    TaskState.FLAGGED: {TaskState.QUEUED, TaskState.CANCELLED},
    TaskState.CANCELLED: set(),
}

READ_TRANSITIONS: dict[str, set[str]] = {
    ReadState.CLAIMED: {ReadState.SUBMITTED, ReadState.RELEASED, ReadState.EXPIRED, ReadState.CANCELLED},
    ReadState.SUBMITTED: set(),
    ReadState.RELEASED: set(),
    ReadState.EXPIRED: set(),
    ReadState.CANCELLED: set(),
}


def check_task_transition(current: str, target: str) -> None:
    if target not in TASK_TRANSITIONS[current]:
        raise Conflict(f"A task cannot go from {current} to {target}.", code="illegal_transition")


# A gold or calibration task takes an imported reference from any state before its consensus:
# the import ends whatever reading or adjudication is under way (tasks.gold.import_reference).
REFERENCE_IMPORT_STATES = {TaskState.QUEUED, TaskState.IN_READING, TaskState.READS_COMPLETE,
                           TaskState.AWAITING_ADJUDICATION, TaskState.FLAGGED}


def check_reference_import(current: str) -> None:
    if current not in REFERENCE_IMPORT_STATES:
        raise Conflict(f"A {current} task takes no reference.", code="illegal_transition")


def check_read_transition(current: str, target: str) -> None:
    if target not in READ_TRANSITIONS[current]:
        messages = {
            ReadState.EXPIRED: "Your lease on this read expired and the task went back to the queue.",
            ReadState.SUBMITTED: "This read has already been submitted.",
            ReadState.RELEASED: "This read was released.",
            ReadState.CANCELLED: "This read was cancelled by a manager.",
        }
        raise Conflict(messages.get(current, f"A read cannot go from {current} to {target}."),
                       code=f"read_{current}")


def task_state_after_reads(*, submitted: int, claimed: int, required: int) -> str:
    """The reading state a task is in, from its read counts."""
    if submitted >= required:
        return TaskState.READS_COMPLETE
    if submitted or claimed:
        return TaskState.IN_READING
    return TaskState.QUEUED
