"""A read's own DICOMweb root (tasks.dicomweb_scopes): the read's study and nothing else, for as long
as the read is live, every request audited with the read."""

from datetime import timedelta

import pytest
from django.utils import timezone

from audit.models import AuditEvent
from core.memberships import revoke_membership
from core.models import Membership
from tasks.models import Read
from tasks.reads import reassign_read, release_read

NEXT = "/api/queue/next/"
OHIF_FRAMES = "multipart/related; type=application/octet-stream; transfer-syntax=*"


def _claim(client) -> dict:
    response = client.post(NEXT, {}, format="json")
    assert response.status_code == 200, response.content
    return response.json()


def _paths(body: dict) -> dict:
    """Every DICOMweb path a viewer uses for the claimed study, under the read's root."""
    root = body["dicomweb"]["root"].split("://", 1)[1].split("/", 1)[1]
    root, study = f"/{root}", body["study_uid"]
    series = body["dicomweb"]["series"][0]["series_uid"]
    return {"root": root, "studies": f"{root}/studies", "study": f"{root}/studies/{study}",
            "study_metadata": f"{root}/studies/{study}/metadata", "series": f"{root}/studies/{study}/series",
            "one_series": f"{root}/studies/{study}/series/{series}",
            "series_metadata": f"{root}/studies/{study}/series/{series}/metadata",
            "instances": f"{root}/studies/{study}/series/{series}/instances",
            "thumbnail": f"{root}/studies/{study}/thumbnail"}


@pytest.mark.django_db
def test_a_reads_root_serves_its_study_and_answers_an_empty_list_for_any_other(cast, api, queued):
    client = api(cast.annotator)
    body = _claim(client)
    paths = _paths(body)
    [study] = client.get(paths["studies"]).json()
    assert study["0020000D"]["Value"] == [body["study_uid"]]
    # OHIF's prior-study lookup by PatientID: an empty list, not 403, for any other patient.
    prior = client.get(paths["studies"], {"PatientID": "someone-else"})
    assert prior.status_code == 200 and prior.json() == []
    others = [t.study.study_uid for t in queued if t.study.study_uid != body["study_uid"]]
    assert client.get(paths["studies"], {"StudyInstanceUID": others[0]}).json() == []
    assert client.get(f"{paths['studies']}/{others[0]}/series").status_code == 404
    assert client.get(f"{paths['studies']}/{others[0]}/metadata").status_code == 404
    # The study opens as a viewer opens it.
    [series] = client.get(paths["series"]).json()
    instances = client.get(paths["instances"]).json()
    assert len(instances) == 2 and series["0020000E"]["Value"] == [body["dicomweb"]["series"][0]["series_uid"]]
    metadata = client.get(paths["series_metadata"]).json()
    frames_url = metadata[0]["7FE00010"]["BulkDataURI"]
    assert f"{paths['root']}/studies/" in frames_url  # bulk data resolves under the same root
    frames = client.get(frames_url.split("testserver", 1)[-1], HTTP_ACCEPT=OHIF_FRAMES)
    assert frames.status_code == 200 and "transfer-syntax=" in b"".join(frames.streaming_content).decode("latin-1")
    assert client.get(paths["thumbnail"], HTTP_ACCEPT="image/jpeg").status_code == 200


@pytest.mark.django_db
def test_a_reads_root_is_its_readers_alone(cast, api, queued):
    body = _claim(api(cast.annotator))
    paths = _paths(body)
    for someone in (cast.second_annotator, cast.radiologist, cast.client_viewer, cast.outsider):
        assert api(someone).get(paths["studies"]).status_code == 404, someone
    assert api(None).get(paths["studies"]).status_code == 401


@pytest.mark.django_db
@pytest.mark.parametrize("ending", ["release", "lapse", "reassign", "revoke", "submit"])
def test_a_reads_root_answers_404_at_once_when_the_read_ends(cast, api, queued, ending):
    client = api(cast.annotator)
    body = _claim(client)
    paths = _paths(body)
    assert client.get(paths["series_metadata"]).status_code == 200
    if ending == "release":
        release_read(body["read"], cast.annotator)
    elif ending == "lapse":
        Read.objects.filter(pk=body["read"]).update(lease_expires_at=timezone.now() - timedelta(seconds=1))
    elif ending == "reassign":
        reassign_read(body["read"], cast.second_annotator, by=cast.manager)
    elif ending == "revoke":
        revoke_membership(Membership.objects.get(user=cast.annotator, project=cast.project), by=cast.manager)
    else:
        assert client.post(f"/api/reads/{body['read']}/submit/", {"findings": []}, format="json").status_code == 200
    for name in ("studies", "study_metadata", "series_metadata", "instances", "thumbnail"):
        response = client.get(paths[name])
        assert response.status_code == 404, (name, response.status_code)
        assert "no longer live" in response.json()["detail"]


@pytest.mark.django_db
def test_every_request_to_a_reads_root_is_audited_with_the_read_and_protocol_version(cast, api, queued):
    client = api(cast.annotator)
    body = _claim(client)
    paths = _paths(body)
    client.get(paths["series_metadata"])
    event = AuditEvent.objects.filter(actor_id=cast.annotator.pk, object_type="core.study").order_by("-id").first()
    assert event.extra["read"] == body["read"] and event.study_uid == body["study_uid"]
    assert event.protocol_version == body["protocol_version"]["number"] and event.project_id == cast.project.pk
    client.get(f"{paths['studies']}/1.2.3/series")  # refused: recorded too, with the read
    refused = AuditEvent.objects.filter(actor_id=cast.annotator.pk, object_type="core.study").order_by("-id").first()
    assert refused.extra["read"] == body["read"] and refused.outcome != event.outcome


@pytest.mark.django_db
def test_the_claim_gives_the_reads_root_and_a_submit_without_findings_submits_the_draft(cast, api, queued):
    client = api(cast.annotator)
    body = _claim(client)
    assert body["dicomweb"]["root"].endswith(f"/dicomweb/reads/{body['read']}")
    assert client.put(f"/api/reads/{body['read']}/draft/", {"draft": []}, format="json").status_code == 200
    submitted = client.post(f"/api/reads/{body['read']}/submit/", {}, format="json")
    assert submitted.status_code == 200 and submitted.json()["findings"] == []


def _shape(response):
    """What a response shows besides its values: status, media type, and each item's tags and VRs."""
    body = response.json() if response["Content-Type"].startswith("application/dicom+json") else None
    items = body if isinstance(body, list) else [body]
    return (response.status_code, response["Content-Type"],
            [sorted((tag, attr.get("vr")) for tag, attr in item.items()) for item in items if item])


@pytest.mark.django_db
def test_a_gold_checks_root_cannot_be_told_from_a_production_reads(cast, api):
    from tasks.creation import create_tasks
    from tasks.models import Task
    from tests.tasks.conftest import add_ct_studies

    studies = add_ct_studies(cast.project, 4)
    gold = create_tasks(cast.project, by=cast.manager, kind=Task.Kind.GOLD,
                        studies=cast.project.studies.filter(pk__in=[s.pk for s in studies[:2]]))
    create_tasks(cast.project, by=cast.manager, studies=cast.project.studies.filter(pk__in=[s.pk for s in studies[2:]]))
    for task in gold:
        reference = api(cast.manager).post(f"/api/projects/{cast.project.pk}/tasks/{task.pk}/reference/",
                                           {"findings": [{"label": "finding_laterality", "value": "left"}]},
                                           format="json")
        assert reference.status_code == 201
    cast.project.gold_rate, cast.project.gold_window = 1.0, 3
    cast.project.save()
    check = _claim(api(cast.annotator))
    assert check["task"] in {t.pk for t in gold}
    cast.project.gold_rate = 0.0
    cast.project.save()
    production = _claim(api(cast.second_annotator))
    assert production["task"] not in {t.pk for t in gold}
    assert set(check) == set(production) and set(check["dicomweb"]) == set(production["dicomweb"])
    for name in ("studies", "study_metadata", "series", "series_metadata", "instances"):
        seen = [_shape(api(user).get(_paths(body)[name]))
                for user, body in ((cast.annotator, check), (cast.second_annotator, production))]
        assert seen[0] == seen[1], name


@pytest.mark.django_db(transaction=True)
def test_dicomweb_client_opens_the_read_through_every_path_of_its_root(cast, api, queued, live_server, settings):
    from dicomweb_client.api import DICOMwebClient
    from knox.models import AuthToken

    settings.PUBLIC_BASE_URL = live_server.url
    body = _claim(api(cast.annotator))
    _, token = AuthToken.objects.create(cast.annotator)
    client = DICOMwebClient(url=body["dicomweb"]["root"], headers={"Authorization": f"Bearer {token}"})
    [study] = client.search_for_studies()
    assert study["0020000D"]["Value"] == [body["study_uid"]]
    assert client.search_for_studies(search_filters={"PatientID": "another-patient"}) == []
    [series] = client.search_for_series(body["study_uid"])
    series_uid = series["0020000E"]["Value"][0]
    instances = client.search_for_instances(body["study_uid"], series_uid)
    metadata = client.retrieve_series_metadata(body["study_uid"], series_uid)
    assert len(instances) == len(metadata) == 2
    assert all(m["7FE00010"]["BulkDataURI"].startswith(body["dicomweb"]["root"]) for m in metadata)
    [pixels] = client.retrieve_bulkdata(metadata[0]["7FE00010"]["BulkDataURI"])
    sop_uid = metadata[0]["00080018"]["Value"][0]
    [frame] = client.retrieve_instance_frames(body["study_uid"], series_uid, sop_uid, frame_numbers=[1])
    assert frame == pixels and len(frame) == 16 * 16 * 2
    retrieved = client.retrieve_study(body["study_uid"])
    assert sorted(ds.SOPInstanceUID for ds in retrieved) == sorted(i["00080018"]["Value"][0] for i in instances)
    # The same token at another study's URL under this root: nothing there.
    other = next(t.study.study_uid for t in queued if t.study.study_uid != body["study_uid"])
    with pytest.raises(Exception, match="404"):
        client.retrieve_study_metadata(other)


@pytest.mark.django_db
def test_a_frame_under_a_reads_root_costs_one_lookup_of_the_read_and_one_of_the_instance(cast, api, queued):
    """A viewer asks for every frame on its own: beside the token check and the audit event, a frame
    request looks up the live read once and the instance (with its frame layout) once."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    client = api(cast.annotator)
    body = _claim(client)
    metadata = client.get(_paths(body)["series_metadata"]).json()
    url = metadata[0]["7FE00010"]["BulkDataURI"].split("testserver", 1)[1]
    with CaptureQueriesContext(connection) as queries:
        response = client.get(url, HTTP_ACCEPT=OHIF_FRAMES)
        assert response.status_code == 200 and b"".join(response.streaming_content)
    reads = [q for q in queries if "FROM tasks_read r" in q["sql"]]
    instances = [q for q in queries if "core_instance" in q["sql"] and "audit" not in q["sql"]]
    assert len(reads) == 1 and len(instances) == 1, [q["sql"][:120] for q in queries]
