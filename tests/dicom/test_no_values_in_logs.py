"""A malformed value may be a name: reading and de-identifying it never puts it in a log or a warning."""

import io
import logging
import warnings

import pytest
from pydicom.dataelem import RawDataElement
from pydicom.tag import Tag

from core.dicom import synthetic
from core.dicom.ingest import IngestItem, ingest_files

pytestmark = pytest.mark.django_db


def test_a_malformed_value_holding_a_name_is_not_logged_or_warned(cast, caplog):
    ds = synthetic.make_ct_series(n_slices=1, rows=16, cols=16, seed=5)[0]
    # InstanceNumber holding a name, as a sender's file gives it (raw bytes, decoded on access)
    ds[0x00200013] = RawDataElement(Tag(0x00200013), "IS", 10, b"SMITHJOHN ", 0, False, True)
    with caplog.at_level(logging.DEBUG), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        report = ingest_files(cast.project, [IngestItem("a.dcm", reader=io.BytesIO(synthetic.to_bytes(ds)))],
                              by=None, source="folder")
    assert "SMITHJOHN" not in caplog.text
    assert not [w for w in caught if "SMITHJOHN" in str(w.message)]
    assert "SMITHJOHN" not in repr(report)
