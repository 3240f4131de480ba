"""Synthetic CT and MR series for tests, the demo and benchmarks: valid DICOM, a simple phantom, fake PHI everywhere.

Every identifying value is invented, but placed where real scanners put PHI (including free text and a
private block), so de-identification has something to find. The values are in ``PHI`` and
``DEFAULT_PATIENT``.
"""

import io
from pathlib import Path

import numpy as np
from pydicom import dcmwrite
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    CTImageStorage,
    EnhancedCTImageStorage,
    ExplicitVRLittleEndian,
    MRImageStorage,
    generate_uid,
)
from pydicom.valuerep import DSfloat

DEFAULT_PATIENT = {"name": "DOE^JANE^Q", "id": "MRN-00123456", "birth_date": "19580214", "age": "066Y", "sex": "F"}
PHI = {
    "address": "12 Elm Street, Springfield",
    "telephone": "555-0142",
    "other_patient_id": "ALT-7781-2290",
    "institution": "Springfield General Hospital",
    "institution_address": "1 Hospital Road, Springfield",
    "referring_physician": "HOUSE^GREGORY",
    "operator": "SMITH^ANNA",
    "accession_number": "ACC20240315001",
    "comment_phone": "555-0199",
    "station_name": "SGH-CT-ROOM-2",
    "device_serial_number": "SN-4471-AC",
    "private_creator": "ACME PHI 1.0",
    "study_date": "20240315",
    "study_time": "101530",
}
CT_INTERCEPT = -1024
LESION_HU = (80.0, 150.0, -350.0)

MR_SEQUENCES = {
    # description, ScanningSequence, SequenceVariant, ScanOptions, TR, TE, TI, ImageType tail
    "T1": ("AX T1 SE", ["SE"], ["SP"], "", 500.0, 12.0, None, ["M", "ND"]),
    "T1_POST": ("AX T1 SE +C", ["SE"], ["SP"], "", 500.0, 12.0, None, ["M", "ND"]),
    "T2": ("AX T2 TSE", ["SE"], ["SK", "SP"], "", 4000.0, 100.0, None, ["M", "ND"]),
    "FLAIR": ("AX T2 FLAIR", ["SE", "IR"], ["SK", "SP", "MP"], "IR", 9000.0, 120.0, 2500.0, ["M", "ND"]),
    "DWI": ("AX DWI b1000", ["EP"], ["SK", "SP"], "", 5000.0, 80.0, None, ["DIFFUSION", "TRACEW"]),
    "ADC": ("AX ADC", ["EP"], ["SK", "SP"], "", 5000.0, 80.0, None, ["DIFFUSION", "ADC"]),
}
# Signal of (brain, CSF, scalp fat, lesion) per sequence, in 12-bit stored values.
MR_SIGNAL = {
    "T1": (600, 200, 900, 400),
    "T1_POST": (600, 200, 900, 1300),
    "T2": (500, 1500, 700, 1100),
    "FLAIR": (500, 80, 600, 1200),
    "DWI": (400, 100, 50, 1000),
    "ADC": (800, 2500, 100, 400),
}


def _ds(values) -> list:
    # DS strings are at most 16 characters (PS3.5 6.2); cosines of oblique planes need formatting.
    return [DSfloat(float(v), auto_format=True) for v in values]


def _patient(overrides: dict | None) -> dict:
    patient = dict(DEFAULT_PATIENT)
    patient.update(overrides or {})
    return patient


def _geometry(n_slices, rows, cols, spacing, slice_thickness, orientation):
    """(origin of slice 0, row cosine, column cosine, normal) for a stack centred on the patient origin."""
    row_cos, col_cos = np.array(orientation[:3], float), np.array(orientation[3:], float)
    normal = np.cross(row_cos, col_cos)
    origin = (-(cols - 1) / 2 * spacing[1] * row_cos - (rows - 1) / 2 * spacing[0] * col_cos
              - (n_slices - 1) / 2 * slice_thickness * normal)
    return origin, row_cos, col_cos, normal


def _plane_points(position, row_cos, col_cos, rows, cols, spacing) -> np.ndarray:
    j, i = np.mgrid[0:rows, 0:cols]
    return (np.asarray(position)[None, None, :] + i[..., None] * spacing[1] * row_cos
            + j[..., None] * spacing[0] * col_cos)


def _lesions(seed: int, fov: float, extent: float, slice_thickness: float):
    """Three spheres (centre, radius mm) inside the body, clear of the centre (which tests sample)."""
    rng = np.random.default_rng(seed)
    radius = min(max(0.06 * fov, 1.2 * slice_thickness), 0.1 * fov)
    angles = rng.uniform(0, 2 * np.pi) + np.arange(3) * 2 * np.pi / 3
    heights = rng.uniform(-0.3, 0.3, size=3) * extent
    return [(np.array([0.22 * fov * np.cos(a), 0.22 * fov * np.sin(a), h]), radius) for a, h in zip(angles, heights,
                                                                                                    strict=True)]


def _ellipse(x, y, cx, cy, a, b) -> np.ndarray:
    return ((x - cx) / a) ** 2 + ((y - cy) / b) ** 2 <= 1


def _ct_phantom(points, fov, lesions, body_part) -> np.ndarray:
    x, y = points[..., 0], points[..., 1]
    hu = np.full(x.shape, -1000.0)
    hu[_ellipse(x, y, 0, 0, 0.42 * fov, 0.32 * fov)] = -100.0
    hu[_ellipse(x, y, 0, 0, 0.38 * fov, 0.28 * fov)] = 40.0
    if body_part.upper() == "CHEST":
        for side in (-1, 1):
            hu[_ellipse(x, y, side * 0.2 * fov, -0.02 * fov, 0.13 * fov, 0.2 * fov)] = -850.0
    hu[_ellipse(x, y, 0, 0.2 * fov, 0.05 * fov, 0.05 * fov)] = 700.0
    for (centre, radius), value in zip(lesions, LESION_HU, strict=True):
        hu[np.sum((points - centre) ** 2, axis=-1) <= radius ** 2] = value
    return hu


def _mr_phantom(points, fov, lesions, sequence) -> np.ndarray:
    brain, csf, fat, lesion = MR_SIGNAL[sequence]
    x, y = points[..., 0], points[..., 1]
    signal = np.zeros(x.shape)
    signal[_ellipse(x, y, 0, 0, 0.4 * fov, 0.45 * fov)] = fat
    signal[_ellipse(x, y, 0, 0, 0.36 * fov, 0.41 * fov)] = brain
    for side in (-1, 1):
        signal[_ellipse(x, y, side * 0.06 * fov, 0, 0.035 * fov, 0.12 * fov)] = csf
    for centre, radius in lesions:
        signal[np.sum((points - centre) ** 2, axis=-1) <= radius ** 2] = lesion
    return signal


def _base(patient: dict, *, modality, sop_class, study_uid, series_uid, for_uid, series_number, series_description,
          body_part) -> Dataset:
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = sop_class
    ds.InstanceCreationDate = PHI["study_date"]
    ds.InstanceCreationTime = PHI["study_time"]
    ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = PHI["study_date"]
    ds.StudyTime = ds.SeriesTime = ds.AcquisitionTime = ds.ContentTime = PHI["study_time"]
    ds.AcquisitionDateTime = PHI["study_date"] + PHI["study_time"]
    ds.AccessionNumber = PHI["accession_number"]
    ds.Modality = modality
    ds.Manufacturer = "ACME Medical Systems"
    ds.InstitutionName = PHI["institution"]
    ds.InstitutionAddress = PHI["institution_address"]
    ds.ReferringPhysicianName = PHI["referring_physician"]
    ds.StationName = PHI["station_name"]
    ds.StudyDescription = f"{modality} {body_part} follow-up ({patient['name']})"
    ds.SeriesDescription = series_description
    ds.OperatorsName = PHI["operator"]
    ds.ManufacturerModelName = "Synthetica 3000"
    ds.PatientName = patient["name"]
    ds.PatientID = patient["id"]
    ds.PatientBirthDate = patient["birth_date"]
    ds.PatientSex = patient["sex"]
    ds.PatientAge = patient["age"]
    ds.OtherPatientIDs = PHI["other_patient_id"]
    ds.PatientAddress = PHI["address"]
    ds.PatientTelephoneNumbers = PHI["telephone"]
    ds.PatientComments = f"Next of kin reachable on {PHI['telephone']}"
    ds.BodyPartExamined = body_part
    ds.DeviceSerialNumber = PHI["device_serial_number"]
    ds.SoftwareVersions = "synthetic-1"
    ds.ProtocolName = f"{body_part} routine"
    ds.PatientPosition = "HFS"
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.StudyID = "S" + PHI["accession_number"][-4:]
    ds.SeriesNumber = series_number
    ds.AcquisitionNumber = 1
    ds.FrameOfReferenceUID = for_uid
    ds.PositionReferenceIndicator = ""
    ds.BurnedInAnnotation = "NO"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    block = ds.private_block(0x0009, PHI["private_creator"], create=True)
    block.add_new(0x01, "PN", patient["name"])
    block.add_new(0x02, "LO", patient["id"])
    return ds


def _file_dataset(ds: Dataset, sop_uid: str) -> FileDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    out = FileDataset("", ds, preamble=b"\0" * 128, file_meta=meta, is_implicit_VR=False, is_little_endian=True)
    out.SOPInstanceUID = sop_uid
    return out


def _stack(kind: str, *, n_slices, rows, cols, spacing, slice_thickness, orientation, patient, seed, study_uid,
           frame_of_reference_uid, series_number, body_part, modality, sequence=None) -> list[FileDataset]:
    patient = _patient(patient)
    study_uid = study_uid or generate_uid()
    for_uid = frame_of_reference_uid or generate_uid()
    series_uid = generate_uid()
    origin, row_cos, col_cos, normal = _geometry(n_slices, rows, cols, spacing, slice_thickness, orientation)
    fov = max(rows * spacing[0], cols * spacing[1])
    lesions = _lesions(seed, fov, n_slices * slice_thickness, slice_thickness)
    noise = np.random.default_rng([seed, series_number])
    if kind == "CT":
        description = f"{body_part} {slice_thickness:g}mm"
        sop_class = CTImageStorage
    else:
        description = MR_SEQUENCES[sequence][0]
        sop_class = MRImageStorage
    datasets = []
    for k in range(n_slices):
        position = origin + k * slice_thickness * normal
        points = _plane_points(position, row_cos, col_cos, rows, cols, spacing)
        ds = _base(patient, modality=modality, sop_class=sop_class, study_uid=study_uid, series_uid=series_uid,
                   for_uid=for_uid, series_number=series_number, series_description=description, body_part=body_part)
        ds.InstanceNumber = k + 1
        ds.ImagePositionPatient = _ds(position)
        ds.ImageOrientationPatient = _ds(orientation)
        ds.PixelSpacing = _ds(spacing)
        ds.SliceThickness = float(slice_thickness)
        ds.SliceLocation = _ds([np.dot(position, normal)])[0]
        ds.Rows, ds.Columns = rows, cols
        ds.BitsAllocated = 16
        ds.ImageComments = f"Call Dr. House on {PHI['comment_phone']} about {patient['name']}"
        if kind == "CT":
            hu = _ct_phantom(points, fov, lesions, body_part) + noise.normal(0, 10, (rows, cols))
            ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
            ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 15, 1
            ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = CT_INTERCEPT, 1, "HU"
            ds.WindowCenter, ds.WindowWidth = [40, -600], [400, 1500]
            ds.KVP = 120
            ds.ConvolutionKernel = "STANDARD"
            pixels = np.clip(np.rint(hu) - CT_INTERCEPT, -32768, 32767).astype("<i2")
        else:
            _, scanning, variant, options, tr, te, ti, image_type = MR_SEQUENCES[sequence]
            signal = np.abs(_mr_phantom(points, fov, lesions, sequence) + noise.normal(0, 20, (rows, cols)))
            ds.ImageType = ["DERIVED" if sequence == "ADC" else "ORIGINAL", "PRIMARY", *image_type]
            ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 12, 11, 0
            ds.WindowCenter, ds.WindowWidth = 1024, 2048
            ds.ScanningSequence, ds.SequenceVariant, ds.ScanOptions = scanning, variant, options
            ds.MRAcquisitionType = "2D"
            ds.SequenceName = f"*{sequence.lower()}2d1"
            ds.RepetitionTime, ds.EchoTime, ds.EchoTrainLength = tr, te, 1 if scanning == ["EP"] else 16
            if ti is not None:
                ds.InversionTime = ti
            ds.MagneticFieldStrength, ds.ImagingFrequency, ds.ImagedNucleus = 1.5, 63.87, "1H"
            ds.FlipAngle = 90
            if sequence == "T1_POST":
                ds.ContrastBolusAgent = "GADOBUTROL 7.5 ML"
            if sequence == "DWI":
                ds.DiffusionBValue = 1000.0
            pixels = np.clip(np.rint(signal), 0, 4095).astype("<u2")
        ds.PixelData = pixels.tobytes()
        datasets.append(_file_dataset(ds, generate_uid()))
    return datasets


def make_ct_series(n_slices: int = 20, rows: int = 64, cols: int = 64, *, spacing=(0.7, 0.7),
                   slice_thickness: float = 2.5, patient: dict | None = None, seed: int = 0,
                   study_uid: str | None = None, modality: str = "CT", body_part: str = "CHEST",
                   orientation=(1.0, 0.0, 0.0, 0.0, 1.0, 0.0), frame_of_reference_uid: str | None = None,
                   series_number: int = 1) -> list[FileDataset]:
    """CT Image Storage slices, InstanceNumber 1..n stepping slice_thickness along the normal, centred on the origin.

    Stored values are HU + 1024 (intercept -1024): air -1000, fat -100, soft tissue 40 (the centre of
    every slice), lungs -850 (CHEST), spine 700, three spherical lesions at LESION_HU; noise sd 10 HU.
    """
    return _stack("CT", n_slices=n_slices, rows=rows, cols=cols, spacing=spacing, slice_thickness=slice_thickness,
                  orientation=orientation, patient=patient, seed=seed, study_uid=study_uid,
                  frame_of_reference_uid=frame_of_reference_uid, series_number=series_number,
                  body_part=body_part, modality=modality)


def make_mr_series(sequence: str = "FLAIR", n_slices: int = 20, rows: int = 64, cols: int = 64, *,
                   spacing=(0.9, 0.9), slice_thickness: float = 5.0, patient: dict | None = None, seed: int = 0,
                   study_uid: str | None = None, frame_of_reference_uid: str | None = None,
                   series_number: int = 1, body_part: str = "BRAIN",
                   orientation=(1.0, 0.0, 0.0, 0.0, 1.0, 0.0)) -> list[FileDataset]:
    """MR Image Storage slices of one sequence (T1, T1_POST, T2, FLAIR, DWI, ADC) with the tags that identify it."""
    if sequence not in MR_SEQUENCES:
        raise ValueError(f"unknown sequence {sequence!r}; choose from {', '.join(MR_SEQUENCES)}")
    return _stack("MR", n_slices=n_slices, rows=rows, cols=cols, spacing=spacing, slice_thickness=slice_thickness,
                  orientation=orientation, patient=patient, seed=seed, study_uid=study_uid,
                  frame_of_reference_uid=frame_of_reference_uid, series_number=series_number,
                  body_part=body_part, modality="MR", sequence=sequence)


def make_mr_study(sequences=("T1", "T1_POST", "T2", "FLAIR", "DWI", "ADC"), **kwargs) -> list[FileDataset]:
    """One series per sequence, flattened series after series; all share StudyInstanceUID and FrameOfReferenceUID."""
    kwargs.setdefault("study_uid", generate_uid())
    kwargs.setdefault("frame_of_reference_uid", generate_uid())
    datasets = []
    for number, sequence in enumerate(sequences, start=1):
        datasets += make_mr_series(sequence, series_number=number, **kwargs)
    return datasets


def make_enhanced_ct(n_frames: int = 20, rows: int = 64, cols: int = 64, **kwargs) -> FileDataset:
    """One Enhanced CT multi-frame image of the same phantom, geometry in functional groups.

    Geometry-complete (plane position per frame; orientation, pixel measures and rescale shared), not
    every module the Enhanced CT IOD requires.
    """
    slices = make_ct_series(n_frames, rows, cols, **kwargs)
    first = slices[0]
    ds = Dataset()
    for element in first:
        if element.keyword not in {"ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "SliceThickness",
                                   "SliceLocation", "RescaleIntercept", "RescaleSlope", "RescaleType", "WindowCenter",
                                   "WindowWidth", "PixelData", "SOPInstanceUID"}:
            ds.add(element)
    ds.SOPClassUID = EnhancedCTImageStorage
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL", "NONE"]
    ds.NumberOfFrames = n_frames
    ds.InstanceNumber = 1
    ds.ContentQualification = "RESEARCH"

    shared = Dataset()
    measures = Dataset()
    measures.PixelSpacing = first.PixelSpacing
    measures.SliceThickness = first.SliceThickness
    orientation = Dataset()
    orientation.ImageOrientationPatient = first.ImageOrientationPatient
    transform = Dataset()
    transform.RescaleIntercept, transform.RescaleSlope, transform.RescaleType = CT_INTERCEPT, 1, "HU"
    voi = Dataset()
    voi.WindowCenter, voi.WindowWidth = 40, 400
    shared.PixelMeasuresSequence = Sequence([measures])
    shared.PlaneOrientationSequence = Sequence([orientation])
    shared.PixelValueTransformationSequence = Sequence([transform])
    shared.FrameVOILUTSequence = Sequence([voi])
    ds.SharedFunctionalGroupsSequence = Sequence([shared])

    dimension_uid = generate_uid()
    ds.DimensionOrganizationSequence = Sequence([Dataset()])
    ds.DimensionOrganizationSequence[0].DimensionOrganizationUID = dimension_uid
    indices = []
    for keyword, tag in (("StackID", 0x00209056), ("InStackPositionNumber", 0x00209057)):
        item = Dataset()
        item.DimensionOrganizationUID = dimension_uid
        item.DimensionIndexPointer = tag
        item.FunctionalGroupPointer = 0x00209111
        item.DimensionDescriptionLabel = keyword
        indices.append(item)
    ds.DimensionIndexSequence = Sequence(indices)

    ds.PerFrameFunctionalGroupsSequence = _per_frame_groups([s.ImagePositionPatient for s in slices])
    ds.PixelData = b"".join(s.PixelData for s in slices)
    return _file_dataset(ds, generate_uid())


def _per_frame_groups(positions) -> Sequence:
    """One stack's per-frame functional groups: each frame's plane position and its place in the stack."""
    frames = []
    for k, xyz in enumerate(positions):
        position = Dataset()
        position.ImagePositionPatient = xyz
        content = Dataset()
        content.StackID = "1"
        content.InStackPositionNumber = k + 1
        content.DimensionIndexValues = [1, k + 1]
        frame = Dataset()
        frame.PlanePositionSequence = Sequence([position])
        frame.FrameContentSequence = Sequence([content])
        frames.append(frame)
    return Sequence(frames)


def to_bytes(ds: Dataset) -> bytes:
    """The dataset as a DICOM Part 10 file."""
    buffer = io.BytesIO()
    dcmwrite(buffer, ds, enforce_file_format=True)
    return buffer.getvalue()


def write_series(datasets, folder) -> list[Path]:
    """Write each dataset to folder/<SOPInstanceUID>.dcm (folder created); returns the paths in input order."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for ds in datasets:
        path = folder / f"{ds.SOPInstanceUID}.dcm"
        dcmwrite(path, ds, enforce_file_format=True)
        paths.append(path)
    return paths


def frame_pattern(index: int, rows: int, cols: int) -> bytes:
    """Frame ``index`` of write_enhanced_ct_file: 16-bit values that differ from frame to frame and
    along each row, so a frame served from the wrong offset does not pass for the right one."""
    row = (np.arange(cols, dtype=np.uint32) + index * 7) % 4096
    return np.tile(row.astype(np.uint16), rows).tobytes()


def write_enhanced_ct_file(path, n_frames: int, rows: int = 512, cols: int = 512, *, seed: int = 1) -> int:
    """Write one uncompressed 16-bit Enhanced CT of ``n_frames`` frames to ``path`` a frame at a time
    (a file of gigabytes never whole in memory); frame k holds ``frame_pattern(k, rows, cols)``.
    Returns the file's size."""
    template = make_enhanced_ct(n_frames=2, rows=8, cols=8, seed=seed)
    del template.PixelData
    template.Rows, template.Columns, template.NumberOfFrames = rows, cols, n_frames
    first_position = [float(v) for v in template.PerFrameFunctionalGroupsSequence[0]
                      .PlanePositionSequence[0].ImagePositionPatient]
    thickness = float(template.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0].SliceThickness)
    template.PerFrameFunctionalGroupsSequence = _per_frame_groups(
        [[first_position[0], first_position[1], round(first_position[2] + k * thickness, 4)] for k in range(n_frames)])
    frame_bytes = rows * cols * 2
    with open(path, "wb") as out:
        dcmwrite(out, template, enforce_file_format=True)
        # (7FE0,0010) OW with a 32-bit length (PS3.5 7.1.2), then the frames as they come.
        out.write(b"\xe0\x7f\x10\x00OW\x00\x00" + (n_frames * frame_bytes).to_bytes(4, "little"))
        for k in range(n_frames):
            out.write(frame_pattern(k, rows, cols))
        return out.tell()
