"""DICOMweb as OHIF 3.13's data source, 3D Slicer and dicomweb-client use it: each test sends the
request they send (../shared/OHIF.md; OHIF's DicomWebDataSource, dicomweb-client's web.py)."""

import email
import io

import pydicom
import pytest
from dicomweb_client.api import DICOMwebClient
from knox.models import AuthToken
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import get_frame
from rest_framework.test import APIClient

from core.dicom import synthetic
from core.dicom.ingest import IngestItem, ingest_files
from core.dicom.models import Instance, Series, Study
from tests.dicom.conftest import pydicom_bytes

EXPLICIT_LE = "1.2.840.10008.1.2.1"
RLE = "1.2.840.10008.1.2.5"
# OHIF 3.13's frame request (cornerstone's WADO-RS image loader) and its whole-instance one for a SEG,
# with the data source's omitQuotationForMultipartRequest: true.
OHIF_FRAMES = "multipart/related; type=application/octet-stream; transfer-syntax=*"
OHIF_INSTANCE = "multipart/related; type=application/dicom"


def _parts(response) -> list[tuple[str, bytes]]:
    """(the part's whole Content-Type, its bytes) of a multipart/related response."""
    body = b"".join(response.streaming_content) if response.streaming else response.content
    message = email.message_from_bytes(f"Content-Type: {response['Content-Type']}\r\n\r\n".encode() + body)
    return [(part["Content-Type"], part.get_payload(decode=True)) for part in message.get_payload()]


def _value(attrs: dict, tag: str):
    values = attrs[tag].get("Value", [])
    return values[0] if values else None


@pytest.fixture
def ingested(cast):
    ct = synthetic.make_ct_series(n_slices=3, rows=32, cols=32, seed=31)
    items = [IngestItem(f"ct{i}", reader=io.BytesIO(synthetic.to_bytes(ds))) for i, ds in enumerate(ct)]
    items.append(IngestItem("rle", reader=io.BytesIO(pydicom_bytes("emri_small_RLE.dcm"))))
    ingest_files(cast.project, items, by=None, source="folder")
    ct_study = Study.objects.get(modalities=["CT"])
    ct_series = Series.objects.get(study=ct_study)
    rle = Instance.objects.get(transfer_syntax_uid=RLE)
    return {"study": ct_study, "series": ct_series, "instance": ct_series.instances.order_by("instance_number")[0],
            "rle": rle}


def _url(instance: Instance) -> str:
    series = instance.series
    return (f"/dicomweb/studies/{series.study.study_uid}/series/{series.series_uid}"
            f"/instances/{instance.sop_instance_uid}")


# --- QIDO-RS -----------------------------------------------------------------------------------

@pytest.mark.django_db
def test_qido_studies_answers_the_fields_ohif_includes_and_all_that_the_index_holds(cast, api, ingested):
    client, study = api(cast.manager), ingested["study"]
    ohif = client.get("/dicomweb/studies", {"StudyInstanceUID": study.study_uid, "limit": 101, "offset": 0,
                                            "fuzzymatching": "false",
                                            "includefield": "00081030,00080060,00080090,00100030"})
    [found] = ohif.json()
    assert "Warning" not in ohif
    assert found["00080090"] == {"vr": "PN"} and found["00100030"] == {"vr": "DA"}  # removed by de-identification
    assert _value(found, "0020000D") == study.study_uid and "00101010" not in found
    by_keyword = client.get("/dicomweb/studies", {"StudyInstanceUID": study.study_uid,
                                                  "includefield": "PatientAge"}).json()[0]
    assert "00101010" in by_keyword and "00080090" not in by_keyword
    everything = client.get("/dicomweb/studies", {"StudyInstanceUID": study.study_uid, "includefield": "all"}).json()[0]
    assert {"00101010", "00080090", "00100030", "00201208"} <= set(everything)
    unknown = client.get("/dicomweb/studies", {"includefield": "NoSuchKeyword"})
    assert unknown.status_code == 200 and "NoSuchKeyword" in unknown["Warning"]


@pytest.mark.django_db
def test_qido_series_and_instances_return_named_and_all_attributes(cast, api, ingested):
    client, study, series = api(cast.manager), ingested["study"], ingested["series"]
    ohif = client.get(f"/dicomweb/studies/{study.study_uid}/series", {"includefield": "0008103E,00080021"}).json()
    assert [_value(s, "0020000E") for s in ohif] == [series.series_uid]
    assert "00200052" not in ohif[0]
    named = client.get(f"/dicomweb/studies/{study.study_uid}/series",
                       {"includefield": ["FrameOfReferenceUID", "00100020"]}).json()[0]
    assert _value(named, "00200052") == series.frame_of_reference_uid
    assert _value(named, "00100020") == study.patient_pseudonym
    base = f"/dicomweb/studies/{study.study_uid}/series/{series.series_uid}/instances"
    default = client.get(base).json()[0]
    assert "00200032" not in default and "00100020" not in default
    everything = client.get(base, {"includefield": "all"}).json()
    first = sorted(everything, key=lambda i: _value(i, "00200013"))[0]
    instance = ingested["instance"]
    assert first["00200032"]["Value"] == pytest.approx(instance.position)
    assert first["00280030"]["Value"] == pytest.approx(instance.pixel_spacing)
    assert _value(first, "00083002") == instance.transfer_syntax_uid
    assert _value(first, "00100020") == study.patient_pseudonym and "0008103E" in first


@pytest.mark.django_db
def test_qido_fuzzymatching_matches_patient_name_components_by_case_insensitive_prefix(cast, api, ingested):
    client, study = api(cast.manager), ingested["study"]
    pseudonym = study.patient_pseudonym
    prefix = pseudonym[:6].lower()
    fuzzy = client.get("/dicomweb/studies", {"PatientName": prefix, "fuzzymatching": "true"}).json()
    assert study.study_uid in [_value(s, "0020000D") for s in fuzzy]
    assert client.get("/dicomweb/studies", {"PatientName": prefix, "fuzzymatching": "false"}).json() == []
    assert client.get("/dicomweb/studies", {"PatientName": prefix}).json() == []
    inside = pseudonym[4:9].lower()  # not the start of a name component
    assert client.get("/dicomweb/studies", {"PatientName": inside, "fuzzymatching": "true"}).json() == []
    exact = client.get("/dicomweb/studies", {"PatientName": pseudonym}).json()
    assert study.study_uid in [_value(s, "0020000D") for s in exact]


@pytest.mark.django_db
def test_qido_limit_and_offset_page_through_the_matches(cast, api, ingested):
    client = api(cast.manager)
    everything = [_value(s, "0020000D") for s in client.get("/dicomweb/studies").json()]
    assert len(everything) == 2
    pages = [client.get("/dicomweb/studies", {"limit": 1, "offset": n}).json() for n in (0, 1, 2)]
    assert [[_value(s, "0020000D") for s in page] for page in pages] == [everything[:1], everything[1:], []]
    assert client.get("/dicomweb/studies", {"limit": "x"}).status_code == 400
    assert client.get("/dicomweb/studies", {"offset": 10**30}).json() == []  # past a bigint: no rows, not a 500


# --- WADO-RS frames and instances ------------------------------------------------------------------

@pytest.mark.django_db
def test_frames_name_their_transfer_syntax_on_every_part(cast, api, ingested):
    client, url = api(cast.manager), _url(ingested["instance"])
    for accept in (OHIF_FRAMES, 'multipart/related; type="application/octet-stream"', "",
                   f'multipart/related; type="application/octet-stream"; transfer-syntax={EXPLICIT_LE}'):
        response = client.get(f"{url}/frames/1", HTTP_ACCEPT=accept)
        assert response.status_code == 200, accept
        assert response["Content-Type"].startswith('multipart/related; type="application/octet-stream"')
        [(content_type, data)] = _parts(response)
        assert content_type == f"application/octet-stream; transfer-syntax={EXPLICIT_LE}", accept
        assert len(data) == 32 * 32 * 2
    refused = client.get(f"{url}/frames/1", HTTP_ACCEPT='multipart/related; type="image/jpeg"')
    assert refused.status_code == 406


@pytest.mark.django_db
def test_compressed_frames_come_as_stored_when_accepted_else_decoded(cast, api, ingested):
    client, rle = api(cast.manager), ingested["rle"]
    url = _url(rle)
    stored = pydicom.dcmread(io.BytesIO(pydicom_bytes("emri_small_RLE.dcm")))
    assert rle.frames == 10  # the first-frame trial decode at ingest once made it one
    response = client.get(f"{url}/frames/2,10", HTTP_ACCEPT=OHIF_FRAMES)
    assert response.status_code == 200
    parts = _parts(response)
    assert [content_type for content_type, _ in parts] == [f"application/octet-stream; transfer-syntax={RLE}"] * 2
    assert [data for _, data in parts] == [get_frame(stored.PixelData, n, number_of_frames=10) for n in (1, 9)]
    for accept in ('multipart/related; type="image/dicom-rle"', f"multipart/related; type=application/octet-stream; "
                                                                  f"transfer-syntax={RLE}"):
        [(content_type, data)] = _parts(client.get(f"{url}/frames/2", HTTP_ACCEPT=accept))
        assert content_type.endswith(f"transfer-syntax={RLE}") and data == parts[0][1], accept
    decoded = client.get(f"{url}/frames/2", HTTP_ACCEPT='multipart/related; type="application/octet-stream"')
    [(content_type, data)] = _parts(decoded)
    assert content_type == f"application/octet-stream; transfer-syntax={EXPLICIT_LE}"
    assert data == stored.pixel_array[1].astype("<u2").tobytes()
    # q-values: the preferred choice wins when it can be met, the next one when it cannot.
    preferred = ('multipart/related; type="application/octet-stream"; q=0.4, '
                 'multipart/related; type="image/dicom-rle"; q=0.9')
    [(content_type, _)] = _parts(client.get(f"{url}/frames/1", HTTP_ACCEPT=preferred))
    assert content_type == f"image/dicom-rle; transfer-syntax={RLE}"
    jpeg_first = ('multipart/related; type="image/jpeg", '
                  'multipart/related; type="application/octet-stream"; q=0.5')
    [(content_type, _)] = _parts(client.get(f"{url}/frames/1", HTTP_ACCEPT=jpeg_first))
    assert content_type == f"application/octet-stream; transfer-syntax={EXPLICIT_LE}"


@pytest.mark.django_db
def test_instance_retrieval_answers_the_request_ohif_sends_for_a_seg(cast, api, ingested):
    client, rle = api(cast.manager), ingested["rle"]
    for accept in (OHIF_INSTANCE, f"{OHIF_INSTANCE}; transfer-syntax=*", f'{OHIF_INSTANCE}; transfer-syntax="{RLE}"'):
        response = client.get(_url(rle), HTTP_ACCEPT=accept)
        assert response.status_code == 200, accept
        assert response["Content-Type"].startswith('multipart/related; type="application/dicom"')
        [(content_type, data)] = _parts(response)
        assert content_type == f"application/dicom; transfer-syntax={RLE}"
        ds = pydicom.dcmread(io.BytesIO(data))
        assert ds.SOPInstanceUID == rle.sop_instance_uid and ds.NumberOfFrames == 10
        assert len(ds.pixel_array) == 10
    # radqueue does not transcode: a request for another syntax only is refused before anything is sent.
    assert client.get(_url(rle), HTTP_ACCEPT=f"{OHIF_INSTANCE}; transfer-syntax={EXPLICIT_LE}").status_code == 406


@pytest.mark.django_db
def test_thumbnails_of_a_study_a_series_and_an_instance_are_jpegs(cast, api, ingested):
    client, study, series, instance = api(cast.manager), ingested["study"], ingested["series"], ingested["instance"]
    base = f"/dicomweb/studies/{study.study_uid}"
    for url in (f"{base}/thumbnail", f"{base}/series/{series.series_uid}/thumbnail", f"{_url(instance)}/thumbnail"):
        response = client.get(url, HTTP_ACCEPT="image/jpeg")
        assert response.status_code == 200 and response["Content-Type"] == "image/jpeg", url
        assert Image.open(io.BytesIO(response.content)).format == "JPEG"
        # OHIF's thumbnailDirect puts the media type in the query (an <img> sends no Accept of its own).
        direct = client.get(url, {"accept": "image/jpeg", "viewport": "16,16"}, HTTP_ACCEPT="text/html")
        assert max(Image.open(io.BytesIO(direct.content)).size) <= 16, url
    assert client.get(f"{base}/thumbnail", HTTP_ACCEPT="image/png").status_code == 406


# --- Authentication and origins ----------------------------------------------------------------

@pytest.mark.django_db
def test_a_bearer_token_is_accepted_as_a_knox_token(cast, ingested):
    _, token = AuthToken.objects.create(cast.manager)
    for scheme in ("Bearer", "bearer", "Token"):
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=f"{scheme} {token}")
        assert client.get("/dicomweb/studies").status_code == 200, scheme
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {token[:-2]}xx")
    assert client.get("/dicomweb/studies").status_code == 401
    client.credentials(HTTP_AUTHORIZATION="Basic dXNlcjpwYXNz")
    assert client.get("/dicomweb/studies").status_code == 401


@pytest.mark.django_db
def test_cors_preflight_lets_a_viewer_on_a_configured_origin_send_authorization(cast, settings):
    settings.CORS_ALLOWED_ORIGINS = ["https://viewer.example.org"]
    client = APIClient()
    preflight = client.options("/dicomweb/studies", HTTP_ORIGIN="https://viewer.example.org",
                               HTTP_ACCESS_CONTROL_REQUEST_METHOD="GET",
                               HTTP_ACCESS_CONTROL_REQUEST_HEADERS="authorization, accept, content-type")
    assert preflight.status_code == 200
    assert preflight["Access-Control-Allow-Origin"] == "https://viewer.example.org"
    allowed = {h.strip().lower() for h in preflight["Access-Control-Allow-Headers"].split(",")}
    assert {"authorization", "accept", "content-type"} <= allowed
    assert "POST" in preflight["Access-Control-Allow-Methods"]
    other = client.options("/dicomweb/studies", HTTP_ORIGIN="https://elsewhere.example.org",
                           HTTP_ACCESS_CONTROL_REQUEST_METHOD="GET")
    assert "Access-Control-Allow-Origin" not in other


# --- dicomweb-client against a live server ---------------------------------------------------------

def _in_memory(ds: Dataset) -> Dataset:
    """The dataset as a script builds it: no preamble, no file it came from."""
    bare = Dataset()
    bare.update(ds)
    bare.file_meta = FileMetaDataset(ds.file_meta)
    return bare


@pytest.mark.django_db(transaction=True)
def test_store_instances_of_datasets_built_in_memory_and_retrieve_their_bulkdata(cast, live_server, settings):
    # dicomweb-client sends "Host: localhost" without the port: the URLs come from PUBLIC_BASE_URL.
    settings.PUBLIC_BASE_URL = live_server.url
    _, token = AuthToken.objects.create(cast.manager)
    client = DICOMwebClient(url=f"{live_server.url}/dicomweb", headers={"Authorization": f"Bearer {token}"})
    datasets = [_in_memory(ds) for ds in synthetic.make_ct_series(n_slices=2, rows=16, cols=16, seed=62)]
    stored = client.store_instances(datasets)
    assert len(stored.ReferencedSOPSequence) == 2 and "FailedSOPSequence" not in stored
    assert all(item.RetrieveURL.startswith(live_server.url) for item in stored.ReferencedSOPSequence)
    study_uid = client.search_for_studies()[0]["0020000D"]["Value"][0]
    series_uid = client.search_for_series(study_uid)[0]["0020000E"]["Value"][0]
    metadata = client.retrieve_series_metadata(study_uid, series_uid)
    uri = metadata[0]["7FE00010"]["BulkDataURI"]
    assert uri.startswith(f"{live_server.url}/dicomweb/"), uri
    [frame] = client.retrieve_bulkdata(uri)
    assert len(frame) == 16 * 16 * 2
    sop_uid = metadata[0]["00080018"]["Value"][0]
    [compressed_or_not] = client.retrieve_instance_frames(study_uid, series_uid, sop_uid, frame_numbers=[1],
                                                          media_types=(("application/octet-stream", "*"),))
    assert compressed_or_not == frame
