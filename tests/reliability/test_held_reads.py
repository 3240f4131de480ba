"""Claims are delivered at least once: a claim whose answer was lost is recovered by claiming again
(issue 18, items 7 and 12). The held reads are listed with their leases; the open-read limit
answers 409 open_read_limit, and 204 means only that there is nothing to read."""

from datetime import timedelta

import pytest
from django.utils import timezone

from audit.models import AuditEvent
from tasks import queue, reads
from tasks.creation import create_tasks
from tasks.models import QueueSlot, Read, Task
from tasks.states import ReadState
from tests.tasks.conftest import add_ct_studies

pytestmark = pytest.mark.django_db

NEXT, MINE = "/api/queue/next/", "/api/queue/mine/"


@pytest.fixture
def queued(cast):
    add_ct_studies(cast.project, 4)
    return create_tasks(cast.project, by=cast.manager)


def lose_the_answer(user):
    """A claim that committed while its answer never reached the client (the worker died)."""
    return queue.claim_next_read(user).read.pk


@pytest.mark.parametrize("after_a_submit", [False, True], ids=["first claim", "after a submit"])
def test_claiming_again_after_a_lost_answer_returns_the_same_read(cast, api, queued, after_a_submit):
    client = api(cast.annotator)
    if after_a_submit:  # the reader has claimed and submitted before
        done = client.post(NEXT, {}, format="json").json()["read"]
        assert client.post(f"/api/reads/{done}/submit/", {"findings": []}, format="json").status_code == 200
    lost = lose_the_answer(cast.annotator)
    response = client.post(NEXT, {}, format="json")
    assert response.status_code == 200
    body = response.json()
    assert body["read"] == lost and body["resumed"] is True
    read = Read.objects.get(pk=lost)
    assert body["task"] == read.task_id
    assert body["lease_expires_at"].startswith(read.lease_expires_at.date().isoformat())
    assert Read.objects.filter(reader=cast.annotator, state=ReadState.CLAIMED).count() == 1
    resumed = AuditEvent.objects.filter(action="claim", object_id=str(lost), extra__resumed=True)
    assert resumed.count() == 1 and resumed.get().actor_id == cast.annotator.pk


def test_a_fresh_claim_says_it_is_not_resumed_and_has_the_same_shape(cast, api, queued):
    client = api(cast.annotator)
    fresh = client.post(NEXT, {}, format="json").json()
    again = client.post(NEXT, {}, format="json").json()
    assert fresh["resumed"] is False and again["resumed"] is True
    assert list(fresh) == list(again) and {k: v for k, v in fresh.items() if k != "resumed"} == {
        k: v for k, v in again.items() if k != "resumed"}


def test_another_takes_new_reads_up_to_the_limit_then_409_with_the_held_reads(cast, api, queued):
    cast.project.max_open_reads = 3
    cast.project.save()
    client = api(cast.annotator)
    first = client.post(NEXT, {}, format="json").json()
    taken = [first["read"]] + [client.post(NEXT, {"another": True}, format="json").json()["read"]
                               for _ in range(2)]
    assert len(set(taken)) == 3
    refused = client.post(NEXT, {"another": True}, format="json")
    assert refused.status_code == 409
    body = refused.json()
    assert body["code"] == "open_read_limit" and "max_open_reads" in body["detail"]
    assert [h["read"] for h in body["held_reads"]] == taken
    assert all(h["project"] == cast.project.pk and h["lease_expires_at"] for h in body["held_reads"])
    assert Read.objects.filter(reader=cast.annotator, state=ReadState.CLAIMED).count() == 3
    # Without another, the oldest held read comes back.
    assert client.post(NEXT, {}, format="json").json()["read"] == taken[0]


def test_204_means_nothing_to_read_not_the_limit(cast, api):
    assert api(cast.annotator).post(NEXT, {}, format="json").status_code == 204
    assert api(cast.annotator).post(NEXT, {"another": True}, format="json").status_code == 204


def test_a_lapsed_lease_is_not_resumed(cast, api, queued):
    cast.project.max_open_reads = 1
    cast.project.save()
    lost = lose_the_answer(cast.annotator)
    past = timezone.now() - timedelta(minutes=1)
    Read.objects.filter(pk=lost).update(lease_expires_at=past)
    QueueSlot.objects.filter(read_id=lost).update(lease_expires_at=past)
    refused = api(cast.annotator).post(NEXT, {}, format="json")  # still counted until swept
    assert refused.status_code == 409 and [h["read"] for h in refused.json()["held_reads"]] == [lost]
    reads.sweep_expired_leases()
    response = api(cast.annotator).post(NEXT, {}, format="json")
    assert response.status_code == 200 and response.json()["read"] != lost and not response.json()["resumed"]


def test_the_listing_shows_my_held_reads_with_their_leases_and_nobody_elses(cast, api, queued):
    mine = lose_the_answer(cast.annotator)
    theirs = lose_the_answer(cast.second_annotator)
    done = api(cast.annotator).post(NEXT, {"another": True}, format="json").json()["read"]
    assert api(cast.annotator).post(f"/api/reads/{done}/submit/", {"findings": []}, format="json").status_code == 200
    response = api(cast.annotator).get(MINE)
    assert response.status_code == 200
    results = response.json()["results"]
    assert [r["id"] for r in results] == [mine]
    read = Read.objects.get(pk=mine)
    assert results[0]["state"] == "claimed" and results[0]["lease_expires_at"]
    assert results[0]["lease_expires_at"].startswith(read.lease_expires_at.date().isoformat())
    assert theirs not in [r["id"] for r in api(cast.manager).get(MINE).json()["results"]]


def test_a_resumed_check_read_looks_like_any_read(cast, api):
    """A gold check handed back says no more than any claim: the same keys, resumed, the same read."""
    studies = add_ct_studies(cast.project, 2)
    gold = create_tasks(cast.project, by=cast.manager, studies=cast.project.studies.filter(pk=studies[0].pk),
                        kind=Task.Kind.GOLD)
    create_tasks(cast.project, by=cast.manager, studies=cast.project.studies.filter(pk=studies[1].pk))
    reference = {"findings": [{"label": "finding_laterality", "value": "left"}]}
    assert api(cast.manager).post(f"/api/projects/{cast.project.pk}/tasks/{gold[0].pk}/reference/", reference,
                                  format="json").status_code == 201
    cast.project.gold_rate = 1.0
    cast.project.save()
    client = api(cast.annotator)
    check = client.post(NEXT, {}, format="json").json()
    assert check["task"] == gold[0].pk and Read.objects.get(pk=check["read"]).is_check
    again = client.post(NEXT, {}, format="json").json()
    assert again["read"] == check["read"] and again["resumed"] is True
    assert list(again) == list(check) and "kind" not in again and "gold" not in str(again).lower()
    production = client.post(NEXT, {"another": True}, format="json").json()
    assert list(production) == list(check) and not Read.objects.get(pk=production["read"]).is_check
