"""Learning jobs: start one, run it (training, scoring or pre-annotation), and sweep the ones whose
worker died. Their state changes go through learning.job_state, visible through REST and the live
feed (``job.progress``)."""

import logging

from celery import shared_task
from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from audit.trail import record_event
from core.broadcast import broadcast_on_commit
from core.errors import Conflict
from core.jobs import enqueue_on_commit
from core.models import Project, User
from learning import preannotation, scoring, training
from learning.job_state import fail, heartbeat_timeout, mark_running, payload, queued_timeout
from learning.models import LearningJob

log = logging.getLogger(__name__)


@transaction.atomic
def start_job(project: Project, kind: str, *, by: User | None, trigger: str = "manual",
              enqueue: bool = True) -> LearningJob:
    """Queue a job (409 when one of the same kind is live for the project); runs on commit. The
    broker down: core.outages.JobQueueUnavailable (503), and no job is created."""
    try:
        with transaction.atomic():
            job = LearningJob.objects.create(project=project, kind=kind, requested_by=by, trigger=trigger,
                                             message="queued")
    except IntegrityError:
        raise Conflict(f"A {kind} job is already queued or running for this project.", code="job_running") from None
    record_event("create", actor=by, project=project, obj=job, extra={"kind": kind, "trigger": trigger})
    broadcast_on_commit(project.pk, "job.progress", payload(job))
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


def run_job(job_id: int, predictor=None) -> LearningJob:
    """Run a queued job to its end; any error fails it, with priorities restored (learning.scoring)."""
    from learning.predictors import get_predictor  # the worker's predictor (torch) loads only here

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


# The Celery task lives beside start_job, which queues it (learning.jobs lists it for the worker).
@shared_task(name="learning.run_job", ignore_result=True, acks_late=True,
             time_limit=getattr(settings, "CELERY_TASK_TIME_LIMIT", 6 * 3600))
def run_learning_job(job_id: int) -> None:
    """Run a queued training, scoring or pre-annotation job. Idempotent (a taken job is skipped)."""
    run_job(job_id)
