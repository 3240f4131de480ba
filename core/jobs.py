"""Background jobs of the core app (Celery; in-process in the embedded default)."""

from celery import shared_task

from core.auth import purge_expired_tokens


@shared_task(name="core.purge_expired_tokens", time_limit=300, ignore_result=True)
def purge_expired_tokens_job() -> int:
    """Delete expired API tokens (requests already refuse them). Idempotent."""
    return purge_expired_tokens()
