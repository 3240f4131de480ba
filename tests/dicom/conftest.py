import io
import zipfile

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from pydicom.data import get_testdata_file

from core.dicom import synthetic


def pydicom_bytes(name: str) -> bytes:
    with open(get_testdata_file(name), "rb") as handle:
        return handle.read()


def upload(name: str, data: bytes) -> SimpleUploadedFile:
    return SimpleUploadedFile(name, data, content_type="application/dicom")


def zip_of(members: dict[str, bytes], *, compression=zipfile.ZIP_DEFLATED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=compression) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


@pytest.fixture
def ct_series():
    return synthetic.make_ct_series(n_slices=6, rows=32, cols=32, seed=7)


@pytest.fixture
def ingest_url(cast):
    return f"/api/projects/{cast.project.pk}/studies/upload/"
