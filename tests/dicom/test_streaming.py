"""Ingest streams (issue 18, item 5): pixel data passes through unread, what is copied as read is
only what de-identification left untouched, and the storage format stays readable."""

import base64
import email
import io
import warnings
from pathlib import Path

import pydicom
import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from pydicom.data import get_testdata_file

from core.dicom import crypto, part10, synthetic
from core.dicom.crypto import IntegrityError, KeyRing, decrypt_bytes
from core.dicom.deid import deidentify_dataset
from core.dicom.models import Instance
from core.dicom.storage import get_store

SECRET = b"stream-test-secret"


def _parts(response) -> list[bytes]:
    body = b"".join(response.streaming_content) if response.streaming else response.content
    message = email.message_from_bytes(f"Content-Type: {response['Content-Type']}\r\n\r\n".encode() + body)
    return [part.get_payload(decode=True) for part in message.get_payload()]


def _streamed(data: bytes) -> bytes:
    """De-identify as ingest does: header parsed lazily, untouched elements and pixels copied."""
    part = part10.read(io.BytesIO(data))
    part.remember()
    deidentify_dataset(part.ds, secret=SECRET)
    out = io.BytesIO()
    part.write(out)
    return out.getvalue()


def _whole(data: bytes) -> bytes:
    """De-identify as before streaming: read whole, written whole by pydicom."""
    ds = pydicom.dcmread(io.BytesIO(data))
    deidentify_dataset(ds, secret=SECRET)
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


@pytest.mark.parametrize("name", ["CT_small.dcm", "MR_small.dcm", "JPEG2000.dcm", "rtplan.dcm",
                                  "MR_small_bigendian.dcm", "SC_rgb.dcm", "emri_small.dcm",
                                  "liver.dcm", "explicit_VR-UN.dcm"])
def test_streamed_de_identification_writes_what_pydicom_writes_from_a_whole_read(name):
    data = Path(get_testdata_file(name)).read_bytes()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        streamed, whole = pydicom.dcmread(io.BytesIO(_streamed(data))), pydicom.dcmread(io.BytesIO(_whole(data)))
    assert streamed.file_meta == whole.file_meta
    assert streamed.to_json_dict(bulk_data_threshold=10**9) == whole.to_json_dict(bulk_data_threshold=10**9)
    assert streamed.preamble == whole.preamble == b"\0" * 128


def test_an_edited_sequence_item_is_written_anew_never_copied():
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.OtherPatientIDsSequence = [pydicom.Dataset()]
    ds.OtherPatientIDsSequence[0].PatientID = "ZZHIDDEN-4411"
    ds.ReferencedImageSequence = [pydicom.Dataset()]
    ds.ReferencedImageSequence[0].ReferencedSOPInstanceUID = "1.2.3.4.5.6.7.8.9"
    buffer = io.BytesIO()
    ds.save_as(buffer)
    out = _streamed(buffer.getvalue())
    assert b"ZZHIDDEN-4411" not in out and b"1.2.3.4.5.6.7.8.9" not in out
    assert b"CompressedSamples" not in out and b"JFK IMAGING" not in out


def test_pixel_data_declaring_more_bytes_than_the_file_holds_is_refused():
    data = synthetic.to_bytes(synthetic.make_ct_series(n_slices=1, rows=32, cols=32, seed=3)[0])
    with pytest.raises(part10.Part10Error, match="truncated pixel data"):
        part10.read(io.BytesIO(data[:-100]))


@pytest.mark.django_db
def test_a_large_multi_frame_upload_ingests_and_is_retrievable_frame_by_frame(cast, api, settings):
    # Chunks smaller than a frame, so every frame spans several encrypted chunks.
    settings.RADQUEUE_MAX_FILE_BYTES = 64 * 1024 * 1024
    enhanced = synthetic.make_enhanced_ct(n_frames=24, rows=256, cols=256, seed=5)
    data = synthetic.to_bytes(enhanced)
    frame_bytes = 256 * 256 * 2
    client = api(cast.manager)
    response = client.post(f"/api/projects/{cast.project.pk}/studies/upload/",
                           {"files": [SimpleUploadedFile("enhanced.dcm", data, content_type="application/dicom")]},
                           format="multipart")
    assert response.status_code == 201, response.json()
    instance = Instance.objects.get(project=cast.project)
    assert instance.frames == 24
    series = instance.series
    url = (f"/dicomweb/studies/{series.study.study_uid}/series/{series.series_uid}/instances/"
           f"{instance.sop_instance_uid}")
    for number in (1, 13, 24):
        answer = client.get(f"{url}/frames/{number}", HTTP_ACCEPT="multipart/related; type=application/octet-stream")
        parts = _parts(answer)
        assert parts == [enhanced.PixelData[(number - 1) * frame_bytes:number * frame_bytes]]
    stored = pydicom.dcmread(get_store().open(instance.storage_name))
    assert stored.PixelData == enhanced.PixelData and "DOE" not in str(stored.PatientName)


# An RQE1 object as stored before streaming ingest (key b"k" * 32, id "old", context b"p1/a.dcm",
# chunk size 16, three chunks): streaming kept the format, and objects stored then must decrypt for ever.
OLD_KEY = "old:" + base64.b64encode(b"k" * 32).decode()
OLD_OBJECT = (
    "52514531036f6c64d2087b0f3f0712d186e7b802076ac85200000010938c0d9bd7dc20e18c648544b0db43724596f519"
    "6847aeac0de83ac7062564c41cf34911dae2205aebb722132d37e551b7f3e3406d9cf0c3e11bfdeb64e3833ae829fecc"
    "47a955d12d0defc39f0ffe46d79bfce26965b0"
)


def test_objects_stored_in_the_existing_format_still_decrypt():
    ring = KeyRing.from_setting(OLD_KEY)
    blob = bytes.fromhex(OLD_OBJECT)
    assert decrypt_bytes(blob, ring, b"p1/a.dcm") == b"radqueue RQE1 object, three chunks long"


def test_a_tampered_chunk_of_a_stored_object_fails_authentication(cast):
    store = get_store()
    data = bytes(range(256)) * 4096  # 1 MiB, three times: three chunks of the store's size
    name = "p0/tamper/a.dcm"
    store.put_bytes(name, data * 3)
    path = Path(store.storage.path(name))
    blob = bytearray(path.read_bytes())
    stride = crypto.DEFAULT_CHUNK_SIZE + crypto.TAG_SIZE
    header = crypto.read_header(io.BytesIO(bytes(blob))).length
    blob[header + stride + 10] ^= 1  # a byte inside the second chunk
    path.write_bytes(bytes(blob))
    assert store.read_range(name, 0, 100) == (data * 3)[:100]  # the first chunk is untouched
    with pytest.raises(IntegrityError):
        store.read_range(name, crypto.DEFAULT_CHUNK_SIZE + 5, 100)
    store.delete(name)


class _CountingFile:
    """A stored object's file that counts the bytes read from it."""

    def __init__(self, file, counter: list[int]):
        self._file, self._counter = file, counter

    def read(self, *args):
        data = self._file.read(*args)
        self._counter[0] += len(data)
        return data

    def __getattr__(self, name):
        return getattr(self._file, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._file.close()


@pytest.mark.django_db
def test_a_frame_of_a_large_multi_frame_instance_is_served_without_reading_the_whole_object(
        cast, api, tmp_path, monkeypatch):
    from core.dicom.dicomweb import _load, native_frames

    frames, rows, cols = 96, 512, 512
    frame_bytes = rows * cols * 2
    path = tmp_path / "enhanced.dcm"
    size = synthetic.write_enhanced_ct_file(path, frames, rows, cols)
    client = api(cast.manager)
    with open(path, "rb") as source:
        response = client.post(f"/api/projects/{cast.project.pk}/studies/upload/",
                               {"files": [SimpleUploadedFile("enhanced.dcm", source.read(),
                                                             content_type="application/dicom")]}, format="multipart")
    assert response.status_code == 201, response.json()
    instance = Instance.objects.get(project=cast.project)
    series = instance.series
    url = (f"/dicomweb/studies/{series.study.study_uid}/series/{series.series_uid}/instances/"
           f"{instance.sop_instance_uid}")
    store = get_store()
    read = [0]
    opened = store.storage.open
    monkeypatch.setattr(store.storage, "open", lambda name, mode="rb": _CountingFile(opened(name, mode), read))
    answer = client.get(f"{url}/frames/50,7", HTTP_ACCEPT="multipart/related; type=application/octet-stream")
    assert answer.status_code == 200
    served = _parts(answer)
    # The header's chunk, the final chunk (authenticated on opening) and the chunks the two frames
    # lie in: a few MiB of a 48 MiB object.
    assert read[0] < 4 * crypto.DEFAULT_CHUNK_SIZE + 2 * frame_bytes + 64 * 1024, (read[0], size)
    assert served == [synthetic.frame_pattern(49, rows, cols), synthetic.frame_pattern(6, rows, cols)]
    assert served == native_frames(_load(instance), [50, 7])  # the answer reading the whole object gave
