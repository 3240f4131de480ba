"""The trail answers "who viewed study X, when, from where, under which protocol version": every
DICOMweb view and download of a study served to a reader or an adjudicator names the protocol
version of the read or adjudication it is served under."""

import pytest

from audit.models import AuditEvent
from core.dicom.models import Instance
from tasks.models import Task
from tasks.queue import claim_next_read
from tasks.reads import submit_read

pytestmark = pytest.mark.django_db

RETRIEVE = 'multipart/related; type="application/dicom"'


def _touch_study(client, study_uid) -> list[int]:
    instance = Instance.objects.filter(series__study__study_uid=study_uid).select_related("series").first()
    base = f"/dicomweb/studies/{study_uid}"
    url = f"{base}/series/{instance.series.series_uid}/instances/{instance.sop_instance_uid}"
    return [client.get(f"{base}/metadata").status_code,
            client.get(f"{base}/series").status_code,
            client.get(f"{url}/frames/1", HTTP_ACCEPT='multipart/related; type="application/octet-stream"').status_code,
            client.get(url, HTTP_ACCEPT=RETRIEVE).status_code,
            client.get(f"{url}/rendered", HTTP_ACCEPT="image/jpeg").status_code]


def _study_events(user, study_uid, before):
    return list(AuditEvent.objects.filter(actor_id=user.pk, study_uid=study_uid, id__gt=before,
                                          action__in=("view", "download", "list")))


def test_a_readers_views_and_downloads_name_the_protocol_version_of_their_read(cast, api, queued):
    reader = api(cast.annotator)
    claim = reader.post("/api/queue/next/", {}, format="json").json()
    version = Task.objects.select_related("protocol_version").get(pk=claim["task"]).protocol_version.number
    before = AuditEvent.objects.order_by("-id").values_list("id", flat=True).first()

    assert _touch_study(reader, claim["study_uid"]) == [200] * 5

    events = _study_events(cast.annotator, claim["study_uid"], before)
    assert {e.action for e in events} >= {"view", "download"}
    assert len(events) == 5
    assert {e.protocol_version for e in events} == {version}


def test_an_adjudicator_is_served_the_study_and_the_events_name_the_tasks_protocol_version(cast, api, queued):
    for reader, value in ((cast.annotator, "left"), (cast.second_annotator, "right")):
        claim = claim_next_read(reader)
        submit_read(claim.read.pk, reader, [{"label": "finding_laterality", "value": value}])
    task = Task.objects.select_related("study", "protocol_version").get(pk=claim.task.pk)
    adjudicator = api(cast.radiologist)
    assert _touch_study(adjudicator, task.study.study_uid)[0] == 404  # nothing claimed yet
    claimed = adjudicator.post("/api/adjudications/next/").json()
    assert claimed["task"] == task.pk
    before = AuditEvent.objects.order_by("-id").values_list("id", flat=True).first()

    assert _touch_study(adjudicator, task.study.study_uid) == [200] * 5

    events = _study_events(cast.radiologist, task.study.study_uid, before)
    assert len(events) == 5 and {e.protocol_version for e in events} == {task.protocol_version.number}
    # Once resolved, the adjudicator holds nothing on the study any more.
    resolved = adjudicator.post(f"/api/adjudications/{claimed['id']}/resolve/", {
        "resolution": "new", "rationale": "left on review",
        "findings": [{"label": "finding_laterality", "value": "left"}]}, format="json")
    assert resolved.status_code == 200, resolved.content
    assert _touch_study(adjudicator, task.study.study_uid)[0] == 404


def test_project_wide_access_is_under_no_one_read(cast, api, queued):
    claim = claim_next_read(cast.annotator)
    before = AuditEvent.objects.order_by("-id").values_list("id", flat=True).first()
    assert _touch_study(api(cast.manager), claim.task.study.study_uid) == [200] * 5
    events = _study_events(cast.manager, claim.task.study.study_uid, before)
    assert len(events) == 5 and {e.protocol_version for e in events} == {None}
