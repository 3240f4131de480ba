"""Two managers batching the same consensus tasks at the same moment, on PostgreSQL: each task
ends in exactly one batch, the losing request changes nothing (not even its batch row), and the
progress tallies count each task once."""

import threading

import pytest
from django.db import connections

from core.errors import DomainError
from core.memberships import grant_membership
from core.roles import Role
from tasks.batches import create_batch
from tasks.models import Batch, Task
from tasks.progress import project_progress
from tests.delivery.conftest import consensus_tasks, laterality
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db(transaction=True)



def test_two_managers_batching_the_same_tasks_at_once_split_nothing(cast, api):
    tasks = consensus_tasks(cast, api, [laterality("left")] * 4)
    second_manager = UserFactory(username="manager2", organization=cast.manager.organization)
    grant_membership(project=cast.project, user=second_manager, role=Role.MANAGER, by=cast.manager)
    ids = [t.pk for t in tasks]
    # Overlapping asks, in different orders: [0, 1, 2] against [3, 2, 1] (locks go in id order).
    asks = {cast.manager: ("monday", ids[:3]), second_manager: ("tuesday", [ids[3], ids[2], ids[1]])}
    start, outcomes = threading.Barrier(len(asks)), {}

    def batch(user, name, task_ids):
        try:
            start.wait(timeout=30)
            outcomes[name] = create_batch(cast.project, name=name, by=user, task_ids=task_ids)
        except DomainError as exc:
            outcomes[name] = exc
        finally:
            connections.close_all()

    threads = [threading.Thread(target=batch, args=(user, name, task_ids)) for user, (name, task_ids) in asks.items()]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(t.is_alive() for t in threads)

    won = [name for name, outcome in outcomes.items() if isinstance(outcome, Batch)]
    lost = [name for name, outcome in outcomes.items() if isinstance(outcome, DomainError)]
    assert len(won) == 1 and len(lost) == 1, outcomes
    assert "Already in another batch" in str(outcomes[lost[0]].errors)
    assert not Batch.objects.filter(name=lost[0]).exists()  # all or nothing: not even the batch row
    winner = Batch.objects.get(name=won[0])
    assert sorted(Task.objects.filter(batch=winner).values_list("pk", flat=True)) == sorted(_asked(asks, won[0]))
    assert Task.objects.filter(pk__in=ids, batch__isnull=False).exclude(batch=winner).count() == 0
    batched = {b["batch"]: b["total"] for b in project_progress(cast.project, user=cast.manager)["tasks"]["by_batch"]}
    assert batched.get(winner.pk) == 3 and batched.get(None) == 1


def _asked(asks: dict, name: str) -> list[int]:
    return next(task_ids for batch_name, task_ids in asks.values() if batch_name == name)
