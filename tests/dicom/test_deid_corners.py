"""De-identification corners: the File Preamble, attributes nobody knows, malformed values, and every
attribute of the DICOM dictionary that Table E.1-1 does not list."""

import email
import io
import uuid
from datetime import date, time, timedelta

import pydicom
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom.data import get_testdata_file
from pydicom.datadict import DicomDictionary, tag_for_keyword
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.tag import Tag

from audit.models import AuditEvent
from core.dicom import deid, synthetic
from core.dicom.deid import DeidOptions, date_offset_days, deidentify_dataset, profile_table
from core.dicom.ingest import IngestItem, ingest_files
from core.dicom.models import Instance
from core.dicom.storage import get_store
from tests.dicom.conftest import pydicom_bytes, upload

SECRET = b"corner-secret"
ZEROS = b"\0" * 128
PREAMBLE_PHI = b"DOE^JOHN MRN12345"
DIRTY_PREAMBLE = PREAMBLE_PHI.ljust(128, b"\0")
UNKNOWN_TAGS = (0x00089999, 0x00181999)  # public groups, in neither the dictionary nor Table E.1-1

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def with_preamble(data: bytes, preamble: bytes = DIRTY_PREAMBLE) -> bytes:
    assert data[128:132] == b"DICM"
    return preamble + data[128:]


def written(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def assert_preamble_clean(blob: bytes) -> None:
    assert blob[:128] == ZEROS and blob[128:132] == b"DICM"
    assert b"DOE^JOHN" not in blob and b"MRN12345" not in blob


def wado_instance(client, instance: Instance) -> bytes:
    series = instance.series
    response = client.get(f"/dicomweb/studies/{series.study.study_uid}/series/{series.series_uid}/instances/"
                          f"{instance.sop_instance_uid}", HTTP_ACCEPT='multipart/related; type="application/dicom"')
    assert response.status_code == 200
    body = b"".join(response.streaming_content)
    message = email.message_from_bytes(f"Content-Type: {response['Content-Type']}\r\n\r\n".encode() + body)
    [part] = message.get_payload()
    return part.get_payload(decode=True)


# --- item 15: the File Preamble ---------------------------------------------------------------------


@pytest.mark.django_db
def test_preamble_holding_a_name_and_mrn_is_zeroed_in_storage_and_in_wado_rs(cast, api, ingest_url):
    client = api(cast.manager)
    response = client.post(ingest_url, {"files": [upload("ct.dcm", with_preamble(pydicom_bytes("CT_small.dcm")))]},
                           format="multipart")
    assert response.status_code == 201, response.json()
    instance = Instance.objects.select_related("series__study").get()
    assert_preamble_clean(get_store().read_bytes(instance.storage_name))
    assert_preamble_clean(wado_instance(client, instance))


@pytest.mark.django_db
def test_stow_rs_stores_a_zero_preamble(cast, api):
    [ds] = synthetic.make_ct_series(n_slices=1, rows=16, cols=16, seed=61)
    boundary = uuid.uuid4().hex
    body = (f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
            + with_preamble(synthetic.to_bytes(ds)) + f"\r\n--{boundary}--\r\n".encode())
    response = api(cast.manager).generic(
        "POST", f"/dicomweb/studies?project={cast.project.pk}", body,
        content_type=f'multipart/related; type="application/dicom"; boundary={boundary}')
    assert response.status_code == 200, response.content
    assert_preamble_clean(get_store().read_bytes(Instance.objects.get().storage_name))


@pytest.mark.django_db
def test_wado_rs_zeroes_the_preamble_of_an_object_stored_before_preambles_were_zeroed(cast, api):
    ingest_files(cast.project, [IngestItem("ct", reader=io.BytesIO(pydicom_bytes("CT_small.dcm")))], by=None,
                 source="folder")
    instance = Instance.objects.select_related("series__study").get()
    store = get_store()
    store.put_bytes(instance.storage_name, with_preamble(store.read_bytes(instance.storage_name)))
    assert store.read_bytes(instance.storage_name).startswith(PREAMBLE_PHI)
    served = wado_instance(api(cast.manager), instance)
    assert_preamble_clean(served)
    assert served[128:] == store.read_bytes(instance.storage_name)[128:]


def test_offline_deidentification_writes_a_zero_preamble(tmp_path):
    source = tmp_path / "in.dcm"
    source.write_bytes(with_preamble(pydicom_bytes("MR_small.dcm")))
    assert pydicom.dcmread(source).preamble == DIRTY_PREAMBLE
    target, _ = deid.deidentify_file(source, tmp_path / "out", secret=SECRET)
    assert_preamble_clean(target.read_bytes())


def test_zero_preamble_zeroes_a_tiff_header_and_leaves_zero_preambles_and_bare_datasets_alone():
    tiff = pydicom_bytes("CT_small.dcm")  # "II*\\0": a TIFF header in its preamble (PS3.10 7.5)
    assert tiff[:4] == b"II*\0"
    zeroed = deid.zero_preamble(tiff)
    assert zeroed[:128] == ZEROS and zeroed[128:] == tiff[128:]
    assert deid.zero_preamble(zeroed) is zeroed
    assert deid.zero_preamble(b"not dicom") == b"not dicom"


# --- item 16: unknown public attributes and malformed values ------------------------------------------


def raw(tag: int, vr: str | None, value: bytes) -> RawDataElement:
    return RawDataElement(Tag(tag), vr, len(value), value, 0, vr is None, True)


def test_unknown_public_attributes_are_removed_and_noted_by_tag_only():
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    for tag in UNKNOWN_TAGS:
        assert tag not in DicomDictionary and profile_table().row(tag) is None
    ds[UNKNOWN_TAGS[0]] = raw(UNKNOWN_TAGS[0], "UN", b"DOE^JOHN MRN12345 ")
    ds[UNKNOWN_TAGS[1]] = raw(UNKNOWN_TAGS[1], "LO", b"DOE^JOHN MRN12345 ")  # a VR the sender chose
    result = deidentify_dataset(ds, secret=SECRET)
    assert not any(tag in ds for tag in UNKNOWN_TAGS)
    assert result.actions["unknown_removed"] == 2
    assert "(0008,9999) UN: attribute unknown to the DICOM dictionary and Table E.1-1 removed" in result.notes
    assert any(n.startswith("(0018,1999) LO:") for n in result.notes)
    assert not any("DOE" in n or "MRN" in n for n in result.notes)
    assert b"MRN12345" not in written(ds)


MALFORMED = {
    "InstanceNumber": ("IS", b"DOE^JOHN"),
    "SpacingBetweenSlices": ("DS", b"MRN12345X "),
    "BodyPartExamined": ("CS", b"DOE^JOHN"),
}
# Seven bytes: not a whole number of 16-bit values. pydicom cannot decode it, so ingest refuses the
# file (below); the offline command, which decodes only what it changes, blanks it.
MALFORMED_BINARY = {"AcquisitionMatrix": ("US", b"DOEJOHN")}


def _with_malformed_values(malformed: dict = MALFORMED) -> Dataset:
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    for keyword, (vr, value) in malformed.items():
        tag = tag_for_keyword(keyword)
        assert profile_table().row(tag) is None  # kept by the VR rule, so it must be checked
        ds[tag] = raw(tag, vr, value)
    ds.XRayTubeCurrent = "42"
    return ds


def test_malformed_values_of_kept_attributes_are_blanked_with_the_reason_noted():
    ds = _with_malformed_values(MALFORMED | MALFORMED_BINARY)
    result = deidentify_dataset(ds, secret=SECRET)
    for keyword, (vr, _) in (MALFORMED | MALFORMED_BINARY).items():
        elem = ds[tag_for_keyword(keyword)]
        assert elem.VR == vr and elem.value in ("", None, b"")
        group, element = elem.tag.group, elem.tag.element
        assert f"({group:04X},{element:04X}) {vr}: malformed value blanked" in result.notes
    assert result.actions["blanked"] == len(MALFORMED) + len(MALFORMED_BINARY)
    assert ds.XRayTubeCurrent == 42
    assert not any(fragment in note for note in result.notes for fragment in ("DOE", "JOHN", "MRN"))
    blob = written(ds)
    assert b"DOE" not in blob and b"MRN12345" not in blob


def test_a_kept_age_that_is_not_an_age_is_blanked():
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds[0x00101010] = raw(0x00101010, "AS", b"DOE JOHN")
    result = deidentify_dataset(ds, secret=SECRET, options=DeidOptions(retain_patient_characteristics=True))
    assert ds.PatientAge == "" and "(0010,1010) AS: malformed value blanked" in result.notes


@pytest.mark.django_db
def test_ingest_reports_and_audits_blanked_values_by_tag_and_vr(cast, api, ingest_url):
    data = written(_with_malformed_values())
    response = api(cast.manager).post(ingest_url, {"files": [upload("ct.dcm", data)]}, format="multipart")
    assert response.status_code == 201, response.json()
    [report] = response.json()["files"]
    assert report["status"] == "accepted"
    assert "(0020,0013) IS: malformed value blanked" in report["notes"]
    event = AuditEvent.objects.get(action="deidentify")
    assert "(0020,0013) IS: malformed value blanked" in event.extra["notes"]
    assert event.extra["actions"]["blanked"] == len(MALFORMED)
    instance = Instance.objects.get()
    assert instance.deid_record.actions["blanked"] == len(MALFORMED)
    stored = get_store().read_bytes(instance.storage_name)
    assert b"DOE" not in stored and b"MRN12345" not in stored
    assert "DOE" not in str(response.json()) and "DOE" not in str(event.extra)


def test_refusal_reasons_name_the_attribute_never_its_value():
    from core.dicom.prepare import Rejection, prepare

    frames = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    frames[0x00280008] = raw(0x00280008, "IS", b"DOE^JOHN")  # NumberOfFrames: needed to check the pixels
    rows = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    rows[0x00280010] = raw(0x00280010, "US", b"DOEJOHN")  # Rows: undecodable
    for ds in (frames, rows):
        outcome = prepare(written(ds), secret=SECRET, options=DeidOptions(), max_bytes=10**8)
        assert isinstance(outcome, Rejection)
        assert "DOE" not in outcome.reason and "JOHN" not in outcome.reason
    refused = prepare(written(rows), secret=SECRET, options=DeidOptions(), max_bytes=10**8)
    assert refused.reason == "malformed value in (0028,0010) Rows US (BytesLengthException)"


# --- item 17: the dictionary outside Table E.1-1 -----------------------------------------------------

FREE_TEXT_VRS = ("PN", "LO", "SH", "ST", "LT", "UT", "UC", "UR")
DATE_VRS = ("DA", "DT", "TM")
# Command, file meta and directory groups never appear in a dataset's body; nor do item delimiters.
SKIPPED_GROUPS = (0x0000, 0x0002, 0x0004)
# What the de-identifier writes itself: Patient Identity Removed, De-identification Method (and its
# code sequence), Longitudinal Temporal Information Modified.
WRITTEN_BY_DEID = (0x00120062, 0x00120063, 0x00120064, 0x00280303)


def outside_table(vrs) -> list[tuple[int, str, str]]:
    table = profile_table()
    return [(tag, vr, keyword) for tag, (vr, _vm, _name, _retired, keyword) in sorted(DicomDictionary.items())
            if vr in vrs and tag >> 16 not in SKIPPED_GROUPS and tag >> 16 < 0xFFFA and tag & 0xFFFF
            and tag != 0x7FE00010 and tag not in WRITTEN_BY_DEID and table.row(tag) is None]


def test_retained_outside_table_names_dictionary_attributes_the_table_does_not_list():
    for keywords in deid.RETAINED_OUTSIDE_TABLE.values():
        for keyword in keywords:
            tag = tag_for_keyword(keyword)
            assert tag is not None, keyword
            assert profile_table().row(tag) is None, f"{keyword} is in Table E.1-1: the table decides"
            assert DicomDictionary[tag][0] in FREE_TEXT_VRS


@pytest.mark.parametrize("retain_dates", [False, True], ids=["basic", "retain-modified-dates"])
def test_study_update_datetime_and_evaluator_name_are_neither_kept_unshifted_nor_in_clear(retain_dates):
    listed = {keyword for _, _, keyword in outside_table(FREE_TEXT_VRS + DATE_VRS)}
    assert {"StudyUpdateDateTime", "EvaluatorName"} <= listed  # the examples: not in Table E.1-1
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.StudyUpdateDateTime = "20200105101530"
    ds.EvaluatorName = "Moriarty^James"  # a reader, not the patient: no scrub would know the name
    result = deidentify_dataset(ds, secret=SECRET, options=DeidOptions(retain_longitudinal_modified_dates=retain_dates))
    assert "EvaluatorName" not in ds
    if retain_dates:
        shifted = date(2020, 1, 5) + timedelta(days=date_offset_days(result.original["PatientID"], SECRET))
        assert ds.StudyUpdateDateTime == shifted.strftime("%Y%m%d") + "101530"
    else:
        assert "StudyUpdateDateTime" not in ds
    assert b"Moriarty" not in written(ds) and b"20200105" not in written(ds)


def _text_value(vr: str, family: str, given_name: str) -> str:
    if vr == "PN":
        return f"{family}^{given_name}"
    if vr == "UR":
        return f"http://{family.lower()}.example/{given_name.lower()}"
    text = f"{family} {given_name}"
    return text[:16] if vr == "SH" else text


def _dictionary_dataset(family: str, given_name: str, day: date, clock: time) -> Dataset:
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.PatientName = f"{family}^{given_name}"
    ds.PatientID = f"{family}-ID"
    values = {"DA": day.strftime("%Y%m%d"), "DT": day.strftime("%Y%m%d") + clock.strftime("%H%M%S"),
              "TM": clock.strftime("%H%M%S")}
    for tag, vr, _ in outside_table(FREE_TEXT_VRS + DATE_VRS + ("AE",)):
        value = values.get(vr) or (family[:16] if vr == "AE" else _text_value(vr, family, given_name))
        ds[tag] = DataElement(tag, vr, value)
    return ds


_NAME = st.text(alphabet="BCDFGHJKLMNPQRSTVWXZ", min_size=5, max_size=12)  # no vowels: no real words
_DAY = st.dates(min_value=date(1920, 1, 1), max_value=date(2090, 12, 31))
_CLOCK = st.times().map(lambda t: t.replace(microsecond=0))


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(family=_NAME, given_name=_NAME, day=_DAY, clock=_CLOCK, retain_dates=st.booleans())
def test_every_dictionary_attribute_outside_the_table_is_removed_shifted_or_retained_and_scrubbed(
        family, given_name, day, clock, retain_dates):
    ds = _dictionary_dataset(family, given_name, day, clock)
    options = DeidOptions(retain_longitudinal_modified_dates=retain_dates)
    shifted = day + timedelta(days=date_offset_days(f"{family}-ID", SECRET))
    deidentify_dataset(ds, secret=SECRET, options=options)
    retained = deid._retained_tags()
    checked = 0
    for tag, vr, keyword in outside_table(FREE_TEXT_VRS + DATE_VRS + ("AE",)):
        checked += 1
        if vr in FREE_TEXT_VRS and tag in retained:
            assert family not in str(ds[tag].value).upper(), keyword
            assert given_name not in str(ds[tag].value).upper(), keyword
        elif vr in FREE_TEXT_VRS or vr == "AE" or not retain_dates:
            assert tag not in ds, keyword
        elif vr == "DA":
            assert ds[tag].value == shifted.strftime("%Y%m%d"), keyword
        elif vr == "DT":
            assert ds[tag].value == shifted.strftime("%Y%m%d") + clock.strftime("%H%M%S"), keyword
        else:  # a shift of whole days leaves the clock as it was
            assert ds[tag].value == clock.strftime("%H%M%S"), keyword
    assert checked > 450
    blob = written(ds)
    assert family.encode() not in blob and given_name.encode() not in blob
    if not retain_dates:
        assert day.strftime("%Y%m%d").encode() not in blob


def _technical_value(vr: str):
    return {"CS": "TECHNICAL", "DS": "1.5", "IS": "7", "AS": "042Y", "US": 1, "SS": -1, "UL": 2, "SL": -2,
            "FL": 0.5, "FD": 0.25, "SV": -3, "UV": 3, "AT": 0x00100010, "OB": b"\x01\x02", "OW": b"\x01\x02",
            "OF": b"\0\0\x80\x3f", "OD": b"\0" * 7 + b"\x01", "OL": b"\x01\0\0\0", "OV": b"\x01" + b"\0" * 7,
            "UN": b"\x01\x02"}[vr]


def test_technical_attributes_outside_the_table_survive_unchanged():
    kept_vrs = ("CS", "DS", "IS", "US", "SS", "UL", "SL", "FL", "FD", "SV", "UV", "AT", "OB", "OW", "OF", "OD",
                "OL", "OV", "US or SS", "OB or OW", "US or OW", "US or SS or OW")
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    expected = {}
    for tag, vr, _ in outside_table(kept_vrs):
        if tag in ds or tag >> 16 == 0x7FE0:  # one kind of pixel data a dataset (PS3.3 C.7.6.3)
            continue
        concrete = vr.split(" or ")[0]
        ds[tag] = DataElement(tag, concrete, _technical_value(concrete))
        expected[tag] = ds[tag].value
    result = deidentify_dataset(ds, secret=SECRET)
    assert len(expected) > 2000
    lost = [f"{tag:08X}" for tag, value in expected.items() if tag not in ds or ds[tag].value != value]
    assert not lost
    assert result.actions["blanked"] == 0
    for keyword in ("Modality", "Rows", "Columns", "BitsAllocated", "PhotometricInterpretation", "PixelSpacing",
                    "ImagePositionPatient", "RescaleSlope", "WindowCenter", "Manufacturer", "PixelData"):
        assert keyword in ds, keyword
    assert ds.PixelData == pydicom.dcmread(get_testdata_file("CT_small.dcm")).PixelData


def test_repeating_group_attributes_outside_the_table_go_by_their_vr():
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds[0x00280412] = DataElement(0x00280412, "LO", "DOE JOHN")  # Coefficient Coding (0028,04x2), retired
    ds[0x00203101] = DataElement(0x00203101, "CS", "IMAGE1")  # Source Image IDs (0020,31xx), retired
    deidentify_dataset(ds, secret=SECRET)
    assert 0x00280412 not in ds
    assert ds[0x00203101].value == "IMAGE1"
