"""Background jobs of the audit app (Celery; in-process in the embedded default)."""

from pathlib import Path

from celery import shared_task
from django.conf import settings
from django.utils import timezone

from audit.head_anchor import anchor_file_name, write_anchor


@shared_task(name="audit.anchor_heads", time_limit=300, ignore_result=True)
def anchor_heads_job() -> str | None:
    """Write a signed head anchor into RADQUEUE_AUDIT_ANCHOR_DIR (nothing where it is unset).
    Idempotent: each run writes its own time-stamped file."""
    directory = settings.RADQUEUE_AUDIT_ANCHOR_DIR
    if not directory:
        return None
    Path(directory).mkdir(parents=True, exist_ok=True)
    return str(write_anchor(Path(directory) / anchor_file_name(timezone.now())))
