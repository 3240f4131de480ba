"""Delivery batches: create one, add consensus tasks to it, deliver it.

Delivering moves every task consensus -> delivered through the state machine, records the audit
event, broadcasts ``batch.delivered`` after commit, and enqueues the job that computes the batch's
concordance report and builds its exports (tasks.jobs). Every refusal is a 4xx DomainError raised
before anything is written, inside one transaction, so nothing is half-stored.
"""

from django.db import IntegrityError, transaction
from django.utils import timezone

from audit.trail import record_event
from core.broadcast import broadcast_on_commit
from core.errors import Conflict, DomainError
from tasks.costs import validate_pricing
from tasks.models import Batch, Task
from tasks.progress import announce_progress
from tasks.queue import ROW_LOCK
from tasks.reports import concordance_report
from tasks.states import TaskState, check_task_transition

MAX_TASKS_PER_CALL = 10_000


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
    from tasks.jobs import build_batch_delivery_job

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
    for task in tasks:
        check_task_transition(task.state, TaskState.DELIVERED)
    now = timezone.now()
    Task.objects.filter(pk__in=[t.pk for t in tasks]).update(state=TaskState.DELIVERED, updated_at=now)
    announce_progress(batch.project_id, **{TaskState.CONSENSUS: -len(tasks), TaskState.DELIVERED: len(tasks)})
    batch.state, batch.delivered_at, batch.delivered_by = Batch.State.DELIVERED, now, by
    batch.export_state = Batch.ExportState.BUILDING
    batch.save(update_fields=["state", "delivered_at", "delivered_by", "export_state"])
    record_event("update", actor=by, project_id=batch.project_id, obj=batch,
                 extra={"change": "deliver", "tasks": len(tasks)})
    broadcast_on_commit(batch.project_id, "batch.delivered", {"batch": batch.pk, "tasks": len(tasks)})
    transaction.on_commit(lambda: build_batch_delivery_job.delay(batch.pk))
    return batch


@transaction.atomic
def request_exports(batch: Batch, *, by) -> Batch:
    """Rebuild a delivered batch's exports (after a failure, say) in the background job."""
    from tasks.jobs import build_batch_delivery_job

    batch = Batch.objects.select_for_update(**ROW_LOCK).get(pk=batch.pk)
    if batch.state != Batch.State.DELIVERED:
        raise Conflict("Exports are built when a batch is delivered; deliver it first.", code="batch_open")
    if batch.export_state == Batch.ExportState.BUILDING:
        raise Conflict("The exports are being built.", code="exports_building")
    batch.export_state = Batch.ExportState.BUILDING
    batch.save(update_fields=["export_state"])
    record_event("export", actor=by, project_id=batch.project_id, obj=batch, extra={"change": "rebuild"})
    transaction.on_commit(lambda: build_batch_delivery_job.delay(batch.pk))
    return batch


@transaction.atomic
def request_report(batch: Batch, *, by) -> Batch:
    """Recompute the batch's concordance report in the background job (open batches too: a preview)."""
    from tasks.jobs import compute_batch_report_job

    record_event("update", actor=by, project_id=batch.project_id, obj=batch, extra={"change": "report_requested"})
    transaction.on_commit(lambda: compute_batch_report_job.delay(batch.pk))
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
