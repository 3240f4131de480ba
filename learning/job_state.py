"""The one writer of a learning job's state: queued -> running (-> applying) -> succeeded | failed.
Every change is saved with a heartbeat, announced on the live feed (``job.progress``) and, at the
end, audited. learning.runs starts, runs and sweeps jobs; the runners report through here."""

from datetime import timedelta

from django.conf import settings
from django.utils import timezone

from audit.trail import record_event
from core.broadcast import broadcast_on_commit
from learning.models import LearningJob


def heartbeat_timeout() -> timedelta:
    """A running job writes its heartbeat at every progress step; one silent for longer than this
    (setting LEARNING_JOB_HEARTBEAT_TIMEOUT, seconds) was killed (worker lost, OOM, time limit)
    and the sweep reverts and fails it. Set it above the longest step a GPU worker takes."""
    return timedelta(seconds=settings.LEARNING_JOB_HEARTBEAT_TIMEOUT)


def queued_timeout() -> timedelta:
    """A job no worker took in this long (setting LEARNING_JOB_QUEUED_TIMEOUT, seconds: the broker
    lost the message) would block its kind for good; the sweep fails it."""
    return timedelta(seconds=settings.LEARNING_JOB_QUEUED_TIMEOUT)


def payload(job: LearningJob) -> dict:
    return {"job": job.pk, "kind": job.kind, "state": job.state, "progress": round(job.progress, 3),
            "message": job.message, "error": job.error[:300]}


def _save(job: LearningJob, **fields) -> None:
    fields["heartbeat_at"] = timezone.now()
    for name, value in fields.items():
        setattr(job, name, value)
    LearningJob.objects.filter(pk=job.pk).update(**fields)
    broadcast_on_commit(job.project_id, "job.progress", payload(job))


def mark_running(job: LearningJob) -> None:
    _save(job, state=LearningJob.State.RUNNING, started_at=timezone.now(), message="running")


def report_progress(job: LearningJob, progress: float, message: str = "", *, state: str | None = None) -> None:
    fields = {"progress": min(max(float(progress), 0.0), 1.0), "message": message[:300] or job.message}
    if state:
        fields["state"] = state
    _save(job, **fields)


def succeed(job: LearningJob, message: str, result: dict | None = None) -> None:
    _save(job, state=LearningJob.State.SUCCEEDED, progress=1.0, message=message[:300], result=result or {},
          finished_at=timezone.now())
    record_event("complete", actor=None, project_id=job.project_id, obj=job,
                 extra={"kind": job.kind, "message": message[:300]})


def fail(job: LearningJob, reason: str) -> None:
    _save(job, state=LearningJob.State.FAILED, message="failed", error=reason[:2000], finished_at=timezone.now())
    record_event("fail", actor=None, project_id=job.project_id, obj=job, outcome="error",
                 reason=reason[:300], extra={"kind": job.kind})
