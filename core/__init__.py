# Load the Celery app with Django, so @shared_task jobs bind to its settings (eager in tests).
from core.celery import app as celery_app

__all__ = ["celery_app"]
