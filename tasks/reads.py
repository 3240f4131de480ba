"""A held read: heartbeat, release, draft, submit; the lease sweep, a manager's reassignment and a
task's cancellation. Claims are tasks.queue; the locks these take, and their order, tasks.locks."""


import functools
from datetime import timedelta

from django.db import IntegrityError, connection, transaction
from django.utils import timezone

from audit.trail import EmbeddedEvent, embedded_event, record_event
from core.broadcast import broadcast_to_reader_on_commit
from core.errors import Conflict, DomainError, NotFound
from core.idempotency import checked_key
from core.models import Project, User
from pgsql import prepared, rows
from tasks.ending import end_task_work
from tasks.locks import ROW_LOCK, lock_task_work
from tasks.models import QueueSlot, Read, Task
from tasks.progress import announce_progress
from tasks.queue import lease_seconds
from tasks.routing import eligibility
from tasks.selectors import reader_membership_sql
from tasks.states import (
    LIVE_READ_STATES,
    ReadState,
    TaskState,
    check_read_transition,
    check_task_transition,
    task_state_after_reads,
)
from tasks.transitions import advance_read, advance_task

HEARTBEAT_CREDIT_CAP = timedelta(minutes=5)  # longer gaps between heartbeats are not active time


# --- operations on a held read -------------------------------------------------------------

def get_read_for_update(read_id, user: User) -> Read:
    """The caller's own read, locked; 404 for anybody else's (existence does not leak), and for
    their own once they hold no reader role on its project (tasks.selectors).

    Locks in this module take only the row itself, FOR NO KEY UPDATE (no key ever changes): a
    plain FOR UPDATE on joined rows made a concurrent claim's foreign-key check (KEY SHARE on
    the task) wait on a submit that in turn waited on the claim's audit shard: a deadlock.
    """
    read = _locked_read(read_id, user)
    if read is None:
        raise NotFound("No such read.")
    return read


def _locked_read(read_id, user: User) -> Read | None:
    """get_read_for_update's query in plain SQL (the ORM's building of it cost more than running
    it): the read, locked FOR NO KEY UPDATE, with its task, study and protocol version."""
    try:
        read_id = int(read_id)
    except (ValueError, TypeError):
        return None
    if not -(2 ** 63) <= read_id < 2 ** 63:
        return None
    models, sql = _locked_read_statement()
    with connection.cursor() as cursor:
        prepared.execute_prepared(cursor, "radqueue_locked_read", sql, {"read": read_id, "reader": user.pk})
        row = cursor.fetchone()
    if row is None:
        return None
    read, task, study, version = rows.instances(models, row)
    task.study, task.protocol_version, read.task = study, version, task
    return read


@functools.cache
def _locked_read_statement() -> tuple[tuple, str]:
    from core.dicom.models import Study
    from core.models import ProtocolVersion

    models = (Read, Task, Study, ProtocolVersion)
    selected = [column for model, alias in zip(models, ("r", "t", "st", "pv"), strict=True)
                for column in rows.columns(model, alias)]
    return models, f"""SELECT {", ".join(selected)}
        FROM tasks_read r JOIN tasks_task t ON t.id = r.task_id JOIN core_study st ON st.id = t.study_id
        JOIN core_protocolversion pv ON pv.id = t.protocol_version_id
        WHERE r.id = %(read)s::bigint AND r.reader_id = %(reader)s::bigint AND {reader_membership_sql("r")}
        FOR NO KEY UPDATE OF r"""


def _live_slot(read: Read) -> QueueSlot | None:
    """The slot this read still holds; 409 when its lease passed and another reader has it.

    Check reads (gold, calibration) hold no slot: None.
    """
    if read.is_check:
        return None
    # Plain SQL (the ORM's query building costs ten times the query): the slot, locked.
    with connection.cursor() as cursor:
        cursor.execute("SELECT id, reader_id FROM tasks_queueslot WHERE read_id = %s FOR NO KEY UPDATE", [read.pk])
        row = cursor.fetchone()
    slot = None if row is None else rows.loaded(QueueSlot, id=row[0], reader_id=row[1], read_id=read.pk)
    if slot is None or slot.reader_id != read.reader_id:
        raise Conflict("Your lease on this read expired and the task was handed to another reader; "
                       "your work on it cannot be submitted.", code="lease_lost")
    return slot


@transaction.atomic
def heartbeat_read(read_id, user: User) -> Read:
    """Extend the lease by the project's lease length; credit active time since the last beat."""
    read = get_read_for_update(read_id, user)
    check_read_transition(read.state, ReadState.SUBMITTED)  # only claimed reads beat
    slot = _live_slot(read)
    now = timezone.now()
    last = read.last_heartbeat_at or read.claimed_at
    read.active_seconds += min(now - last, HEARTBEAT_CREDIT_CAP).total_seconds()
    read.last_heartbeat_at = now
    read.lease_expires_at = now + timedelta(seconds=lease_seconds(read.project_id))
    read.save(update_fields=["active_seconds", "last_heartbeat_at", "lease_expires_at"])
    if slot is not None:
        QueueSlot.objects.filter(pk=slot.pk).update(lease_expires_at=read.lease_expires_at)
    record_event("heartbeat", actor=user, project_id=read.project_id, obj=read, study_uid=read.task.study.study_uid)
    return read


@transaction.atomic
def release_read(read_id, user: User) -> Read:
    """Give the read back: its slot returns to the queue for another reader."""
    read = get_read_for_update(read_id, user)
    check_read_transition(read.state, ReadState.RELEASED)
    slot = _live_slot(read)
    free_slot(slot, read, ReadState.RELEASED)
    record_event("release", actor=user, project_id=read.project_id, obj=read, study_uid=read.task.study.study_uid)
    broadcast_to_reader_on_commit(user.pk, read.project_id, "read.released", {"read": read.pk, "task": read.task_id})
    return read


def free_slot(slot: QueueSlot | None, read: Read, state: str) -> None:
    advance_read(read, state)
    if slot is None:  # a check read: its task is not in the queue
        return
    QueueSlot.objects.filter(pk=slot.pk).update(reader=None, lease_expires_at=None, read=None)
    _refresh_task_state(read.task_id)


def _refresh_task_state(task_id: int) -> Task:
    """Set a reading task's state from its read counts (tasks.states.task_state_after_reads)."""
    task = Task.objects.select_for_update(**ROW_LOCK).select_related("study", "protocol_version").get(pk=task_id)
    if task.state not in (TaskState.QUEUED, TaskState.IN_READING):
        return task
    claimed = Read.objects.filter(task_id=task_id, state=ReadState.CLAIMED).count()
    target = task_state_after_reads(submitted=task.reads_submitted, claimed=claimed, required=task.reads_required)
    if target != task.state:
        advance_task(task, target)
    return task


def get_workable_read_for_update(read_id, user: User) -> Read:
    """The caller's read, locked, while its work may still change (a draft, a viewer's save): 404 as
    get_read_for_update, 409 once submitted or when its lease went to another reader."""
    read = get_read_for_update(read_id, user)
    check_read_transition(read.state, ReadState.SUBMITTED)
    _live_slot(read)
    return read


@transaction.atomic
def save_draft(read_id, user: User, draft) -> Read:
    read = get_workable_read_for_update(read_id, user)
    if not isinstance(draft, list | dict):
        raise DomainError("A draft is a list of findings (or an object).", errors={"draft": ["Expected JSON."]})
    Read.objects.filter(pk=read.pk).update(draft=draft)
    read.draft = draft
    record_event("update", actor=user, project_id=read.project_id, obj=read, study_uid=read.task.study.study_uid,
                 extra={"draft": True})
    return read


FROM_DRAFT = object()  # submit_read's findings: the draft's, as saved (from a viewer's objects, say)


def draft_findings(draft) -> list:
    """The findings of a draft: a draft is a list of findings, or an object holding them under ``findings``."""
    if isinstance(draft, dict):
        draft = draft.get("findings", [])
    return draft if isinstance(draft, list) else []


def submit_read(read_id, user: User, findings, *, idempotency_key: str = "") -> tuple[Read, bool]:
    """Validate and store the findings (FROM_DRAFT: the saved draft's), completing the read.
    Returns (read, replayed).

    A retry with the same idempotency key returns the first result; the lease must still be
    the caller's (409 if it passed and the slot went to another reader).
    """
    from tasks.findings.loading import validated_findings

    idempotency_key = checked_key(idempotency_key)
    with transaction.atomic():
        read = get_read_for_update(read_id, user)
        if read.state == ReadState.SUBMITTED and idempotency_key and read.idempotency_key == idempotency_key:
            return read, True
        check_read_transition(read.state, ReadState.SUBMITTED)
        slot = _live_slot(read)
        if findings is FROM_DRAFT:
            findings = draft_findings(read.draft)
        normalised, summary = validated_findings(read, findings)
        now = timezone.now()
        last = read.last_heartbeat_at or read.claimed_at
        read.active_seconds += min(now - last, HEARTBEAT_CREDIT_CAP).total_seconds()
        read.state, read.submitted_at, read.ended_at = ReadState.SUBMITTED, now, now
        read.findings, read.draft = normalised, None
        read.findings_count, read.slices_touched = summary["findings"], summary["slices_touched"]
        read.idempotency_key = idempotency_key
        _store_submission(read)
        broadcast_to_reader_on_commit(user.pk, read.project_id, "read.submitted",
                                      {"read": read.pk, "task": read.task_id})
        if slot is None:  # a check read: scored against the reference, the task itself unchanged
            from tasks.gold import on_check_submitted

            on_check_submitted(read)
            record_event("submit", actor=user, project_id=read.project_id, obj=read,
                         study_uid=read.task.study.study_uid, extra={"findings": read.findings_count})
            return read, False
        event = {"actor": user, "project_id": read.project_id, "obj": read, "study_uid": read.task.study.study_uid,
                 "protocol_version": read.task.protocol_version.number,
                 "extra": {"task": read.task_id, "findings": read.findings_count,
                           "active_seconds": round(read.active_seconds)}}
        # On PostgreSQL the submit's audit event goes in with the count of its task (one statement).
        complete, recorded = _count_submission(slot, read.task, now, embedded_event("submit", after="counted", **event))
        if read.task.kind == Task.Kind.PRODUCTION:
            announce_progress(read.project_id, reads_submitted=1)
        if not recorded:
            record_event("submit", **event)
        if complete:
            _on_reads_complete(read.task)
    return read, False


_SUBMITTED_FIELDS = ("active_seconds", "state", "submitted_at", "ended_at", "findings", "draft", "findings_count",
                     "slices_touched", "idempotency_key")


def _store_submission(read: Read) -> None:
    """``read.save(update_fields=_SUBMITTED_FIELDS)``, without the ORM's building of the UPDATE
    (it cost more than the statement)."""
    fields, sql = _submission_update()
    values = [f.get_db_prep_save(getattr(read, f.attname), connection) for f in fields]
    with connection.cursor() as cursor:
        cursor.execute(sql, [*values, read.pk])


@functools.cache
def _submission_update() -> tuple[list, str]:
    fields = [Read._meta.get_field(name) for name in _SUBMITTED_FIELDS]
    assignments = ", ".join(f'"{f.column}" = %s' for f in fields)
    return fields, f"UPDATE {Read._meta.db_table} SET {assignments} WHERE id = %s"


# The row as this UPDATE locked it: what consensus or a new adjudication copies (priority, the
# adjudication's tier) may have changed since the read was loaded (scoring, a manager).
_COUNT = ("UPDATE tasks_task SET reads_submitted = reads_submitted + 1 WHERE id = %(task)s::bigint "
          "RETURNING state, reads_submitted, reads_required, kind, project_id, priority, adjudication_tier, "
          "adjudication_subspecialty")
# With the submit's audit event (audit.trail.embedded_event after ``counted``): one statement.
_COUNT_AND_RECORD = ("WITH counted AS ({count}), {event}\n"
                     "SELECT counted.*, (SELECT count(*) FROM audit_event) FROM counted")


@functools.lru_cache(maxsize=16)  # one text per shape of the submit's event
def _count_and_record(event_sql: str) -> str:
    return _COUNT_AND_RECORD.format(count=_COUNT, event=event_sql)


def _count_submission(slot: QueueSlot, task: Task, now, event: EmbeddedEvent | None = None) -> tuple[bool, bool]:
    """Delete the submitted read's slot, count the read on its task and set the task's state from
    its reads (as _refresh_task_state does; the UPDATE locks the task's row). (True when that made
    the task's reads complete, True when ``event`` was appended with the count); ``task`` then
    holds the new state and counts. Plain SQL: the submit path's hottest statements."""
    with connection.cursor() as cursor:
        cursor.execute("DELETE FROM tasks_queueslot WHERE id = %(slot)s", {"slot": slot.pk})
        if event is None:
            cursor.execute(_COUNT, {"task": task.pk})
            counted, recorded = cursor.fetchone(), False
        else:
            prepared.execute_prepared(cursor, "radqueue_count_submission",
                                      _count_and_record(event.sql),
                                      {"task": task.pk, **event.args})
            *counted, recorded = cursor.fetchone()
        (state, submitted, required, kind, project_id, task.priority, task.adjudication_tier,
         task.adjudication_subspecialty) = counted
        task.state, task.reads_submitted, task.reads_required = state, submitted, required
        if state not in (TaskState.QUEUED, TaskState.IN_READING):
            return False, bool(recorded)
        cursor.execute("SELECT count(*) FROM tasks_read WHERE task_id = %(task)s AND state = %(claimed)s",
                       {"task": task.pk, "claimed": ReadState.CLAIMED})
        target = task_state_after_reads(submitted=submitted, claimed=cursor.fetchone()[0], required=required)
        if target == state:
            return False, bool(recorded)
    task.kind, task.project_id = kind, project_id
    advance_task(task, target, now=now)
    return target == TaskState.READS_COMPLETE, bool(recorded)


def _on_reads_complete(task: Task) -> None:
    """All k reads are in: agreement and consensus (tasks.consensus) take over when installed."""
    try:
        from tasks.consensus import on_reads_complete
    except ImportError:
        return
    on_reads_complete(task)


# --- leases, managers ------------------------------------------------------------------------

def sweep_expired_leases(now=None) -> int:
    """Return every slot whose lease ran out to the queue (also done lazily by claims)."""
    now = now or timezone.now()
    swept = 0
    expired = QueueSlot.objects.filter(reader__isnull=False, lease_expires_at__lt=now)
    for slot_id in expired.values_list("id", flat=True):
        with transaction.atomic():
            slot = (QueueSlot.objects.select_for_update(skip_locked=True, **ROW_LOCK)
                    .select_related("read__task__study")
                    .filter(pk=slot_id, reader__isnull=False, lease_expires_at__lt=now).first())
            if slot is None or slot.read is None:
                continue
            _expire(slot, slot.read)
            swept += 1
    # Check reads (gold, calibration) hold no slot: their lease is the read's own. They end as a
    # production read does, so nobody learns from a lease that never ran out that they hold a check.
    lapsed = Read.objects.filter(is_check=True, state=ReadState.CLAIMED, lease_expires_at__lt=now)
    for read_id in lapsed.values_list("id", flat=True):
        with transaction.atomic():
            read = (Read.objects.select_for_update(skip_locked=True, **ROW_LOCK).select_related("task__study")
                    .filter(pk=read_id, state=ReadState.CLAIMED, lease_expires_at__lt=now).first())
            if read is None:
                continue
            _expire(None, read)
            swept += 1
    return swept


def _expire(slot: QueueSlot | None, read: Read) -> None:
    free_slot(slot, read, ReadState.EXPIRED)
    record_event("expire", actor=None, project_id=read.project_id, obj=read, study_uid=read.task.study.study_uid)
    broadcast_to_reader_on_commit(read.reader_id, read.project_id, "read.expired", {"read": read.pk})


@transaction.atomic
def reassign_read(read_id, to_user: User, *, by: User) -> Read:
    """Move a claimed read, a check read too, to another eligible reader (a manager's action); the
    lease restarts and the former holder hears ``read.cancelled``."""
    read = Read.objects.select_for_update(**ROW_LOCK).select_related("task__study").filter(pk=read_id).first()
    if read is None:
        raise NotFound("No such read.")
    check_read_transition(read.state, ReadState.CANCELLED)
    rules = eligibility(to_user, [read.project_id])
    slot = None
    if read.is_check:  # no slot: the check goes only to somebody the claim could have served it to
        from tasks.gold import may_take_check

        eligible = bool(rules) and may_take_check(to_user, read.task, rules[0])
    else:
        slot = QueueSlot.objects.select_for_update(**ROW_LOCK).get(read=read)
        eligible = bool(rules) and slot.tier in rules[0].tiers and (
            not slot.subspecialty or slot.subspecialty in rules[0].subspecialties)
    if not eligible:
        raise DomainError("That person is not eligible for this read (tier, sub-specialty, calibration or "
                          "suspension).", code="not_eligible", errors={"reader": ["Not eligible."]})
    if Read.objects.filter(task_id=read.task_id, reader=to_user, state__in=LIVE_READ_STATES).exists():
        raise Conflict("That person already reads this task.", code="already_reading")
    now = timezone.now()
    advance_read(read, ReadState.CANCELLED, now=now)
    try:
        with transaction.atomic():
            new = Read.objects.create(project_id=read.project_id, task_id=read.task_id, reader=to_user,
                                      tier=rules[0].reader_tier, claimed_at=now, is_check=read.is_check,
                                      lease_expires_at=now + timedelta(seconds=lease_seconds(read.project_id)))
    except IntegrityError:
        raise Conflict("That person already reads this task.", code="already_reading") from None
    if slot is not None:
        QueueSlot.objects.filter(pk=slot.pk).update(reader=to_user, read=new, lease_expires_at=new.lease_expires_at)
    record_event("reassign", actor=by, project_id=read.project_id, obj=new, study_uid=read.task.study.study_uid,
                 extra={"from_read": read.pk, "to": to_user.pseudonym})
    broadcast_to_reader_on_commit(read.reader_id, read.project_id, "read.cancelled",
                                  {"read": read.pk, "task": read.task_id, "reason": "reassigned"})
    broadcast_to_reader_on_commit(to_user.pk, read.project_id, "read.claimed", {
        "read": new.pk, "task": new.task_id, "lease_expires_at": new.lease_expires_at.isoformat()})
    return new


@transaction.atomic
def cancel_task(task_id, *, by: User, project: Project) -> Task:
    """Cancel a task: its claimed reads end, its slots go and its adjudication closes (end_task_work)."""
    if not Task.objects.filter(pk=task_id, project=project).exists():
        raise NotFound("No such task.")
    work = lock_task_work(task_id)
    task = Task.objects.select_for_update(**ROW_LOCK).select_related("study").get(pk=task_id)
    check_task_transition(task.state, TaskState.CANCELLED)  # before any of its work ends
    end_task_work(work, by=by, reason="task_cancelled")
    advance_task(task, TaskState.CANCELLED)
    record_event("cancel", actor=by, project=project, obj=task, study_uid=task.study.study_uid)
    return task
