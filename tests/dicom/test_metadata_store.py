"""WADO-RS metadata and frames from what ingest recorded (core.dicom.metadata), against the parse path:
the same instances through the HTTP API, with the recorded rows and without them."""

import base64
import email
import io
import os

import highdicom as hd
import numpy as np
import pydicom
import pydicom.uid
import pytest
from django.core.management import call_command
from django.test import override_settings

from core.dicom import synthetic
from core.dicom.crypto import decrypt_bytes, read_header
from core.dicom.ingest import IngestItem, ingest_files
from core.dicom.metadata import context_of
from core.dicom.models import Instance, InstanceMetadata
from core.dicom.storage import EncryptedStore, get_store
from tests.dicom.conftest import pydicom_bytes

BASE = "https://viewer.example/rq"
OHIF_FRAMES = "multipart/related; type=application/octet-stream; transfer-syntax=*"
NATIVE_FRAMES = 'multipart/related; type="application/octet-stream"; transfer-syntax=1.2.840.10008.1.2.1'
# Compressed, multi-frame, with and without offset tables, of the modalities OHIF is used for.
COMPRESSED = ["emri_small_RLE.dcm", "SC_rgb_rle_2frame.dcm", "JPEG2000.dcm", "color3d_jpeg_baseline.dcm",
              "MR_small_jp2klossless.dcm", "SC_rgb_jpeg_gdcm.dcm", "CT_small.dcm"]


def binary_seg(sources: list) -> pydicom.Dataset:
    """A binary SEG of a CT series, as a reader's saved object is (highdicom)."""
    mask = np.zeros((len(sources), sources[0].Rows, sources[0].Columns), dtype=bool)
    mask[:, 4:9, 5:11] = True
    tissue = hd.sr.CodedConcept("85756007", "SCT", "Tissue")
    segment = hd.seg.SegmentDescription(
        segment_number=1, segment_label="Nodule", segmented_property_category=tissue,
        segmented_property_type=tissue, algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL)
    return hd.seg.Segmentation(
        source_images=sources, pixel_array=mask, segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[segment], series_instance_uid=hd.UID(), series_number=90, sop_instance_uid=hd.UID(),
        instance_number=1, manufacturer="test", manufacturer_model_name="test", software_versions="1",
        device_serial_number="1")


def text_sr(source: pydicom.Dataset) -> pydicom.Dataset:
    """A structured report without pixel data, of the same study."""
    ds = pydicom.Dataset()
    for keyword in ("PatientName", "PatientID", "StudyInstanceUID", "StudyDate", "StudyTime", "AccessionNumber"):
        if keyword in source:
            setattr(ds, keyword, getattr(source, keyword))
    ds.SOPClassUID, ds.SOPInstanceUID = "1.2.840.10008.5.1.4.1.1.88.11", pydicom.uid.generate_uid()
    ds.Modality, ds.SeriesInstanceUID, ds.SeriesNumber, ds.InstanceNumber = "SR", pydicom.uid.generate_uid(), 91, 1
    ds.ValueType, ds.CompletionFlag, ds.VerificationFlag = "CONTAINER", "COMPLETE", "UNVERIFIED"
    ds.ContinuityOfContent = "SEPARATE"
    ds.ConceptNameCodeSequence = [pydicom.Dataset()]
    ds.ConceptNameCodeSequence[0].CodeValue = "18748-4"
    ds.ConceptNameCodeSequence[0].CodingSchemeDesignator = "LN"
    ds.ConceptNameCodeSequence[0].CodeMeaning = "Diagnostic imaging report"
    ds.file_meta = pydicom.dataset.FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    return ds


@pytest.fixture
def ingested(cast):
    cast.project.modalities = ["CT", "MR", "US", "OT", "NM", "SEG", "SR"]
    cast.project.save(update_fields=["modalities"])
    ct = synthetic.make_ct_series(n_slices=3, rows=32, cols=32, seed=5)
    ct[0].add_new(0x00282000, "OB", bytes(range(256)) * 24)  # an ICC profile: a bulk value over the threshold
    datasets = [*ct, *synthetic.make_mr_series("T2", n_slices=2, rows=24, cols=24, seed=6),
                synthetic.make_enhanced_ct(n_frames=5, rows=16, cols=16, seed=7)]
    datasets += [binary_seg(ct), text_sr(ct[0])]
    items = [IngestItem(f"synthetic {i}", reader=io.BytesIO(synthetic.to_bytes(ds))) for i, ds in enumerate(datasets)]
    items += [IngestItem(name, reader=io.BytesIO(pydicom_bytes(name))) for name in COMPRESSED]
    report = ingest_files(cast.project, items, by=None, source="folder")
    assert report.rejected == 0, [f.reason for f in report.files if f.status == "rejected"]
    return Instance.objects.filter(project=cast.project)


def parse_path(instance: Instance, base: str) -> dict:
    """What WADO-RS metadata answered for an instance before ingest recorded it: its stored object
    parsed up to the pixel data, bulk values and the pixel data by BulkDataURI."""
    series = instance.series
    url = f"{base}/studies/{series.study.study_uid}/series/{series.series_uid}/instances/{instance.sop_instance_uid}"
    with get_store().open(instance.storage_name) as reader:
        ds = pydicom.dcmread(reader, stop_before_pixels=True)
    data = ds.to_json_dict(bulk_data_threshold=4096, bulk_data_element_handler=lambda e: f"{url}/bulk/{e.tag:08X}")
    if instance.rows:
        numbers = ",".join(map(str, range(1, instance.frames + 1)))
        data["7FE00010"] = {"vr": "OW", "BulkDataURI": f"{url}/frames/{numbers}"}
    data["00083002"] = {"vr": "UI", "Value": [instance.transfer_syntax_uid]}
    return data


def series_url(instance: Instance) -> str:
    return f"/dicomweb/studies/{instance.series.study.study_uid}/series/{instance.series.series_uid}"


def frames_of(client, instance: Instance, accept: str) -> list[tuple[str, bytes]]:
    numbers = ",".join(str(n) for n in range(1, instance.frames + 1))
    response = client.get(f"{series_url(instance)}/instances/{instance.sop_instance_uid}/frames/{numbers}",
                          HTTP_ACCEPT=accept)
    assert response.status_code == 200, response.content[:300]
    body = b"".join(response.streaming_content)
    message = email.message_from_bytes(f"Content-Type: {response['Content-Type']}\r\n\r\n".encode() + body)
    return [(part["Content-Type"], part.get_payload(decode=True)) for part in message.get_payload()]


@pytest.fixture
def store_opens(monkeypatch):
    """How many times the object store is opened (every read of an object goes through open)."""
    opened = []
    original = EncryptedStore.open

    def counting(self, name):
        opened.append(name)
        return original(self, name)

    monkeypatch.setattr(EncryptedStore, "open", counting)
    return opened


@pytest.mark.django_db
@override_settings(PUBLIC_BASE_URL=BASE)
def test_series_metadata_from_what_ingest_recorded_equals_the_parse_path(cast, api, ingested):
    client = api(cast.manager)
    assert InstanceMetadata.objects.filter(instance__in=ingested).count() == ingested.count()
    seen_series, bulk_uris = set(), 0
    for instance in ingested.select_related("series__study"):
        if instance.series_id in seen_series:
            continue
        seen_series.add(instance.series_id)
        answered = client.get(f"{series_url(instance)}/metadata").json()
        members = list(Instance.objects.filter(series=instance.series).order_by("instance_number", "id"))
        assert answered == [parse_path(i, f"{BASE}/dicomweb") for i in members]
        bulk_uris += str(answered).count("/bulk/")
    assert len(seen_series) >= 10
    assert {"SEG", "SR"} <= {i.series.modality for i in ingested.select_related("series")}
    assert bulk_uris >= 1  # the ICC profile, served by URL under the public base


@pytest.mark.django_db
def test_stored_metadata_is_encrypted_and_holds_no_url(cast, ingested):
    row = InstanceMetadata.objects.select_related("instance").first()
    blob = bytes(row.json_encrypted)
    assert blob.startswith(b"RQE1") and row.instance.sop_instance_uid.encode() not in blob
    template = decrypt_bytes(blob, get_store().ring, context=context_of(row.instance.storage_name))
    assert row.instance.sop_instance_uid.encode() in template and b"http" not in template


@pytest.mark.django_db
def test_series_metadata_does_not_read_the_object_store(cast, api, ingested, store_opens):
    instance = ingested.filter(series__modality="CT", frames=1, rows=32).first()
    response = api(cast.manager).get(f"{series_url(instance)}/metadata")
    assert response.status_code == 200 and len(response.json()) == 3
    assert store_opens == []


@pytest.mark.django_db
def test_instances_without_recorded_metadata_are_parsed_once_and_recorded(cast, api, ingested, store_opens):
    client, instance = api(cast.manager), ingested.filter(series__modality="CT", rows=32).first()
    recorded = client.get(f"{series_url(instance)}/metadata").json()
    InstanceMetadata.objects.filter(instance__series=instance.series).delete()
    assert client.get(f"{series_url(instance)}/metadata").json() == recorded
    assert len(store_opens) == 3  # parsed once each, then recorded
    assert InstanceMetadata.objects.filter(instance__series=instance.series).count() == 3
    store_opens.clear()
    assert client.get(f"{series_url(instance)}/metadata").json() == recorded and store_opens == []


@pytest.mark.django_db
def test_frames_by_the_recorded_layout_equal_the_parse_path(cast, api, ingested):
    client = api(cast.manager)
    with_layout = 0
    for instance in ingested.filter(rows__isnull=False):
        layout = InstanceMetadata.objects.get(instance=instance).frame_layout
        with_layout += layout is not None
        compressed = instance.transfer_syntax_uid not in ("1.2.840.10008.1.2.1", "1.2.840.10008.1.2")
        accepts = [OHIF_FRAMES, NATIVE_FRAMES] if compressed else [OHIF_FRAMES]
        by_layout = [frames_of(client, instance, accept) for accept in accepts]
        InstanceMetadata.objects.filter(instance=instance).update(frame_layout=None)
        assert [frames_of(client, instance, accept) for accept in accepts] == by_layout, instance.transfer_syntax_uid
        assert all(content_type.count("transfer-syntax=") == 1 for parts in by_layout for content_type, _ in parts)
    assert with_layout >= ingested.filter(rows__isnull=False).count() - 1


@pytest.mark.django_db
def test_frames_by_layout_do_not_parse_the_header(cast, api, ingested, monkeypatch):
    instance = ingested.filter(series__modality="CT", rows=32).first()

    def no_parse(*args, **kwargs):
        raise AssertionError("the header was parsed")

    monkeypatch.setattr("core.dicom.part10.read", no_parse)
    [(content_type, data)] = frames_of(api(cast.manager), instance, OHIF_FRAMES)
    assert len(data) == 32 * 32 * 2 and "transfer-syntax=1.2.840.10008.1.2.1" in content_type


@pytest.mark.django_db
@override_settings(PUBLIC_BASE_URL=BASE)
def test_backfill_command_records_what_is_missing_and_is_idempotent(cast, api, ingested, store_opens):
    client = api(cast.manager)
    before = {i.pk: client.get(f"{series_url(i)}/metadata").json() for i in ingested}
    InstanceMetadata.objects.all().delete()
    out = io.StringIO()
    call_command("backfill_dicom_metadata", project=cast.project.pk, stdout=out)
    assert out.getvalue().startswith(f"{ingested.count()} instances recorded")
    assert InstanceMetadata.objects.count() == ingested.count()
    assert InstanceMetadata.objects.filter(frame_layout__isnull=False).count() >= ingested.count() - 1
    again = io.StringIO()
    call_command("backfill_dicom_metadata", stdout=again)
    assert again.getvalue().startswith("0 instances recorded")
    store_opens.clear()
    assert {i.pk: client.get(f"{series_url(i)}/metadata").json() for i in ingested} == before
    assert store_opens == []


@pytest.mark.django_db
def test_key_rotation_re_encrypts_the_recorded_metadata(cast, api, ingested, settings):
    client, instance = api(cast.manager), ingested.filter(series__modality="CT", rows=32).first()
    before = client.get(f"{series_url(instance)}/metadata").json()
    old = settings.RADQUEUE_STORAGE_KEYS
    settings.RADQUEUE_STORAGE_KEYS = f"rotated:{base64.b64encode(os.urandom(32)).decode()},{old}"
    out = io.StringIO()
    call_command("rotate_storage_key", stdout=out)
    ring = get_store().ring
    assert {read_header(io.BytesIO(bytes(row.json_encrypted))).key_id
            for row in InstanceMetadata.objects.all()} == {"rotated"}
    assert ring.current_id == "rotated"
    assert client.get(f"{series_url(instance)}/metadata").json() == before
