"""DICOMweb as OHIF and dicomweb-client use it: QIDO-RS, WADO-RS, STOW-RS, rendered, scoping."""

import email
import io
import uuid

import pydicom
import pytest
from PIL import Image

from core.dicom import synthetic
from core.dicom.ingest import IngestItem, ingest_files
from core.dicom.models import Instance, Series, Study

pytestmark = pytest.mark.django_db


@pytest.fixture
def ingested(cast):
    ct = synthetic.make_ct_series(n_slices=4, rows=32, cols=32, seed=21)
    mr = synthetic.make_mr_study(sequences=("FLAIR",), seed=22)[:2]
    items = [IngestItem(f"{i}", reader=io.BytesIO(synthetic.to_bytes(ds))) for i, ds in enumerate(ct + mr)]
    ingest_files(cast.project, items, by=None, source="folder")
    ct_study = Study.objects.get(modalities=["CT"])
    ct_series = Series.objects.get(study=ct_study)
    return {"study": ct_study, "series": ct_series, "instance": ct_series.instances.order_by("instance_number")[0],
            "mr_study": Study.objects.get(modalities=["MR"])}


def _parts(response) -> list[tuple[str, bytes]]:
    body = b"".join(response.streaming_content) if response.streaming else response.content
    message = email.message_from_bytes(f"Content-Type: {response['Content-Type']}\r\n\r\n".encode() + body)
    return [(part.get_content_type(), part.get_payload(decode=True)) for part in message.get_payload()]


def _value(attrs: dict, tag: str):
    values = attrs[tag].get("Value", [])
    return values[0] if values else None


def test_qido_studies_with_filters(cast, api, ingested):
    client = api(cast.manager)
    everything = client.get("/dicomweb/studies")
    assert everything.status_code == 200 and everything["Content-Type"] == "application/dicom+json"
    assert len(everything.json()) == 2
    mr = client.get("/dicomweb/studies", {"ModalitiesInStudy": "MR"}).json()
    assert [_value(s, "0020000D") for s in mr] == [ingested["mr_study"].study_uid]
    study = ingested["study"]
    by_uid = client.get("/dicomweb/studies", {"StudyInstanceUID": study.study_uid}).json()
    assert _value(by_uid[0], "00201208") == 4 and _value(by_uid[0], "00201206") == 1
    pseudonym = study.patient_pseudonym
    wildcard = client.get("/dicomweb/studies", {"PatientID": pseudonym[:4] + "*"}).json()
    assert study.study_uid in [_value(s, "0020000D") for s in wildcard]
    assert client.get("/dicomweb/studies", {"PatientID": "NOBODY*"}).json() == []
    paged = client.get("/dicomweb/studies", {"limit": 1, "offset": 1}).json()
    assert len(paged) == 1
    if study.study_date:
        ranged = client.get("/dicomweb/studies", {"StudyDate": f"{study.study_date}-{study.study_date}"}).json()
        assert study.study_uid in [_value(s, "0020000D") for s in ranged]
    assert client.get("/dicomweb/studies", {"StudyDate": "yesterday"}).status_code == 400
    warned = client.get("/dicomweb/studies", {"includefield": "all", "ReferringPhysicianName": "X"})
    assert warned.status_code == 200 and "ReferringPhysicianName" in warned["Warning"]


def test_qido_series_and_instances(cast, api, ingested):
    client = api(cast.manager)
    study, series = ingested["study"], ingested["series"]
    found = client.get(f"/dicomweb/studies/{study.study_uid}/series", {"Modality": "CT"}).json()
    assert [_value(s, "0020000E") for s in found] == [series.series_uid]
    instances = client.get(f"/dicomweb/studies/{study.study_uid}/series/{series.series_uid}/instances").json()
    assert len(instances) == 4 and _value(instances[0], "00280010") == 32


def test_wado_retrieve_instance_series_and_metadata(cast, api, ingested):
    client = api(cast.manager)
    study, series, instance = ingested["study"], ingested["series"], ingested["instance"]
    base = f"/dicomweb/studies/{study.study_uid}/series/{series.series_uid}"
    response = client.get(f"{base}/instances/{instance.sop_instance_uid}",
                          HTTP_ACCEPT='multipart/related; type="application/dicom"')
    assert response.status_code == 200
    [(kind, data)] = _parts(response)
    ds = pydicom.dcmread(io.BytesIO(data))
    assert kind == "application/dicom" and ds.SOPInstanceUID == instance.sop_instance_uid
    assert ds.PatientIdentityRemoved == "YES"
    assert len(_parts(client.get(base))) == 4
    metadata = client.get(f"{base}/metadata").json()
    assert len(metadata) == 4
    assert metadata[0]["7FE00010"]["BulkDataURI"].endswith("/frames/1")
    assert "DOE" not in str(metadata)
    refused = client.get(f"{base}/instances/{instance.sop_instance_uid}", HTTP_ACCEPT="application/json")
    assert refused.status_code == 406


def test_wado_frames_rendered_and_thumbnail(cast, api, ingested):
    client = api(cast.manager)
    study, series, instance = ingested["study"], ingested["series"], ingested["instance"]
    url = f"/dicomweb/studies/{study.study_uid}/series/{series.series_uid}/instances/{instance.sop_instance_uid}"
    for accept in ('multipart/related; type="application/octet-stream"', 'multipart/related; type="*/*"', ""):
        response = client.get(f"{url}/frames/1", HTTP_ACCEPT=accept)
        assert response.status_code == 200, accept
        [(kind, data)] = _parts(response)
        assert kind == "application/octet-stream" and len(data) == 32 * 32 * 2
    assert client.get(f"{url}/frames/9").status_code == 404
    rendered = client.get(f"{url}/rendered", HTTP_ACCEPT="image/jpeg")
    assert rendered["Content-Type"] == "image/jpeg"
    assert Image.open(io.BytesIO(rendered.content)).size == (32, 32)
    thumb = client.get(f"{url}/thumbnail", {"viewport": "16,16"})
    assert max(Image.open(io.BytesIO(thumb.content)).size) <= 16


def test_dicomweb_is_scoped_to_the_callers_projects(cast, api, ingested):
    study = ingested["study"]
    for user in (cast.outsider, cast.client_viewer, cast.annotator, cast.auditor):
        client = api(user)
        assert client.get("/dicomweb/studies").json() == [], user
        assert client.get(f"/dicomweb/studies/{study.study_uid}/series").status_code == 404, user
        assert client.get(f"/dicomweb/studies/{study.study_uid}").status_code == 404, user
    assert api(None).get("/dicomweb/studies").status_code == 401
    assert api(cast.qa).get(f"/dicomweb/studies/{study.study_uid}/series").status_code == 200


def _stow_body(datasets, boundary: str, extra: list[bytes] = ()) -> bytes:
    parts = [synthetic.to_bytes(ds) for ds in datasets] + list(extra)
    body = b""
    for data in parts:
        body += f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + data + b"\r\n"
    return body + f"--{boundary}--\r\n".encode()


def test_stow_rs_stores_and_reports_referenced_and_failed(cast, api):
    client = api(cast.manager)
    boundary = uuid.uuid4().hex
    datasets = synthetic.make_ct_series(n_slices=2, rows=16, cols=16, seed=31)
    content_type = f'multipart/related; type="application/dicom"; boundary={boundary}'
    response = client.generic("POST", f"/dicomweb/studies?project={cast.project.pk}",
                              _stow_body(datasets, boundary), content_type=content_type)
    assert response.status_code == 200, response.content
    referenced = response.json()["00081199"]["Value"]
    assert len(referenced) == 2
    stored = set(Instance.objects.values_list("sop_instance_uid", flat=True))
    assert {_value(r, "00081155") for r in referenced} == stored

    more = synthetic.make_ct_series(n_slices=1, rows=16, cols=16, seed=32)
    mixed = client.generic("POST", f"/dicomweb/studies?project={cast.project.pk}",
                           _stow_body(more, boundary, extra=[b"garbage" * 50]), content_type=content_type)
    assert mixed.status_code == 202
    failed = mixed.json()["00081198"]["Value"]
    assert len(failed) == 1 and _value(failed[0], "00081197") == 0x0110

    wrong = client.generic("POST", f"/dicomweb/studies?project={cast.project.pk}", b"x",
                           content_type="application/json")
    assert wrong.status_code == 415


def test_stow_rs_into_a_named_study_refuses_other_studies_without_storing(cast, api):
    client = api(cast.manager)
    boundary = uuid.uuid4().hex
    datasets = synthetic.make_ct_series(n_slices=1, rows=16, cols=16, seed=41)
    content_type = f'multipart/related; type="application/dicom"; boundary={boundary}'
    response = client.generic("POST", f"/dicomweb/studies/1.2.3.4.5?project={cast.project.pk}",
                              _stow_body(datasets, boundary), content_type=content_type)
    assert response.status_code == 409
    assert _value(response.json()["00081198"]["Value"][0], "00081197") == 0xA900
    assert Instance.objects.count() == 0
    ok = client.generic("POST", f"/dicomweb/studies/{datasets[0].StudyInstanceUID}?project={cast.project.pk}",
                        _stow_body(datasets, boundary), content_type=content_type)
    assert ok.status_code == 200


def test_stow_needs_ingest_permission(cast, api):
    boundary = uuid.uuid4().hex
    body = _stow_body(synthetic.make_ct_series(n_slices=1, rows=16, cols=16, seed=51), boundary)
    content_type = f'multipart/related; type="application/dicom"; boundary={boundary}'
    response = api(cast.annotator).generic("POST", f"/dicomweb/studies?project={cast.project.pk}", body,
                                           content_type=content_type)
    assert response.status_code == 403
    assert Instance.objects.count() == 0


def test_quarantined_pixels_are_not_served_to_qa(cast, api):
    from pydicom.data import get_testdata_file

    cast.project.modalities = [*cast.project.modalities, "US"]  # ingest refuses modalities a project does not take
    cast.project.save(update_fields=["modalities"])
    ingest_files(cast.project, [IngestItem("us", reader=open(get_testdata_file("US1_UNCR.dcm"), "rb"))],
                 by=None, source="folder")
    instance = Instance.objects.select_related("series__study").get()
    url = (f"/dicomweb/studies/{instance.series.study.study_uid}/series/{instance.series.series_uid}/instances/"
           f"{instance.sop_instance_uid}")
    assert api(cast.qa).get(url).status_code == 404
    assert api(cast.manager).get(url).status_code == 200
