"""Background jobs of the reading queue (Celery; in-process in the embedded default)."""

from celery import shared_task
from django.conf import settings

from tasks.queue import sweep_expired_leases


@shared_task(name="tasks.sweep_expired_leases", time_limit=300, ignore_result=True)
def sweep_expired_leases_job() -> int:
    """Return every read whose lease ran out to the queue. Idempotent."""
    return sweep_expired_leases()


# Soft limit: the job records the timeout itself; hard limit: the worker kills it before the sweep's
# bound (BATCH_BUILD_TIMEOUT), so a build the sweep marks failed is no longer writing files.
@shared_task(name="tasks.build_batch_delivery", ignore_result=True, soft_time_limit=settings.BATCH_BUILD_TIMEOUT - 120,
             time_limit=settings.BATCH_BUILD_TIMEOUT - 60)
def build_batch_delivery_job(batch_id: int, build: str | None = None) -> None:
    """A delivered batch's concordance report and export files, for the build named by ``build``
    (when it was asked for, ISO 8601). Idempotent: a rerun replaces both; a superseded build does nothing."""
    from tasks.batches import build_delivery

    build_delivery(batch_id, build)


@shared_task(name="tasks.fail_stale_batch_builds", time_limit=300, ignore_result=True)
def fail_stale_batch_builds_job() -> int:
    """Mark failed the delivery builds that outlived BATCH_BUILD_TIMEOUT (lost message, dead worker)."""
    from tasks.batches import fail_stale_builds

    return fail_stale_builds()


@shared_task(name="tasks.compute_batch_report", time_limit=3600, ignore_result=True)
def compute_batch_report_job(batch_id: int) -> None:
    """A batch's concordance report, on demand (open batches too). Idempotent."""
    from tasks.batches import store_batch_report

    store_batch_report(batch_id)
