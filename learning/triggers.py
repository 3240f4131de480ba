"""When training starts by itself: after N new consensus labels, or on the project's schedule."""

from datetime import timedelta

from django.db import connection, transaction
from django.utils import timezone

from core.errors import Conflict
from core.models import Project
from core.outages import JobQueueUnavailable
from learning.models import LearningConfig, LearningJob

_RETRAIN_AFTER = (f"SELECT retrain_after_consensus FROM {LearningConfig._meta.db_table} "
                  "WHERE project_id = %(project)s AND retrain_after_consensus > 0")


def on_consensus_stored(project_id: int) -> LearningJob | None:
    """Called where a consensus is stored: queue a training once N labels came in since the last one."""
    from learning.runs import start_job
    from learning.training import consensus_since_last_training

    # Plain SQL: this runs in the transaction of every task's last submit, and most projects set
    # no count (building the ORM's query cost several times running it).
    with connection.cursor() as cursor:
        cursor.execute(_RETRAIN_AFTER, {"project": project_id})
        found = cursor.fetchone()
    if found is None:
        return None
    if consensus_since_last_training(project_id) < found[0]:
        return None
    if LearningJob.objects.filter(project_id=project_id, kind=LearningJob.Kind.TRAIN,
                                  state__in=["queued", "running", "applying"]).exists():
        return None
    try:
        with transaction.atomic():
            return start_job(Project.objects.get(pk=project_id), LearningJob.Kind.TRAIN, by=None, trigger="consensus")
    except (Conflict, JobQueueUnavailable):
        # With the broker down the submit still succeeds: the next consensus asks again.
        return None


def start_scheduled_training(now=None) -> int:
    """Queue a training for every project whose ``retrain_every_hours`` has passed since the last one."""
    from learning.runs import start_job

    now = now or timezone.now()
    started = 0
    for config in LearningConfig.objects.filter(retrain_every_hours__gt=0).select_related("project"):
        last = LearningJob.objects.filter(project_id=config.project_id, kind=LearningJob.Kind.TRAIN).order_by(
            "-created_at").first()
        if last is not None and (last.is_live or last.created_at > now - timedelta(hours=config.retrain_every_hours)):
            continue
        try:
            with transaction.atomic():
                start_job(config.project, LearningJob.Kind.TRAIN, by=None, trigger="schedule")
            started += 1
        except (Conflict, JobQueueUnavailable):  # the broker down: the next run of the schedule asks again
            continue
    return started
