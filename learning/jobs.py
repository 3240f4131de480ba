"""Background jobs of active learning (Celery on Redis; in-process in the embedded default).

The job functions take ids and call one service; learning.ml (torch) is imported only inside the
predictor the runner uses, in the worker, never in the web process.
"""

from celery import shared_task

from learning import runs, triggers
from learning.runs import run_learning_job  # noqa: F401 - defined beside start_job, which queues it


@shared_task(name="learning.sweep_stale_jobs", time_limit=600, ignore_result=True)
def sweep_stale_jobs_job() -> int:
    """Revert and fail jobs whose worker died (no heartbeat)."""
    return runs.sweep_stale_jobs()


@shared_task(name="learning.start_scheduled_training", time_limit=300, ignore_result=True)
def start_scheduled_training_job() -> int:
    return triggers.start_scheduled_training()
