"""Background jobs of the reading queue (Celery; in-process in the embedded default)."""

from celery import shared_task

from tasks.batches import (  # noqa: F401 - defined beside the code that queues them
    build_batch_delivery_job,
    compute_batch_report_job,
    fail_stale_batch_builds_job,
)
from tasks.reads import sweep_expired_leases


@shared_task(name="tasks.sweep_expired_leases", time_limit=300, ignore_result=True)
def sweep_expired_leases_job() -> int:
    """Return every read whose lease ran out to the queue. Idempotent."""
    return sweep_expired_leases()



