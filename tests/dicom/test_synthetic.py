import numpy as np
import pydicom
import pytest
from pydicom import config
from pydicom.filebase import DicomBytesIO
from pydicom.uid import CTImageStorage, EnhancedCTImageStorage, ExplicitVRLittleEndian, MRImageStorage

from core.dicom import synthetic
from core.dicom.synthetic import DEFAULT_PATIENT, PHI


@pytest.fixture(autouse=True)
def strict_values(monkeypatch):
    # Invalid values (a 17-character DS, a bad date) raise instead of warning, both ways.
    monkeypatch.setattr(config.settings, "reading_validation_mode", config.RAISE)
    monkeypatch.setattr(config.settings, "writing_validation_mode", config.RAISE)


def round_trip(ds):
    return pydicom.dcmread(DicomBytesIO(synthetic.to_bytes(ds)))


def test_ct_series_round_trips_as_valid_ct_images():
    slices = synthetic.make_ct_series(n_slices=5, rows=32, cols=48, slice_thickness=2.5)
    read = [round_trip(ds) for ds in slices]
    for k, ds in enumerate(read):
        assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
        assert ds.SOPClassUID == CTImageStorage == ds.file_meta.MediaStorageSOPClassUID
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
        assert ds.pixel_array.shape == (32, 48) and ds.pixel_array.dtype == np.int16
        assert (ds.BitsAllocated, ds.PixelRepresentation, ds.RescaleIntercept, ds.RescaleSlope) == (16, 1, -1024, 1)
        assert ds.InstanceNumber == k + 1 and ds.BurnedInAnnotation == "NO"
        assert [float(v) for v in ds.ImageOrientationPatient] == [1, 0, 0, 0, 1, 0]
        assert [float(v) for v in ds.PixelSpacing] == [0.7, 0.7]
    assert len({ds.StudyInstanceUID for ds in read}) == len({ds.SeriesInstanceUID for ds in read}) == 1
    assert len({ds.FrameOfReferenceUID for ds in read}) == 1
    assert len({ds.SOPInstanceUID for ds in read}) == 5
    z = [float(ds.ImagePositionPatient[2]) for ds in read]
    assert np.diff(z) == pytest.approx([2.5] * 4)


def test_ct_pixels_hold_a_body_and_lesions():
    (ds,) = synthetic.make_ct_series(n_slices=1, rows=64, cols=64)
    hu = ds.pixel_array.astype(float) + ds.RescaleIntercept
    assert np.median(hu[30:34, 30:34]) == pytest.approx(40, abs=10)
    assert np.median(hu[:4, :4]) == pytest.approx(-1000, abs=10)
    assert (hu < -700).sum() > 100  # lungs
    volume = np.stack([d.pixel_array for d in synthetic.make_ct_series()]).astype(float) - 1024
    assert all(np.isclose(volume, value, atol=30).sum() > 5 for value in synthetic.LESION_HU)


def test_the_seed_makes_pixels_reproducible():
    first = synthetic.make_ct_series(n_slices=2, seed=4)
    again = synthetic.make_ct_series(n_slices=2, seed=4)
    other = synthetic.make_ct_series(n_slices=2, seed=5)
    assert first[1].PixelData == again[1].PixelData != other[1].PixelData
    assert first[1].SOPInstanceUID != again[1].SOPInstanceUID


def test_phi_is_where_it_is_promised():
    ds = round_trip(synthetic.make_ct_series(n_slices=1)[0])
    assert ds.PatientName == "DOE^JANE^Q"
    assert ds.PatientID == DEFAULT_PATIENT["id"] and ds.PatientBirthDate == DEFAULT_PATIENT["birth_date"]
    assert ds.PatientAddress == "12 Elm Street, Springfield"
    assert ds.PatientTelephoneNumbers == PHI["telephone"]
    assert ds.OtherPatientIDs == PHI["other_patient_id"]
    assert ds.InstitutionName == PHI["institution"] and ds.InstitutionAddress == PHI["institution_address"]
    assert ds.ReferringPhysicianName == PHI["referring_physician"] and ds.OperatorsName == PHI["operator"]
    assert ds.AccessionNumber == PHI["accession_number"]
    assert "DOE^JANE^Q" in ds.StudyDescription
    assert PHI["comment_phone"] in ds.ImageComments
    assert ds.private_block(0x0009, "ACME PHI 1.0")[0x01].value == "DOE^JANE^Q"
    assert ds.StudyDate == ds.SeriesDate == ds.ContentDate == PHI["study_date"]
    assert ds.StudyTime == PHI["study_time"]


def test_patient_overrides():
    patient = {"name": "ROE^RICHARD", "id": "P-42", "birth_date": "19700101", "age": "054Y", "sex": "M"}
    ds = synthetic.make_ct_series(n_slices=1, patient=patient, study_uid="1.2.3.4")[0]
    assert (ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientAge, ds.PatientSex) == (
        "ROE^RICHARD", "P-42", "19700101", "054Y", "M")
    assert "ROE^RICHARD" in ds.StudyDescription and ds.StudyInstanceUID == "1.2.3.4"
    assert ds.private_block(0x0009, "ACME PHI 1.0")[0x01].value == "ROE^RICHARD"


@pytest.mark.parametrize("sequence", list(synthetic.MR_SEQUENCES))
def test_mr_series_carry_the_tags_that_identify_the_sequence(sequence):
    slices = synthetic.make_mr_series(sequence, n_slices=3, rows=32, cols=32)
    ds = round_trip(slices[0])
    assert ds.SOPClassUID == MRImageStorage and ds.Modality == "MR"
    assert ds.pixel_array.shape == (32, 32) and ds.pixel_array.dtype == np.uint16 and ds.pixel_array.max() < 4096
    assert ds.RepetitionTime and ds.EchoTime and ds.ScanningSequence and ds.SequenceVariant
    assert ds.PatientName == "DOE^JANE^Q" and PHI["comment_phone"] in ds.ImageComments
    assert ("InversionTime" in ds) == (sequence == "FLAIR")
    assert ("ContrastBolusAgent" in ds) == (sequence == "T1_POST")
    assert ("DiffusionBValue" in ds) == (sequence == "DWI")
    assert ("ADC" in ds.ImageType) == (sequence == "ADC")
    if sequence == "FLAIR":
        assert "IR" in ds.ScanningSequence and "FLAIR" in ds.SeriesDescription
    if sequence == "DWI":
        assert ds.DiffusionBValue == 1000


def test_unknown_mr_sequence_is_refused():
    with pytest.raises(ValueError, match="unknown sequence"):
        synthetic.make_mr_series("SWI")


def test_mr_study_shares_study_and_frame_of_reference():
    study = synthetic.make_mr_study(("T1", "FLAIR", "DWI"), n_slices=2, rows=16, cols=16)
    assert len(study) == 6
    assert len({ds.StudyInstanceUID for ds in study}) == len({ds.FrameOfReferenceUID for ds in study}) == 1
    assert len({ds.SeriesInstanceUID for ds in study}) == 3
    assert [ds.SeriesNumber for ds in study] == [1, 1, 2, 2, 3, 3]
    assert [ds.SeriesDescription for ds in study[::2]] == ["AX T1 SE", "AX T2 FLAIR", "AX DWI b1000"]


def test_write_series_writes_readable_files(tmp_path):
    slices = synthetic.make_ct_series(n_slices=3, rows=16, cols=16)
    paths = synthetic.write_series(slices, tmp_path / "nested" / "ct")
    assert [p.name for p in paths] == [f"{ds.SOPInstanceUID}.dcm" for ds in slices]
    for path, ds in zip(paths, slices, strict=True):
        read = pydicom.dcmread(path)
        assert read.SOPInstanceUID == ds.SOPInstanceUID
        assert np.array_equal(read.pixel_array, ds.pixel_array)


def test_enhanced_ct_is_one_multi_frame_image():
    ds = round_trip(synthetic.make_enhanced_ct(4, 16, 16))
    assert ds.SOPClassUID == EnhancedCTImageStorage and ds.NumberOfFrames == 4
    assert ds.pixel_array.shape == (4, 16, 16)
    assert len(ds.PerFrameFunctionalGroupsSequence) == 4
    assert "ImagePositionPatient" not in ds
    assert ds.PatientName == "DOE^JANE^Q"
