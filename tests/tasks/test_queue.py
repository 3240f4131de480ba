"""Claims, leases, releases and submits through the REST API, and the guarantees behind them."""

from datetime import timedelta

import pytest
from django.utils import timezone

from audit.models import AuditEvent
from tasks.models import QueueSlot, Read, Task
from tasks.reads import sweep_expired_leases
from tasks.states import ReadState, TaskState

pytestmark = pytest.mark.django_db

NEXT = "/api/queue/next/"


def claim(client, **body):
    return client.post(NEXT, body, format="json")


def test_claim_returns_the_work_its_schema_dicomweb_urls_and_lease(cast, api, queued):
    response = claim(api(cast.annotator))
    assert response.status_code == 200
    body = response.json()
    task = queued[0]
    assert body["task"] == task.pk and body["project"] == cast.project.pk
    assert body["study_uid"] == task.study.study_uid
    assert body["dicomweb"]["root"].endswith(f"/dicomweb/reads/{body['read']}")  # the read's own root
    assert body["dicomweb"]["study"] == f"{body['dicomweb']['root']}/studies/{task.study.study_uid}"
    assert body["dicomweb"]["series"][0]["url"].startswith(body["dicomweb"]["study"])
    assert body["protocol_version"]["number"] == 1 and body["protocol_version"]["entries"]
    assert "kind" not in body and "priority" not in body
    read = Read.objects.get(pk=body["read"])
    assert read.state == ReadState.CLAIMED and read.reader == cast.annotator
    assert timezone.now() + timedelta(minutes=29) < read.lease_expires_at
    assert Task.objects.get(pk=task.pk).state == TaskState.IN_READING
    assert AuditEvent.objects.filter(action="claim", object_id=str(read.pk), actor_id=cast.annotator.pk).exists()


def test_claim_dicomweb_urls_follow_the_public_base_url(cast, api, queued, settings):
    """The claim's DICOMweb URLs are built as the DICOMweb bodies' are (core.dicom.dicomweb.public_url):
    behind a proxy, or for a client whose Host header has no port, they name the public address."""
    settings.PUBLIC_BASE_URL = "https://labels.example.org:8443"
    body = api(cast.annotator).post(NEXT, {}, format="json").json()
    task = Task.objects.get(pk=body["task"])
    root = f"https://labels.example.org:8443/dicomweb/reads/{body['read']}"
    assert body["dicomweb"]["root"] == root
    assert body["dicomweb"]["study"] == f"{root}/studies/{task.study.study_uid}"


def test_claim_response_is_what_its_schema_declares(cast, api, queued):
    """ClaimSerializer builds its output by hand; the declared fields are the OpenAPI schema. The
    keys, their order and DRF's own renderings must agree with them."""
    from rest_framework import serializers

    from tasks.api import ClaimSerializer

    body = claim(api(cast.annotator)).json()
    declared = [name for name in ClaimSerializer().fields if name != "model"]  # model: only when shown
    assert list(body) == declared
    assert body["lease_expires_at"].endswith("Z")
    read = Read.objects.get(pk=body["read"])
    assert body["lease_expires_at"] == serializers.DateTimeField().to_representation(read.lease_expires_at)
    assert body["series_uid"] == (read.task.series.series_uid if read.task.series_id else None)


def test_read_responses_render_as_drfs_own_field_walk_would(cast, api, queued):
    """ReadSerializer and ManagedReadSerializer build their output by hand; DRF's generic
    rendering from their declared fields must give the same, in every state a read passes."""
    from rest_framework import serializers

    from tasks.api import ManagedReadSerializer, ReadSerializer
    from tasks.selectors import reader_visibility

    client = api(cast.annotator)
    held = client.post(NEXT, {}, format="json").json()["read"]
    client.post(f"/api/reads/{held}/draft/", {"draft": [{"label": "pneumothorax"}]}, format="json")
    done = client.post(NEXT, {"another": True}, format="json").json()["read"]
    assert client.post(f"/api/reads/{done}/submit/", {"findings": []}, format="json").status_code == 200
    released = client.post(NEXT, {"another": True}, format="json").json()["read"]
    client.post(f"/api/reads/{released}/release/", format="json")
    lapsed = claim(api(cast.second_annotator)).json()["read"]
    Read.objects.filter(pk=lapsed).update(lease_expires_at=timezone.now() - timedelta(minutes=1))
    QueueSlot.objects.filter(read_id=lapsed).update(lease_expires_at=timezone.now() - timedelta(minutes=1))
    assert sweep_expired_leases() == 1
    reads = list(Read.objects.filter(pk__in=[held, done, released, lapsed]).select_related("task__study", "reader"))
    assert {r.state for r in reads} == {ReadState.CLAIMED, ReadState.SUBMITTED, ReadState.RELEASED,
                                        ReadState.EXPIRED}
    managers_view = {"reader_visibility": lambda _: reader_visibility(cast.manager, cast.project)}  # names shown
    for read in reads:
        for serializer_class in (ReadSerializer, ManagedReadSerializer):
            serializer = serializer_class(context=managers_view)
            generic = serializers.Serializer.to_representation(serializer, read)
            assert serializer.to_representation(read) == generic
            assert list(serializer.to_representation(read)) == list(generic)


def test_claim_body_is_validated(cast, api, queued):
    response = claim(api(cast.annotator), project="first")
    assert response.status_code == 400 and "project" in response.json()["errors"]
    for body in ("[]", "null", '"first"', f'[{{"project": {cast.project.pk}}}]'):
        response = api(cast.annotator).post(NEXT, body, content_type="application/json")
        assert response.status_code == 400, (body, response.content)
    assert not Read.objects.exists()
    assert claim(api(cast.annotator), project=cast.project.pk).status_code == 200


def test_an_empty_claim_body_claims_from_every_project_and_other_media_types_are_refused(cast, api, queued):
    """No body, or {} as JSON (whitespace around it too), skip parsing; {} in any other media type
    goes through DRF's parsers and is refused, as before, with nothing claimed."""
    client = api(cast.annotator)
    refused = client.post(NEXT, "{}", content_type="text/plain")
    assert refused.status_code == 415 and not Read.objects.exists()
    assert AuditEvent.objects.filter(action="claim", actor_id=cast.annotator.pk, outcome="error",
                                     reason__startswith="415").exists()
    for body, content_type in ((" {} \n", "application/json; charset=utf-8"), ("", "application/json")):
        assert client.post(NEXT, body, content_type=content_type).status_code == 200, (body, content_type)
    assert client.post(NEXT).status_code == 200  # no body, no content type
    # Each of them claimed: the first a new read, the next ones gave that same read back.
    assert Read.objects.filter(reader=cast.annotator, state=ReadState.CLAIMED).count() == 1


def test_nothing_to_claim_is_204(cast, api):
    assert claim(api(cast.annotator)).status_code == 204
    assert claim(api(cast.outsider)).status_code == 204
    assert claim(api(cast.annotator), project=cast.foreign_project.pk).status_code == 404


def test_k_reads_go_to_k_different_readers_and_never_twice_to_one(cast, api, queued):
    a, b = api(cast.annotator), api(cast.second_annotator)
    first = claim(a).json()
    second = claim(b).json()
    assert first["task"] == second["task"] == queued[0].pk  # oldest first, two different people
    again = claim(a, another=True).json()
    assert again["task"] == queued[1].pk  # never the same task twice
    assert Read.objects.filter(task=queued[0]).count() == 2
    assert QueueSlot.objects.filter(task=queued[0], reader__isnull=True).count() == 0


def test_open_read_limit(cast, api, queued):
    cast.project.max_open_reads = 1
    cast.project.save()
    client = api(cast.annotator)
    assert claim(client).status_code == 200
    refused = claim(client, another=True)
    assert refused.status_code == 409 and refused.json()["code"] == "open_read_limit"


def test_priority_then_age(cast, api, queued):
    QueueSlot.objects.filter(task=queued[2]).update(priority=5.0)
    assert claim(api(cast.annotator)).json()["task"] == queued[2].pk
    assert claim(api(cast.second_annotator)).json()["task"] == queued[2].pk
    assert claim(api(cast.annotator), another=True).json()["task"] == queued[0].pk


def test_heartbeat_extends_the_lease_and_counts_active_time(cast, api, queued):
    client = api(cast.annotator)
    read_id = claim(client).json()["read"]
    Read.objects.filter(pk=read_id).update(claimed_at=timezone.now() - timedelta(minutes=2),
                                           lease_expires_at=timezone.now() + timedelta(minutes=1))
    response = client.post(f"/api/reads/{read_id}/heartbeat/")
    assert response.status_code == 200
    read = Read.objects.get(pk=read_id)
    assert read.lease_expires_at > timezone.now() + timedelta(minutes=29)
    assert 110 < read.active_seconds < 130


def test_release_returns_the_slot_to_the_queue(cast, api, queued):
    client = api(cast.annotator)
    read_id = claim(client).json()["read"]
    assert client.post(f"/api/reads/{read_id}/release/").status_code == 200
    assert Read.objects.get(pk=read_id).state == ReadState.RELEASED
    assert Task.objects.get(pk=queued[0].pk).state == TaskState.QUEUED
    assert QueueSlot.objects.filter(task=queued[0], reader__isnull=True).count() == 2
    assert client.post(f"/api/reads/{read_id}/release/").status_code == 409
    assert claim(client).json()["task"] == queued[0].pk  # a released read may be taken up again


def test_expired_lease_is_reclaimed_and_the_late_submit_gets_409(cast, api, queued):
    cast.project.reads_per_task = 1
    cast.project.save()
    Task.objects.filter(pk=queued[0].pk).update(reads_required=1)
    QueueSlot.objects.filter(pk=QueueSlot.objects.filter(task=queued[0]).order_by("id").last().pk).delete()
    late = api(cast.annotator)
    read_id = claim(late).json()["read"]
    Read.objects.filter(pk=read_id).update(lease_expires_at=timezone.now() - timedelta(seconds=1))
    QueueSlot.objects.filter(read_id=read_id).update(lease_expires_at=timezone.now() - timedelta(seconds=1))
    taken = claim(api(cast.second_annotator)).json()
    assert taken["task"] == queued[0].pk
    assert Read.objects.get(pk=read_id).state == ReadState.EXPIRED
    response = late.post(f"/api/reads/{read_id}/submit/", {"findings": []}, format="json")
    assert response.status_code == 409
    assert "expired" in response.json()["detail"]
    assert AuditEvent.objects.filter(action="expire", object_id=str(read_id)).exists()


def test_lease_passed_but_not_reclaimed_can_still_be_submitted(cast, api, queued):
    client = api(cast.annotator)
    read_id = claim(client).json()["read"]
    Read.objects.filter(pk=read_id).update(lease_expires_at=timezone.now() - timedelta(seconds=5))
    response = client.post(f"/api/reads/{read_id}/submit/", {"findings": []}, format="json")
    assert response.status_code == 200, response.json()


def test_sweep_returns_expired_reads_to_the_queue(cast, api, queued):
    read_id = claim(api(cast.annotator)).json()["read"]
    past = timezone.now() - timedelta(seconds=1)
    QueueSlot.objects.filter(read_id=read_id).update(lease_expires_at=past)
    assert sweep_expired_leases() == 1
    assert Read.objects.get(pk=read_id).state == ReadState.EXPIRED
    assert QueueSlot.objects.filter(task=queued[0], reader__isnull=True).count() == 2
    assert Task.objects.get(pk=queued[0].pk).state == TaskState.QUEUED


def test_submitting_all_k_reads_completes_the_task(cast, api, queued):
    for user in (cast.annotator, cast.second_annotator):
        client = api(user)
        read_id = claim(client).json()["read"]
        response = client.post(f"/api/reads/{read_id}/submit/", {"findings": []}, format="json")
        assert response.status_code == 200
    task = Task.objects.get(pk=queued[0].pk)
    assert task.reads_submitted == 2 and task.state != TaskState.IN_READING
    assert not QueueSlot.objects.filter(task=task).exists()


def test_submit_is_idempotent_with_a_key(cast, api, queued):
    client = api(cast.annotator)
    read_id = claim(client).json()["read"]
    url = f"/api/reads/{read_id}/submit/"
    first = client.post(url, {"findings": []}, format="json", HTTP_IDEMPOTENCY_KEY="abc-1")
    again = client.post(url, {"findings": []}, format="json", HTTP_IDEMPOTENCY_KEY="abc-1")
    assert first.status_code == again.status_code == 200 and first.json() == again.json()
    other = client.post(url, {"findings": []}, format="json", HTTP_IDEMPOTENCY_KEY="abc-2")
    assert other.status_code == 409
    assert Task.objects.get(pk=queued[0].pk).reads_submitted == 1


def test_drafts_are_kept_until_submit(cast, api, queued):
    client = api(cast.annotator)
    read_id = claim(client).json()["read"]
    draft = [{"label": "fracture", "note": "half done"}]
    assert client.put(f"/api/reads/{read_id}/draft/", {"draft": draft}, format="json").status_code == 200
    assert client.get(f"/api/reads/{read_id}/").json()["draft"] == draft


def test_readers_see_only_their_own_reads(cast, api, queued):
    a, b = api(cast.annotator), api(cast.second_annotator)
    mine = claim(a).json()["read"]
    theirs = claim(b).json()["read"]
    assert [r["id"] for r in a.get("/api/reads/").json()["results"]] == [mine]
    assert a.get(f"/api/reads/{theirs}/").status_code == 404
    assert a.post(f"/api/reads/{theirs}/heartbeat/").status_code == 404
    assert a.post(f"/api/reads/{theirs}/submit/", {"findings": []}, format="json").status_code == 404
    assert "reader" not in a.get(f"/api/reads/{mine}/").json()
    managed = api(cast.manager).get(f"/api/reads/{theirs}/").json()
    assert managed["reader"] == "second_annotator"


def test_readers_reach_dicomweb_only_for_studies_they_hold(cast, api, queued):
    client = api(cast.annotator)
    body = claim(client).json()
    held, other = queued[0].study, queued[1].study
    assert client.get(f"/dicomweb/studies/{held.study_uid}/series").status_code == 200
    assert client.get(f"/dicomweb/studies/{other.study_uid}/series").status_code == 404
    studies = client.get("/dicomweb/studies").json()
    assert [s["0020000D"]["Value"][0] for s in studies] == [held.study_uid]
    client.post(f"/api/reads/{body['read']}/submit/", {"findings": []}, format="json")
    assert client.get(f"/dicomweb/studies/{held.study_uid}/series").status_code == 404


def test_suspended_and_uncalibrated_readers_get_no_work(cast, api, queued):
    membership = cast.project.memberships.get(user=cast.annotator)
    membership.is_suspended = True
    membership.save()
    assert claim(api(cast.annotator)).status_code == 204
    cast.project.requires_calibration = True
    cast.project.save()
    assert claim(api(cast.second_annotator)).status_code == 204
    cast.project.memberships.filter(user=cast.second_annotator).update(calibrated_at=timezone.now())
    assert claim(api(cast.second_annotator)).status_code == 200


def test_radiologists_do_not_take_annotator_work_unless_the_project_allows(cast, api, queued):
    assert claim(api(cast.radiologist)).status_code == 204
    cast.project.higher_tiers_take_lower_work = True
    cast.project.save()
    assert claim(api(cast.radiologist)).status_code == 200


def test_manager_views_reassign_and_cancel(cast, api, queued):
    read_id = claim(api(cast.annotator)).json()["read"]
    manager = api(cast.manager)
    listing = manager.get(f"/api/projects/{cast.project.pk}/tasks/?state=in_reading").json()
    assert [t["id"] for t in listing["results"]] == [queued[0].pk]
    held = manager.get(f"/api/projects/{cast.project.pk}/tasks/?holder={cast.annotator.pk}").json()
    assert held["count"] == 1
    detail = manager.get(f"/api/projects/{cast.project.pk}/tasks/{queued[0].pk}/").json()
    assert detail["reads"][0]["reader"] == "annotator"
    moved = manager.post(f"/api/projects/{cast.project.pk}/reads/{read_id}/reassign/",
                         {"reader": cast.second_annotator.pk}, format="json")
    assert moved.status_code == 200 and moved.json()["reader"] == "second_annotator"
    assert Read.objects.get(pk=read_id).state == ReadState.CANCELLED
    not_eligible = manager.post(f"/api/projects/{cast.project.pk}/reads/{moved.json()['id']}/reassign/",
                                {"reader": cast.radiologist.pk}, format="json")
    assert not_eligible.status_code == 400
    cancelled = manager.post(f"/api/projects/{cast.project.pk}/tasks/{queued[1].pk}/cancel/")
    assert cancelled.status_code == 200 and cancelled.json()["state"] == "cancelled"
    assert not QueueSlot.objects.filter(task=queued[1]).exists()
    assert manager.post(f"/api/projects/{cast.project.pk}/tasks/{queued[1].pk}/cancel/").status_code == 409
