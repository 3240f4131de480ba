"""Learning jobs: start one, report its progress, finish or fail it, and sweep the ones whose
worker died. Job state is visible through REST and the live feed (``job.progress``)."""

import logging
from datetime import timedelta

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from audit.trail import record_event
from core.broadcast import broadcast_on_commit
from core.errors import Conflict
from core.jobs import enqueue_on_commit
from core.models import Project, User
from learning.models import LearningJob

log = logging.getLogger(__name__)


def heartbeat_timeout() -> timedelta:
    """A running job writes its heartbeat at every progress step; one silent for longer than this
    (setting LEARNING_JOB_HEARTBEAT_TIMEOUT, seconds) was killed (worker lost, OOM, time limit)
    and the sweep reverts and fails it. Set it above the longest step a GPU worker takes."""
    return timedelta(seconds=settings.LEARNING_JOB_HEARTBEAT_TIMEOUT)


def queued_timeout() -> timedelta:
    """A job no worker took in this long (setting LEARNING_JOB_QUEUED_TIMEOUT, seconds: the broker
    lost the message) would block its kind for good; the sweep fails it."""
    return timedelta(seconds=settings.LEARNING_JOB_QUEUED_TIMEOUT)


def _payload(job: LearningJob) -> dict:
    return {"job": job.pk, "kind": job.kind, "state": job.state, "progress": round(job.progress, 3),
            "message": job.message, "error": job.error[:300]}


@transaction.atomic
def start_job(project: Project, kind: str, *, by: User | None, trigger: str = "manual",
              enqueue: bool = True) -> LearningJob:
    """Queue a job (409 when one of the same kind is live for the project); runs on commit. The
    broker down: core.outages.JobQueueUnavailable (503), and no job is created."""
    from learning.jobs import run_learning_job

    try:
        with transaction.atomic():
            job = LearningJob.objects.create(project=project, kind=kind, requested_by=by, trigger=trigger,
                                             message="queued")
    except IntegrityError:
        raise Conflict(f"A {kind} job is already queued or running for this project.", code="job_running") from None
    record_event("create", actor=by, project=project, obj=job, extra={"kind": kind, "trigger": trigger})
    broadcast_on_commit(project.pk, "job.progress", _payload(job))
    if enqueue:
        job.celery_task_id = enqueue_on_commit(run_learning_job, job.pk, on_lost=lambda: _not_queued(job.pk))
        LearningJob.objects.filter(pk=job.pk).update(celery_task_id=job.celery_task_id)
    return job


def _not_queued(job_id: int) -> None:
    """The broker failed between the check and the send: fail the job now rather than at the queued timeout."""
    with transaction.atomic():
        if LearningJob.objects.filter(pk=job_id, state=LearningJob.State.QUEUED).update(
                state=LearningJob.State.FAILED):
            fail(LearningJob.objects.get(pk=job_id), "its message could not be queued (the job queue was "
                                                     "unreachable); start it again")


def _save(job: LearningJob, **fields) -> None:
    fields["heartbeat_at"] = timezone.now()
    for name, value in fields.items():
        setattr(job, name, value)
    LearningJob.objects.filter(pk=job.pk).update(**fields)
    broadcast_on_commit(job.project_id, "job.progress", _payload(job))


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


def run_job(job_id: int, predictor=None) -> LearningJob:
    """Run a queued job to its end; any error fails it, with priorities restored (learning.scoring)."""
    from learning import preannotation, scoring, training
    from learning.predictors import get_predictor

    job = LearningJob.objects.select_related("project", "requested_by").get(pk=job_id)
    if job.state != LearningJob.State.QUEUED:
        return job  # idempotent: a redelivered message finds the job already taken
    claimed = LearningJob.objects.filter(pk=job.pk, state=LearningJob.State.QUEUED).update(
        state=LearningJob.State.RUNNING, started_at=timezone.now(), heartbeat_at=timezone.now())
    if not claimed:
        return job
    mark_running(job)
    predictor = predictor or get_predictor()
    runner = {LearningJob.Kind.TRAIN: training.train_model, LearningJob.Kind.SCORE: scoring.score_queue,
              LearningJob.Kind.PREANNOTATE: preannotation.preannotate}[job.kind]
    try:
        runner(job, predictor)
    except Exception as exc:  # the job records why; the queue is as it was (scoring reverts itself)
        log.exception("learning job %s failed", job.pk)
        scoring.revert_job(job)
        fail(job, f"{type(exc).__name__}: {exc}")
    job.refresh_from_db()
    return job


def sweep_stale_jobs(now=None) -> int:
    """Revert and fail live jobs whose heartbeat stopped (the worker was killed)."""
    from learning import scoring

    now = now or timezone.now()
    stale = LearningJob.objects.filter(state__in=[LearningJob.State.RUNNING, LearningJob.State.APPLYING],
                                       heartbeat_at__lt=now - heartbeat_timeout())
    swept = 0
    for job in stale:
        restored = scoring.revert_job(job)
        fail(job, f"no heartbeat since {job.heartbeat_at.isoformat()}: the worker stopped; "
                  f"{restored} task priorities restored")
        swept += 1
    for job in LearningJob.objects.filter(state=LearningJob.State.QUEUED, created_at__lt=now - queued_timeout()):
        if LearningJob.objects.filter(pk=job.pk, state=LearningJob.State.QUEUED).update(
                state=LearningJob.State.FAILED):
            fail(job, f"no worker started it within {queued_timeout()}")
            swept += 1
    return swept
