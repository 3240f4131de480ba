"""Delivery batches: create one, add consensus tasks to it, deliver it.

Delivering moves every task consensus -> delivered through the state machine, records the audit
event, broadcasts ``batch.delivered`` after commit, and enqueues the job that computes the batch's
concordance report and builds its exports (tasks.jobs). Every refusal is a 4xx DomainError raised
before anything is written, inside one transaction, so nothing is half-stored.

A delivery build (report, then export files) ends ready or failed, never building for good: an
error in the job marks it failed with a short reason (the log has the details: exception text may
quote anything, so it never reaches the API); a build still building BATCH_BUILD_TIMEOUT seconds
after it was asked for or taken by a worker (lost message, killed worker) is marked failed by the
beat sweep, or by the next rebuild request. A failed build can be rebuilt. Each build is named by
``export_started_at``: a job finds its build failed or superseded and records nothing.
"""

import logging
from datetime import datetime, timedelta

from celery import shared_task
from celery.exceptions import SoftTimeLimitExceeded
from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import Q
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from audit.trail import record_event
from core.broadcast import broadcast_on_commit
from core.errors import Conflict, DomainError
from core.jobs import enqueue_on_commit
from tasks.costs import validate_pricing
from tasks.exports import builder
from tasks.locks import ROW_LOCK
from tasks.models import Batch, Task
from tasks.progress import announce_progress
from tasks.reports import concordance_report
from tasks.states import TaskState
from tasks.transitions import advance_tasks

MAX_TASKS_PER_CALL = 10_000

log = logging.getLogger(__name__)


def _task_ids(task_ids) -> list[int]:
    if not isinstance(task_ids, list | tuple) or not all(isinstance(t, int) and not isinstance(t, bool)
                                                         for t in task_ids):
        raise DomainError("tasks must be a list of task ids.", errors={"tasks": ["Expected a list of integers."]})
    if len(task_ids) > MAX_TASKS_PER_CALL:
        raise DomainError(f"At most {MAX_TASKS_PER_CALL} tasks per call.", errors={"tasks": ["Too many."]})
    return sorted(set(task_ids))


def _attach(batch: Batch, task_ids: list[int]) -> list[int]:
    """Lock the tasks (in id order, as every task lock is taken) and attach them; refuse unless all qualify."""
    tasks = list(Task.objects.select_for_update(**ROW_LOCK).filter(pk__in=task_ids, project=batch.project)
                 .order_by("id"))
    found = {t.pk for t in tasks}
    errors = {}
    # Tasks of other projects are reported as unknown, like ids that do not exist: existence does not leak.
    if unknown := [pk for pk in task_ids if pk not in found]:
        errors["tasks"] = [f"Not tasks of this project: {unknown[:20]}."]
    if wrong_kind := [t.pk for t in tasks if t.kind != Task.Kind.PRODUCTION]:
        errors.setdefault("tasks", []).append(f"Gold and calibration tasks are never delivered: {wrong_kind[:20]}.")
    if not_ready := [t.pk for t in tasks if t.state != TaskState.CONSENSUS]:
        errors.setdefault("tasks", []).append(f"Only tasks with a consensus label can be delivered; these are not "
                                              f"in state consensus: {not_ready[:20]}.")
    if taken := [t.pk for t in tasks if t.batch_id is not None and t.batch_id != batch.pk]:
        errors.setdefault("tasks", []).append(f"Already in another batch: {taken[:20]}.")
    if errors:
        raise DomainError("These tasks cannot go in the batch; nothing was changed.", code="invalid_tasks",
                          errors=errors)
    Task.objects.filter(pk__in=task_ids).update(batch=batch, updated_at=timezone.now())
    announce_progress(batch.project_id, batched=len(task_ids))
    return task_ids


@transaction.atomic
def create_batch(project, *, name: str, by, pricing=None, task_ids=()) -> Batch:
    """A new open batch with these consensus tasks (possibly none yet) and a pricing snapshot."""
    if not isinstance(name, str) or not name.strip() or len(name) > 200:
        raise DomainError("A batch needs a name of 1 to 200 characters.", errors={"name": ["Required."]})
    pricing = validate_pricing(pricing)
    ids = _task_ids(list(task_ids))
    try:
        with transaction.atomic():
            batch = Batch.objects.create(project=project, name=name.strip(), pricing=pricing, created_by=by)
    except IntegrityError:
        raise Conflict(f"This project already has a batch named {name.strip()!r}.", code="batch_exists") from None
    if ids:
        _attach(batch, ids)
    record_event("create", actor=by, project=project, obj=batch, extra={"tasks": len(ids), "name": batch.name})
    return batch


@transaction.atomic
def add_tasks(batch: Batch, task_ids, *, by) -> Batch:
    """Add consensus tasks of the batch's project to an open batch (all or nothing)."""
    batch = Batch.objects.select_for_update(**ROW_LOCK).get(pk=batch.pk)
    ids = _task_ids(task_ids)
    if batch.state != Batch.State.OPEN:
        raise Conflict("This batch has been delivered; it takes no more tasks.", code="batch_delivered")
    if not ids:
        raise DomainError("Name at least one task.", errors={"tasks": ["Empty."]})
    _attach(batch, ids)
    record_event("update", actor=by, project_id=batch.project_id, obj=batch, extra={"change": "add_tasks",
                                                                                    "tasks": len(ids)})
    return batch


@transaction.atomic
def deliver_batch(batch: Batch, *, by) -> Batch:
    """Deliver an open, non-empty batch whose tasks all have consensus; the report and exports follow in a job."""
    batch = Batch.objects.select_for_update(**ROW_LOCK).get(pk=batch.pk)
    if batch.state != Batch.State.OPEN:
        raise Conflict("This batch has already been delivered.", code="batch_delivered")
    tasks = list(Task.objects.select_for_update(**ROW_LOCK).filter(batch=batch).order_by("id"))
    if not tasks:
        raise DomainError("An empty batch cannot be delivered; add consensus tasks first.", code="batch_empty")
    not_ready = [t.pk for t in tasks if t.state != TaskState.CONSENSUS]
    if not_ready:
        raise DomainError("Every task of a delivered batch needs a consensus label; nothing was delivered.",
                          code="tasks_not_consensus", errors={"tasks": [f"Not in state consensus: {not_ready[:20]}."]})
    advance_tasks(tasks, TaskState.DELIVERED, project_id=batch.project_id)
    now = timezone.now()
    batch.state, batch.delivered_at, batch.delivered_by = Batch.State.DELIVERED, now, by
    batch.save(update_fields=["state", "delivered_at", "delivered_by"])
    record_event("update", actor=by, project_id=batch.project_id, obj=batch,
                 extra={"change": "deliver", "tasks": len(tasks)})
    broadcast_on_commit(batch.project_id, "batch.delivered", {"batch": batch.pk, "tasks": len(tasks)})
    _start_build(batch)  # after the broadcast: an in-process build's batch.exports_ready follows batch.delivered
    return batch


@transaction.atomic
def request_exports(batch: Batch, *, by) -> Batch:
    """Rebuild a delivered batch's report and exports in the background job: after a failure, or
    over a ready build; a build running for less than the timeout is refused (409), a longer one
    is marked failed first. The row lock makes concurrent requests start one build."""
    batch = Batch.objects.select_for_update(**ROW_LOCK).get(pk=batch.pk)
    if batch.state != Batch.State.DELIVERED:
        raise Conflict("Exports are built when a batch is delivered; deliver it first.", code="batch_open")
    if batch.export_state == Batch.ExportState.BUILDING:
        if not _is_stale(batch, timezone.now()):
            raise Conflict(f"The exports are being built (since {batch.export_started_at:%Y-%m-%d %H:%M:%S} UTC). "
                           f"A build that does not finish within {settings.BATCH_BUILD_TIMEOUT} s is marked failed "
                           "and can then be rebuilt.", code="exports_building")
        _fail_build(batch, _timeout_reason(), by=by, change="build_timeout")
    previous = batch.export_state
    _start_build(batch)
    record_event("export", actor=by, project_id=batch.project_id, obj=batch,
                 extra={"change": "rebuild", "after": previous})
    return batch


@transaction.atomic
def request_report(batch: Batch, *, by) -> Batch:
    """Recompute the batch's concordance report in the background job (open batches too: a preview)."""
    record_event("update", actor=by, project_id=batch.project_id, obj=batch, extra={"change": "report_requested"})
    enqueue_on_commit(compute_batch_report_job, batch.pk)  # the broker down: 503, nothing recorded
    return batch


@transaction.atomic
def store_batch_report(batch_id: int) -> Batch:
    """Compute the batch's concordance report (pseudonymous scorecards) and store it with the batch."""
    batch = Batch.objects.select_for_update(**ROW_LOCK).select_related("project").get(pk=batch_id)
    report = concordance_report(batch.project, named=False, batch=batch)
    batch.report, batch.report_computed_at = report, timezone.now()
    batch.save(update_fields=["report", "report_computed_at"])
    record_event("update", project_id=batch.project_id, obj=batch, extra={"change": "report",
                                                                         "tasks": report["tasks"]})
    return batch


# --- the delivery build ---------------------------------------------------------------------

def build_timeout() -> timedelta:
    """How long a build may stay building (setting BATCH_BUILD_TIMEOUT, seconds) before it counts as lost."""
    return timedelta(seconds=settings.BATCH_BUILD_TIMEOUT)


def _timeout_reason() -> str:
    return f"The build did not finish within {settings.BATCH_BUILD_TIMEOUT} s."


def _is_stale(batch: Batch, now: datetime) -> bool:
    # No start time: building since before builds were timed; nothing will finish it.
    return batch.export_started_at is None or batch.export_started_at < now - build_timeout()


def _is_current(batch: Batch, started: datetime | None) -> bool:
    """Whether the build a job was given is still the batch's (None: a direct call, always)."""
    return started is None or (batch.export_state == Batch.ExportState.BUILDING
                               and batch.export_started_at == started)


def _start_build(batch: Batch) -> None:
    """Mark the locked batch building and enqueue its job after commit, naming the build by its start.
    The broker down: JobQueueUnavailable (503) rolls the whole delivery or rebuild back."""
    started = timezone.now()
    batch.export_state, batch.export_started_at, batch.export_error = Batch.ExportState.BUILDING, started, ""
    batch.save(update_fields=["export_state", "export_started_at", "export_error"])
    enqueue_on_commit(build_batch_delivery_job, batch.pk, started.isoformat(),
                      on_lost=lambda: _build_not_queued(batch.pk, started))


def _build_not_queued(batch_id: int, started: datetime) -> None:
    """The broker failed between the check and the send: the build is failed now, not left building
    until the sweep; a rebuild queues it again."""
    with transaction.atomic():
        batch = Batch.objects.select_for_update(**ROW_LOCK).get(pk=batch_id)
        if _is_current(batch, started):
            _fail_build(batch, "The build's job could not be queued (the job queue was unreachable); ask for a "
                               "rebuild.", change="build_not_queued")


def _fail_build(batch: Batch, reason: str, *, by=None, change: str = "build") -> None:
    """Record the locked batch's build as failed, with a reason fit for the API and the audit trail (no PHI)."""
    batch.export_state, batch.export_error = Batch.ExportState.FAILED, reason[:300]
    batch.save(update_fields=["export_state", "export_error"])
    record_event("export", actor=by, project_id=batch.project_id, obj=batch, outcome="error", reason=batch.export_error,
                 extra={"change": change})


def fail_stale_builds(now: datetime | None = None) -> int:
    """Mark failed every build older than the timeout (the beat sweep); returns how many."""
    now = now or timezone.now()
    stale = Batch.objects.filter(Q(export_started_at__lt=now - build_timeout()) | Q(export_started_at__isnull=True),
                                 export_state=Batch.ExportState.BUILDING)
    failed = 0
    for pk in stale.values_list("pk", flat=True):
        with transaction.atomic():
            # Skip a batch whose row a rebuild request holds: that request settles it.
            batch = Batch.objects.select_for_update(skip_locked=True, **ROW_LOCK).filter(pk=pk).first()
            if batch is None or batch.export_state != Batch.ExportState.BUILDING or not _is_stale(batch, now):
                continue
            _fail_build(batch, _timeout_reason(), change="build_timeout")
            log.warning("batch %s: build marked failed, not finished within %s s", pk, settings.BATCH_BUILD_TIMEOUT)
            failed += 1
    return failed


def _take_build(batch_id: int, build: str) -> datetime | None:
    """Restamp the named build as started now (the timeout counts from the worker's start); None
    when it is no longer the batch's (failed by the sweep, superseded by a rebuild)."""
    asked, started = parse_datetime(build), timezone.now()
    taken = Batch.objects.filter(pk=batch_id, export_state=Batch.ExportState.BUILDING,
                                 export_started_at=asked).update(export_started_at=started)
    return started if taken else None


def build_delivery(batch_id: int, build: str | None = None) -> Batch | None:
    """The delivery job: the batch's concordance report, then its export files, for the build named
    ``build`` (its start, ISO 8601; None builds unconditionally). None when that build is no longer
    the batch's. Errors mark the build failed and are logged, never raised: the in-process job runs
    inside the request that delivered."""
    started = None
    if build is not None and (started := _take_build(batch_id, build)) is None:
        log.info("batch %s: build %s was failed or superseded before it started; nothing done", batch_id, build)
        return None
    try:
        store_batch_report(batch_id)
    except Exception as exc:
        return _build_failed(batch_id, started, "The concordance report could not be computed", exc)
    return build_batch_exports(batch_id, started)


def build_batch_exports(batch_id: int, started: datetime | None = None) -> Batch | None:
    """Build the batch's export files and record them (ready), or record that they failed; see build_delivery."""
    batch = Batch.objects.select_related("project").get(pk=batch_id)
    try:
        entries = builder.build_files(batch)
    except Exception as exc:
        return _build_failed(batch_id, started, "The export files could not be built", exc)
    with transaction.atomic():
        batch = Batch.objects.select_for_update(**ROW_LOCK).get(pk=batch_id)
        if not _is_current(batch, started):
            log.warning("batch %s: a build finished after it was failed or superseded; its files are not recorded",
                        batch_id)
            return None
        batch.export_state, batch.exports, batch.export_error = Batch.ExportState.READY, entries, ""
        batch.exports_built_at = timezone.now()
        batch.save(update_fields=["export_state", "exports", "export_error", "exports_built_at"])
        record_event("export", project_id=batch.project_id, obj=batch, extra={"change": "build", "files": len(entries)})
        broadcast_on_commit(batch.project_id, "batch.exports_ready", {"batch": batch.pk, "files": len(entries)})
    return batch


def _build_failed(batch_id: int, started: datetime | None, stage: str, exc: Exception) -> Batch | None:
    log.error("batch %s: %s", batch_id, stage, exc_info=exc)
    if isinstance(exc, SoftTimeLimitExceeded):
        reason = _timeout_reason()
    else:  # the exception's class only: its text may quote data
        reason = f"{stage} ({type(exc).__name__}); the server log has the details."
    with transaction.atomic():
        batch = Batch.objects.select_for_update(**ROW_LOCK).get(pk=batch_id)
        if not _is_current(batch, started):
            return None
        _fail_build(batch, reason)
    return batch


# --- the Celery jobs (beside the code that queues them; tasks.jobs lists them for the worker) ---------

# Soft limit: the job records the timeout itself; hard limit: the worker kills it before the sweep's
# bound (BATCH_BUILD_TIMEOUT), so a build the sweep marks failed is no longer writing files.
@shared_task(name="tasks.build_batch_delivery", ignore_result=True, soft_time_limit=settings.BATCH_BUILD_TIMEOUT - 120,
             time_limit=settings.BATCH_BUILD_TIMEOUT - 60)
def build_batch_delivery_job(batch_id: int, build: str | None = None) -> None:
    """A delivered batch's concordance report and export files, for the build named by ``build``
    (when it was asked for, ISO 8601). Idempotent: a rerun replaces both; a superseded build does nothing."""
    build_delivery(batch_id, build)


@shared_task(name="tasks.fail_stale_batch_builds", time_limit=300, ignore_result=True)
def fail_stale_batch_builds_job() -> int:
    """Mark failed the delivery builds that outlived BATCH_BUILD_TIMEOUT (lost message, dead worker)."""
    return fail_stale_builds()


@shared_task(name="tasks.compute_batch_report", time_limit=3600, ignore_result=True)
def compute_batch_report_job(batch_id: int) -> None:
    """A batch's concordance report, on demand (open batches too). Idempotent."""
    store_batch_report(batch_id)
