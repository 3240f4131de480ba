"""Ending a task's open work when the task leaves reading (cancelled, or settled by a gold reference):
the one place its claimed reads, queue slots and open adjudication are ended together."""

from django.utils import timezone

from audit.trail import record_event
from core.broadcast import broadcast_on_commit, broadcast_to_reader_on_commit
from core.models import User
from tasks.locks import TaskWork
from tasks.models import Adjudication, QueueSlot
from tasks.states import ReadState
from tasks.transitions import advance_read


def end_task_work(work: TaskWork, *, by: User | None, reason: str) -> None:
    """End what hangs off a task that leaves reading (``reason``: task_cancelled, task_settled):
    each claimed read is cancelled (its reader hears ``read.cancelled``; DICOMweb access and the
    open-read place end with it), the slots go, and an open or claimed adjudication is cancelled
    (a later resolution answers 409). Each end is audited."""
    now = timezone.now()
    for read in work.reads:
        advance_read(read, ReadState.CANCELLED, now=now)
        record_event("cancel", actor=by, project_id=read.project_id, obj=read, study_uid=read.task.study.study_uid,
                     extra={"task": read.task_id, "reason": reason})
        broadcast_to_reader_on_commit(read.reader_id, read.project_id, "read.cancelled",
                                      {"read": read.pk, "task": read.task_id, "reason": reason})
    QueueSlot.objects.filter(pk__in=work.slot_ids).delete()
    adjudication = work.adjudication
    if adjudication is not None:
        Adjudication.objects.filter(pk=adjudication.pk).update(state=Adjudication.State.CANCELLED,
                                                               lease_expires_at=None)
        adjudication.state = Adjudication.State.CANCELLED
        record_event("cancel", actor=by, project_id=adjudication.project_id, obj=adjudication,
                     extra={"task": work.task_id, "reason": reason})
        broadcast_on_commit(adjudication.project_id, "adjudication.cancelled",
                            {"adjudication": adjudication.pk, "task": work.task_id, "reason": reason})
