"""The Celery app: Redis broker in production (REDIS_URL); jobs run in-process otherwise
(CELERY_TASK_ALWAYS_EAGER). Jobs live in each app's jobs.py."""

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "core.settings")

app = Celery("radqueue")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks(related_name="jobs")
