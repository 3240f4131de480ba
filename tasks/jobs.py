"""Background jobs of the reading queue (Celery; in-process in the embedded default)."""

from celery import shared_task

from tasks.queue import sweep_expired_leases


@shared_task(name="tasks.sweep_expired_leases", time_limit=300, ignore_result=True)
def sweep_expired_leases_job() -> int:
    """Return every read whose lease ran out to the queue. Idempotent."""
    return sweep_expired_leases()


@shared_task(name="tasks.build_batch_delivery", time_limit=3 * 3600, ignore_result=True)
def build_batch_delivery_job(batch_id: int) -> None:
    """A delivered batch's concordance report and export files. Idempotent: a rerun replaces both."""
    from tasks.batches import store_batch_report
    from tasks.exports.builder import build_batch_exports

    store_batch_report(batch_id)
    build_batch_exports(batch_id)


@shared_task(name="tasks.compute_batch_report", time_limit=3600, ignore_result=True)
def compute_batch_report_job(batch_id: int) -> None:
    """A batch's concordance report, on demand (open batches too). Idempotent."""
    from tasks.batches import store_batch_report

    store_batch_report(batch_id)
