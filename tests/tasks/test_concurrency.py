"""The claim guarantees under real concurrency: threads claiming at once against PostgreSQL."""

import threading

import pytest
from django.db import connections
from django.db.models import Count

from core.memberships import grant_membership
from tasks.creation import create_tasks
from tasks.models import Read
from tasks.queue import claim_next_read
from tasks.reads import submit_read
from tasks.states import LIVE_READ_STATES, ReadState
from tests.factories import UserFactory
from tests.tasks.conftest import add_ct_studies

pytestmark = pytest.mark.django_db(transaction=True)



def _run(threads: list[threading.Thread]) -> None:
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(t.is_alive() for t in threads)


def _guarantees_hold(project) -> None:
    over_read = (Read.objects.filter(project=project, state__in=LIVE_READ_STATES).values("task")
                 .annotate(n=Count("id")).filter(n__gt=2))
    assert not over_read.exists(), "a task got more than its k reads"
    twice = (Read.objects.filter(project=project, state__in=LIVE_READ_STATES).values("task", "reader")
             .annotate(n=Count("id")).filter(n__gt=1))
    assert not twice.exists(), "a reader read one task twice"


def test_many_readers_claiming_at_once_never_overserve_a_task(cast):
    add_ct_studies(cast.project, 6)
    tasks = create_tasks(cast.project, by=cast.manager)
    readers = [UserFactory(organization=cast.vendor) for _ in range(8)]
    for reader in readers:
        grant_membership(project=cast.project, user=reader, role="annotator", by=cast.manager)
    cast.project.max_open_reads = 10
    cast.project.save()
    claimed, errors = [], []
    barrier = threading.Barrier(len(readers))

    def work(reader):
        try:
            barrier.wait()
            while (claim := claim_next_read(reader)) is not None:
                claimed.append((reader.pk, claim.task.pk))
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
        finally:
            connections.close_all()

    _run([threading.Thread(target=work, args=(r,)) for r in readers])
    assert not errors
    assert len(claimed) == 2 * len(tasks)  # every slot handed out exactly once
    assert len(set(claimed)) == len(claimed)
    _guarantees_hold(cast.project)


@pytest.mark.parametrize("after_a_claim", [False, True], ids=["first-claims", "after-a-claim"])
def test_one_reader_claiming_from_many_threads_respects_the_open_read_limit(cast, after_a_claim):
    """Eight concurrent claims of one reader, as their first claims and after one has committed:
    the reader's claim lock keeps the open-read limit."""
    add_ct_studies(cast.project, 6)
    create_tasks(cast.project, by=cast.manager)
    cast.project.max_open_reads = 3
    cast.project.save()
    results, errors = [], []
    if after_a_claim:
        results.append(claim_next_read(cast.annotator))
    barrier = threading.Barrier(8)

    def work():
        try:
            barrier.wait()
            results.append(claim_next_read(cast.annotator))
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)
        finally:
            connections.close_all()

    _run([threading.Thread(target=work) for _ in range(8)])
    assert not errors
    granted = [r for r in results if r is not None]
    assert len(granted) == 3
    assert len({c.task.pk for c in granted}) == 3
    assert Read.objects.filter(reader=cast.annotator, state=ReadState.CLAIMED).count() == 3


def test_claims_and_submits_interleaved_keep_every_guarantee(cast):
    add_ct_studies(cast.project, 8)
    tasks = create_tasks(cast.project, by=cast.manager)
    readers = [UserFactory(organization=cast.vendor) for _ in range(6)]
    for reader in readers:
        grant_membership(project=cast.project, user=reader, role="annotator", by=cast.manager)
    errors = []

    def work(reader):
        try:
            while (claim := claim_next_read(reader)) is not None:
                submit_read(claim.read.pk, reader, [])
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)
        finally:
            connections.close_all()

    _run([threading.Thread(target=work, args=(r,)) for r in readers])
    assert not errors
    submitted = Read.objects.filter(project=cast.project, state=ReadState.SUBMITTED)
    assert submitted.count() == 2 * len(tasks)
    _guarantees_hold(cast.project)
