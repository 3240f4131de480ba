"""Project progress: the trigger-kept tallies equal a recount from the tables after a day of work
driven through the real services, and clients see aggregates only."""

import asyncio
import threading
from collections import Counter, defaultdict
from datetime import timedelta

import pytest
from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.core.management import call_command
from django.db import connections, transaction
from django.utils import timezone

from core.broadcast import project_group
from core.dicom import synthetic
from core.memberships import grant_membership
from core.roles import Tier
from tasks import batches
from tasks.adjudication import claim_next_adjudication, resolve_adjudication
from tasks.creation import create_tasks
from tasks.models import Adjudication, Consensus, Read, Task, TaskTally, TaskTallyDelta
from tasks.progress import project_progress
from tasks.queue import claim_next_read
from tasks.reads import cancel_task, release_read, submit_read, sweep_expired_leases
from tasks.states import ReadState, TaskState
from tests.factories import UserFactory
from tests.tasks.conftest import add_ct_studies, ingest_series

pytestmark = pytest.mark.django_db


def _laterality(value):
    return [{"label": "finding_laterality", "value": value}]


def _claim(user):
    claim = claim_next_read(user)
    assert claim is not None, f"{user.username} found nothing to claim"
    return claim.read


def _simulated_day(cast, api):
    """Claims, submits, releases, an expiry, agreement, an adjudication, a cancel, a batch delivered."""
    add_ct_studies(cast.project, 6)
    for n in range(2):
        ingest_series(cast.project, synthetic.make_ct_series(n_slices=2, rows=8, cols=8, modality="MR", seed=300 + n,
                                                             patient={"name": f"MR^{n}", "id": f"M{n}"}))
    tasks = create_tasks(cast.project, by=cast.manager)
    manager_client = api(cast.manager)
    assert manager_client.get(f"/api/projects/{cast.project.pk}/progress/").status_code == 200  # folds mid-day

    # Task A: both readers agree -> consensus.
    a1, a2 = _claim(cast.annotator), _claim(cast.second_annotator)
    assert a1.task_id == a2.task_id
    submit_read(a1.pk, cast.annotator, _laterality("left"))
    submit_read(a2.pk, cast.second_annotator, _laterality("left"))
    # Task B: they disagree -> adjudication, resolved by the radiologist.
    b1, b2 = _claim(cast.annotator), _claim(cast.second_annotator)
    submit_read(b1.pk, cast.annotator, _laterality("left"))
    submit_read(b2.pk, cast.second_annotator, _laterality("right"))
    assert manager_client.get(f"/api/projects/{cast.project.pk}/progress/").json()["tasks"]["by_state"][
        TaskState.AWAITING_ADJUDICATION] == 1
    adjudication = claim_next_adjudication(cast.radiologist)
    resolve_adjudication(adjudication.pk, cast.radiologist, resolution="read", read_id=b1.pk, rationale="Left apex.")
    # Task C: agreed with no finding at all.
    c1, c2 = _claim(cast.annotator), _claim(cast.second_annotator)
    submit_read(c1.pk, cast.annotator, [])
    submit_read(c2.pk, cast.second_annotator, [])
    # A release and an expiry put reads back in the queue.
    released = _claim(cast.annotator)
    release_read(released.pk, cast.annotator)
    expiring = _claim(cast.second_annotator)
    assert sweep_expired_leases(now=timezone.now() + timedelta(days=1)) >= 1
    assert Read.objects.get(pk=expiring.pk).state == ReadState.EXPIRED
    # One read in flight, one submitted of two, one task cancelled with a read open.
    _claim(cast.annotator)
    half = _claim(cast.second_annotator)
    submit_read(half.pk, cast.second_annotator, _laterality("right"))
    open_task = Task.objects.filter(project=cast.project, state=TaskState.QUEUED).order_by("-id").first()
    cancel_task(open_task.pk, by=cast.manager, project=cast.project)
    # Deliver A and B in a batch; C stays in consensus.
    batch = batches.create_batch(cast.project, name="Week 1", by=cast.manager, task_ids=[a1.task_id, b1.task_id])
    batches.deliver_batch(batch, by=cast.manager)
    return tasks


def _expected(project) -> dict:
    """The progress figures recounted with plain ORM queries over the tables."""
    production = Task.objects.filter(project=project, kind=Task.Kind.PRODUCTION).select_related("study", "series")
    by_state = {state: 0 for state in TaskState.values}
    by_modality: dict[str, Counter] = defaultdict(Counter)
    by_batch: dict = defaultdict(Counter)
    reads_left = 0
    for task in production:
        by_state[task.state] += 1
        modality = task.series.modality if task.series else "/".join(task.study.modalities)
        by_modality[modality][task.state] += 1
        by_batch[task.batch_id][task.state] += 1
        if task.state in (TaskState.QUEUED, TaskState.IN_READING):
            reads_left += task.reads_required - task.reads_submitted
    classes: Counter = Counter()
    empty = 0
    for consensus in Consensus.objects.filter(task__in=production):
        labels = {f["label"] for f in consensus.findings}
        classes.update(labels)
        empty += not labels
    submitted = Read.objects.filter(project=project, state=ReadState.SUBMITTED)
    per_tier = {t.label: {"reads": 0, "check_reads": 0, "adjudications": 0, "reader_hours": 0.0} for t in Tier}
    per_day: dict[str, Counter] = defaultdict(Counter)
    for read in submitted:
        key = "check_reads" if read.is_check else "reads"
        per_tier[Tier(read.tier).label][key] += 1
        per_tier[Tier(read.tier).label]["reader_hours"] += read.active_seconds / 3600
        per_day[read.submitted_at.date().isoformat()][key] += 1
    for adjudication in Adjudication.objects.filter(project=project, state=Adjudication.State.RESOLVED):
        per_tier[Tier(adjudication.adjudicator_tier).label]["adjudications"] += 1
        per_day[adjudication.resolved_at.date().isoformat()]["adjudications"] += 1
    return {"by_state": by_state, "by_modality": by_modality, "by_batch": by_batch, "reads_left": reads_left,
            "classes": classes, "empty": empty, "per_tier": per_tier, "per_day": per_day,
            "awaiting": by_state[TaskState.AWAITING_ADJUDICATION]}


def _assert_matches(body: dict, expected: dict) -> None:
    tasks = body["tasks"]
    assert tasks["by_state"] == expected["by_state"]
    assert tasks["total"] == sum(expected["by_state"].values())
    assert tasks["done"] == expected["by_state"][TaskState.CONSENSUS] + expected["by_state"][TaskState.DELIVERED]
    assert {row["modality"]: Counter({k: v for k, v in row["by_state"].items() if v})
            for row in tasks["by_modality"]} == expected["by_modality"]
    assert {row["batch"]: Counter({k: v for k, v in row["by_state"].items() if v})
            for row in tasks["by_batch"]} == expected["by_batch"]
    assert {row["finding_class"]: row["tasks"] for row in body["by_finding_class"]} == expected["classes"]
    assert body["tasks_without_findings"] == expected["empty"]
    assert body["eta"]["reads_left"] == expected["reads_left"]
    assert body["eta"]["awaiting_adjudication"] == expected["awaiting"]
    for tier, figures in expected["per_tier"].items():
        got = body["throughput"]["by_tier"][tier]
        assert {k: got[k] for k in ("reads", "check_reads", "adjudications")} == {
            k: figures[k] for k in ("reads", "check_reads", "adjudications")}
        assert got["reader_hours"] == pytest.approx(figures["reader_hours"], abs=0.01)
    assert {d["day"]: Counter({k: d[k] for k in ("reads", "check_reads", "adjudications") if d[k]})
            for d in body["throughput"]["days"]} == expected["per_day"]


def test_progress_equals_a_recount_after_a_day_of_work(cast, api):
    _simulated_day(cast, api)
    expected = _expected(cast.project)
    assert expected["by_state"][TaskState.DELIVERED] == 2 and expected["by_state"][TaskState.CANCELLED] == 1
    assert set(expected["by_modality"]) == {"CT", "MR"} and expected["classes"]["finding_laterality"] == 2
    response = api(cast.manager).get(f"/api/projects/{cast.project.pk}/progress/")
    assert response.status_code == 200
    body = response.json()
    _assert_matches(body, expected)
    assert body["eta"]["reads_per_day"] == pytest.approx(sum(
        t["reads"] for t in expected["per_tier"].values()) / 7, abs=0.01)
    assert [row["name"] for row in body["tasks"]["by_batch"] if row["batch"]] == ["Week 1"]
    assert not TaskTallyDelta.objects.filter(project=cast.project).exists()  # folded by the read


def test_recount_command_rebuilds_the_same_tallies(cast, api):
    _simulated_day(cast, api)
    kept = project_progress(cast.project, user=cast.manager)
    TaskTally.objects.filter(project=cast.project).update(tasks=999)  # damage them
    call_command("recount_progress", project=cast.project.pk)
    rebuilt = project_progress(cast.project, user=cast.manager)
    for key in ("tasks", "by_finding_class", "tasks_without_findings", "throughput", "workforce"):
        assert rebuilt[key] == kept[key]
    _assert_matches(rebuilt, _expected(cast.project))


def test_clients_never_see_reads_or_reader_identities(cast, api):
    _simulated_day(cast, api)
    readers = [cast.annotator, cast.second_annotator, cast.radiologist, cast.neuro_subspecialist]
    client_body = api(cast.client_viewer).get(f"/api/projects/{cast.project.pk}/progress/").json()
    text = str(client_body)
    assert "readers" not in client_body["workforce"]
    for reader in readers:
        assert reader.username not in text and reader.pseudonym not in text
    assert client_body["workforce"]["by_tier"]["Annotator"]["readers"] >= 2  # aggregates only

    qa_body = api(cast.qa).get(f"/api/projects/{cast.project.pk}/progress/").json()
    qa_rows = {row["reader"]: row for row in qa_body["workforce"]["readers"]}
    assert cast.annotator.pseudonym in qa_rows and "username" not in qa_rows[cast.annotator.pseudonym]
    assert cast.annotator.username not in str(qa_body)
    manager_body = api(cast.manager).get(f"/api/projects/{cast.project.pk}/progress/").json()
    assert {row["username"] for row in manager_body["workforce"]["readers"]} >= {cast.annotator.username}


def test_progress_shows_no_other_project_and_no_gold_tasks(cast, api):
    add_ct_studies(cast.project, 2)
    create_tasks(cast.project, by=cast.manager)
    create_tasks(cast.project, by=cast.manager, kind=Task.Kind.GOLD)
    body = api(cast.manager).get(f"/api/projects/{cast.project.pk}/progress/").json()
    assert body["tasks"]["by_state"][TaskState.QUEUED] == 2  # production only
    assert body["eta"]["reads_left"] == 4 and body["eta"]["days"] is None  # no throughput yet: no ETA
    foreign = api(cast.manager).get(f"/api/projects/{cast.foreign_project.pk}/progress/")
    assert foreign.status_code == 404


async def _drain(layer, channel) -> list[dict]:
    received = []
    while True:
        try:
            received.append(await asyncio.wait_for(layer.receive(channel), timeout=0.5))
        except TimeoutError:
            return received


@pytest.mark.django_db(transaction=True)
def test_one_progress_delta_per_transaction_sums_its_changes(cast):
    add_ct_studies(cast.project, 2)
    create_tasks(cast.project, by=cast.manager)
    layer = get_channel_layer()
    channel = async_to_sync(layer.new_channel)()
    async_to_sync(layer.group_add)(project_group(cast.project.pk), channel)
    with transaction.atomic():
        first = _claim(cast.annotator)
        second = _claim(cast.second_annotator)
        submit_read(first.pk, cast.annotator, _laterality("left"))
        submit_read(second.pk, cast.second_annotator, _laterality("left"))
    with transaction.atomic():  # rolled back: announces nothing
        _claim(cast.annotator)
        transaction.set_rollback(True)
    release = _claim(cast.annotator)
    release_read(release.pk, cast.annotator)  # two transactions, two deltas
    # One drain (one event loop): the Redis layer binds its receive buffer to the loop.
    deltas = [m for m in async_to_sync(_drain)(layer, channel) if m["event"] == "progress.delta"]
    assert {m["project"] for m in deltas} == {cast.project.pk}
    assert [m["data"]["changes"] for m in deltas] == [
        {"reads_claimed": 2, "reads_submitted": 2, "queued": -1, "consensus": 1},
        {"reads_claimed": 1, "queued": -1, "in_reading": 1},
        {"in_reading": -1, "queued": 1},
    ]


@pytest.mark.django_db(transaction=True)
def test_tallies_stay_exact_under_concurrent_claims_submits_and_folds(cast):
    add_ct_studies(cast.project, 6)
    create_tasks(cast.project, by=cast.manager)
    readers = [UserFactory(organization=cast.vendor) for _ in range(6)]
    for reader in readers:
        grant_membership(project=cast.project, user=reader, role="annotator", by=cast.manager)
    errors = []
    barrier = threading.Barrier(len(readers) + 1)

    def read_all(reader):
        try:
            barrier.wait()
            while (claim := claim_next_read(reader)) is not None:
                submit_read(claim.read.pk, reader, _laterality("left"))
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
        finally:
            connections.close_all()

    def watch():
        try:
            barrier.wait()
            for _ in range(10):
                project_progress(cast.project, user=cast.manager)  # folds while the readers write
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=read_all, args=(r,)) for r in readers] + [threading.Thread(target=watch)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors and not any(t.is_alive() for t in threads)
    assert Task.objects.filter(project=cast.project, state=TaskState.CONSENSUS).count() == 6
    _assert_matches(project_progress(cast.project, user=cast.manager), _expected(cast.project))
