"""The one writer of each state machine: a task's state changes only in ``advance_task`` (or
``advance_tasks`` for a batch), a read's only in ``advance_read``.

The transition tables in tasks.states are the rule; a writer here checks it, writes the row only if
it is still in the state the caller read (``WHERE state = <source>``: the caller holds the row lock,
so a miss is a bug or a race, answered 409, never a silent overwrite), keeps ``completed_at`` as the
state says, and announces a production task's move on the progress feed, once. The claim statement
(tasks.queue) is the one plain-SQL writer elsewhere: it moves a task from queued to in_reading and
expires a lapsed read, each guarded by the same source state, with the names from the enums.
"""

from django.db import connection
from django.utils import timezone

from core.errors import Conflict
from tasks.models import Read, Task
from tasks.progress import announce_progress
from tasks.states import ReadState, TaskState, check_read_transition, check_reference_import, check_task_transition

# What entering a state does to completed_at: the time the reads were all in (or the reference
# came), cleared when a task goes back to reading; other moves keep it.
_COMPLETES = {TaskState.READS_COMPLETE}
_REOPENS = {TaskState.QUEUED, TaskState.IN_READING}

# Plain SQL: the submit's and consensus' task writes run on every task's last read, where the ORM's
# building of an UPDATE cost more than its running. One text per effect on completed_at.
_SET_STATE = "UPDATE tasks_task SET state = %(to)s, updated_at = %(now)s{} WHERE id = %(task)s AND state = %(source)s"
_SET_STATE_COMPLETING = _SET_STATE.format(", completed_at = %(now)s")
_SET_STATE_REOPENING = _SET_STATE.format(", completed_at = NULL")
_SET_STATE_KEEPING = _SET_STATE.format("")


def advance_task(task: Task, to: str, *, now=None, reference_import: bool = False) -> None:
    """Move one task, locked by the caller, to ``to``. ``reference_import``: a gold or calibration
    reference settles the task from any state before consensus (tasks.states.REFERENCE_IMPORT_STATES)."""
    source = task.state
    if reference_import:
        check_reference_import(source)
        if to != TaskState.CONSENSUS:
            raise ValueError("a reference import moves a task to consensus")
    else:
        check_task_transition(source, to)
    now = now or timezone.now()
    if to in _COMPLETES or reference_import:
        statement, completed_at = _SET_STATE_COMPLETING, now
    elif to in _REOPENS:
        statement, completed_at = _SET_STATE_REOPENING, None
    else:
        statement, completed_at = _SET_STATE_KEEPING, None
    with connection.cursor() as cursor:
        cursor.execute(statement, {"to": to, "now": now, "task": task.pk, "source": source})
        if cursor.rowcount != 1:
            raise Conflict(f"The task changed while it was being moved from {source} to {to}; try again.",
                           code="task_changed")
    task.state, task.updated_at = to, now
    if statement is not _SET_STATE_KEEPING:
        task.completed_at = completed_at
    if task.kind == Task.Kind.PRODUCTION:
        announce_progress(task.project_id, **{source: -1, to: 1})


def advance_tasks(tasks: list[Task], to: str, *, project_id: int) -> None:
    """Move locked tasks of one project to ``to`` in one statement (a batch's delivery)."""
    for task in tasks:
        check_task_transition(task.state, to)
    now = timezone.now()
    sources = sorted({task.state for task in tasks})
    moved = Task.objects.filter(pk__in=[t.pk for t in tasks], state__in=sources).update(state=to, updated_at=now)
    if moved != len(tasks):
        raise Conflict("Some of these tasks changed while they were being moved; nothing was changed.",
                       code="task_changed")
    changes: dict[str, int] = {to: 0}
    for task in tasks:
        if task.kind == Task.Kind.PRODUCTION:
            changes[task.state] = changes.get(task.state, 0) - 1
            changes[to] += 1
        task.state, task.updated_at = to, now
    announce_progress(project_id, **changes)


def advance_read(read: Read, to: str, *, now=None) -> None:
    """End a claimed read, locked by the caller (released, expired or cancelled; a submit stores its
    findings with the state in tasks.queue's one UPDATE, after the same check)."""
    check_read_transition(read.state, to)
    if to == ReadState.SUBMITTED:
        raise ValueError("a submit stores its findings with its state (tasks.reads.submit_read)")
    now = now or timezone.now()
    moved = Read.objects.filter(pk=read.pk, state=read.state).update(state=to, ended_at=now)
    if moved != 1:
        raise Conflict(f"The read changed while it was being moved from {read.state} to {to}; try again.",
                       code="read_changed")
    read.state, read.ended_at = to, now
