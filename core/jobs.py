"""Background jobs of the core app, and the one way every app queues a job: ``enqueue_on_commit``
(Celery with Redis as its broker; in-process in the embedded default)."""

import uuid
from collections.abc import Callable

from celery import shared_task
from django.db import transaction
from kombu.exceptions import OperationalError as BrokerError

from core import outages
from core.auth import purge_expired_tokens

# How long the check before commit waits for the broker: a Redis that is down refuses at once,
# one that hangs should not hold the request's row locks for long.
BROKER_CHECK_SECONDS = 2.0


def enqueue_on_commit(job, *args, on_lost: Callable[[], None] | None = None) -> str:
    """Queue ``job(*args)`` when the current transaction commits; returns the Celery task id it will have.

    The broker is asked first, inside the transaction: while it is unreachable this raises
    core.outages.JobQueueUnavailable (the API answers 503 ``queue_unavailable`` with Retry-After),
    so the transaction rolls back and no row is left waiting for a job that was never queued. The
    job is sent after commit, so a worker never looks for rows it cannot see yet. Should the broker
    fail between the check and the send (a window of milliseconds), the writes have committed:
    ``on_lost`` then settles them (marks the build or the job failed, which can be started again)
    and nothing is raised, since the change the request asked for did happen. In-process (eager)
    jobs run at commit as before, their errors propagating.
    """
    from core.celery import app  # the configured app (broker, eager mode), not Celery's default

    task_id = str(uuid.uuid4())
    if app.conf.task_always_eager:
        transaction.on_commit(lambda: job.apply_async(args, task_id=task_id))
        return task_id
    _check_broker(app)

    def send() -> None:
        try:
            job.apply_async(args, task_id=task_id)
        except (BrokerError, *outages.REDIS_UNREACHABLE) as exc:
            outages.broker.failed(exc)
            if on_lost is not None:
                on_lost()

    transaction.on_commit(send)
    return task_id


def _check_broker(app) -> None:
    try:
        with app.connection_for_write() as connection:
            # Redis' transport pings when it connects: refused, reset or silent all fail here.
            connection.ensure_connection(max_retries=1, interval_start=0, interval_step=0,
                                         timeout=BROKER_CHECK_SECONDS)
    except (BrokerError, *outages.REDIS_UNREACHABLE, OSError) as exc:
        outages.broker.failed(exc)
        raise outages.JobQueueUnavailable("Celery's broker is unreachable") from exc
    outages.broker.succeeded()


@shared_task(name="core.purge_expired_tokens", time_limit=300, ignore_result=True)
def purge_expired_tokens_job() -> int:
    """Delete expired API tokens (requests already refuse them). Idempotent."""
    return purge_expired_tokens()
