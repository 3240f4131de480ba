"""Background jobs of active learning (Celery on Redis; in-process in the embedded default).

The job functions take ids and call one service; learning.ml (torch) is imported only inside the
predictor the runner uses, in the worker, never in the web process.
"""

from celery import shared_task
from django.conf import settings

from learning import runs, triggers


@shared_task(name="learning.run_job", ignore_result=True, acks_late=True,
             time_limit=getattr(settings, "CELERY_TASK_TIME_LIMIT", 6 * 3600))
def run_learning_job(job_id: int) -> None:
    """Run a queued training, scoring or pre-annotation job. Idempotent (a taken job is skipped)."""
    runs.run_job(job_id)


@shared_task(name="learning.sweep_stale_jobs", time_limit=600, ignore_result=True)
def sweep_stale_jobs_job() -> int:
    """Revert and fail jobs whose worker died (no heartbeat)."""
    return runs.sweep_stale_jobs()


@shared_task(name="learning.start_scheduled_training", time_limit=300, ignore_result=True)
def start_scheduled_training_job() -> int:
    return triggers.start_scheduled_training()
