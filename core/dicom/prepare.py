"""The CPU-bound half of ingest, free of Django so it can run in worker processes: parse and fully
decode a file, read its non-identifying index metadata, de-identify it, serialise the result.

Takes bytes, returns a ``Prepared`` (or a ``Rejection`` with the reason); stores nothing. A reason
names attributes and error types, never a value: the value may be the PHI that made it fail.
"""

import io
from dataclasses import dataclass, field

import pydicom
from pydicom.datadict import keyword_for_tag
from pydicom.errors import InvalidDicomError

from core.dicom import deid
from core.dicom.sequences import mr_sequence_type
from core.dicom.volume import geometry_of

REQUIRED_UIDS = ("SOPInstanceUID", "SOPClassUID", "StudyInstanceUID", "SeriesInstanceUID")


@dataclass
class Rejection:
    reason: str


@dataclass
class Prepared:
    """A de-identified instance ready to store and index."""

    data: bytes
    meta: dict  # index metadata read before de-identification (none of it identifying)
    uids: dict  # StudyInstanceUID, SeriesInstanceUID, SOPInstanceUID, FrameOfReferenceUID, TransferSyntaxUID
    texts: dict  # StudyDate, StudyDescription, SeriesDescription as they are after de-identification
    patient_pseudonym: str
    patient_age_years: int | None
    burned_in_risk: str
    actions: dict
    profile_version: str
    original: dict
    notes: list = field(default_factory=list)  # core.dicom.deid's: values blanked, unknown attributes removed
    sealed: object = None  # core.dicom.storage.Sealed: the data encrypted for its object, once sealed


class _Refused(Exception):
    pass


def _tag_name(tag, vr) -> str:
    return f"({tag >> 16:04X},{tag & 0xFFFF:04X}) {keyword_for_tag(tag) or 'private'} {vr or 'UN'}"


def _decode_all(ds) -> None:
    """Decode every element at every depth now (parsing is lazy), so a malformed value is reported
    by its tag and VR instead of being stored."""
    for tag in list(ds.keys()):
        try:
            elem = ds[tag]
        except Exception as exc:  # noqa: BLE001 - any decode failure is a malformed value
            raise _Refused(f"malformed value in {_tag_name(tag, ds.get_item(tag).VR)} ({type(exc).__name__})") from None
        if elem.VR == "SQ":
            for item in elem.value:
                _decode_all(item)


def parse(reader, size: int | None, max_bytes: int) -> pydicom.Dataset:
    """A fully decoded, validated dataset, or _Refused with the reason."""
    if size == 0:
        raise _Refused("empty file (0 bytes)")
    if size is not None and size > max_bytes:
        raise _Refused(f"file of {size} bytes exceeds the {max_bytes} byte limit")
    try:
        ds = pydicom.dcmread(reader)
    except InvalidDicomError:
        raise _Refused("not a DICOM file (no 'DICM' prefix after the 128-byte preamble)") from None
    except (EOFError, OSError, ValueError, KeyError, TypeError, NotImplementedError) as exc:
        raise _Refused(f"unreadable DICOM ({type(exc).__name__})") from None
    _decode_all(ds)
    missing = [k for k in REQUIRED_UIDS if not str(ds.get(k, "")).strip()]
    if missing:
        raise _Refused(f"missing required attribute(s): {', '.join(missing)}")
    _check_pixel_length(ds)
    return ds


def _check_pixel_length(ds) -> None:
    if "PixelData" not in ds:
        return
    syntax = ds.file_meta.get("TransferSyntaxUID")
    if syntax is not None and syntax.is_compressed:
        if not ds.PixelData:
            raise _Refused("encapsulated pixel data is empty")
        return
    try:
        rows, cols = int(ds.Rows), int(ds.Columns)
        expected = (rows * cols * int(ds.get("NumberOfFrames", 1) or 1) * int(ds.get("SamplesPerPixel", 1))
                    * int(ds.BitsAllocated) + 7) // 8
    except (AttributeError, TypeError, ValueError):
        raise _Refused("pixel data without a valid image description (Rows, Columns, NumberOfFrames, "
                       "SamplesPerPixel, BitsAllocated)") from None
    if len(ds.PixelData) < expected:
        raise _Refused(f"truncated pixel data: {len(ds.PixelData)} bytes, {expected} expected")


def _int_or_none(value) -> int | None:
    text = str(value if value is not None else "").strip()
    return int(text) if text.lstrip("-").isdigit() else None


def index_metadata(ds) -> dict:
    """What the index keeps of an instance, read before de-identification (none of it identifying)."""
    geometry = geometry_of(ds)[0] if "Rows" in ds else None
    return {
        "modality": str(ds.get("Modality", "OT") or "OT")[:16],
        "body_part": str(ds.get("BodyPartExamined", "") or "")[:64],
        "mr_sequence": mr_sequence_type(ds),
        "sop_class_uid": str(ds.SOPClassUID),
        "instance_number": _int_or_none(ds.get("InstanceNumber")),
        "series_number": _int_or_none(ds.get("SeriesNumber")),
        "rows": int(ds.Rows) if "Rows" in ds else None,
        "columns": int(ds.Columns) if "Columns" in ds else None,
        "frames": int(ds.get("NumberOfFrames", 1) or 1),
        "position": list(geometry.position) if geometry and geometry.position else None,
        "orientation": list(geometry.orientation) if geometry and geometry.orientation else None,
        "pixel_spacing": list(geometry.pixel_spacing) if geometry and geometry.pixel_spacing else None,
        "slice_thickness": geometry.slice_thickness if geometry else None,
        "image_type": [str(v) for v in (ds.get("ImageType") or [])],
    }


def serialize(ds) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def prepare(data: bytes, *, secret: bytes, options: "deid.DeidOptions", max_bytes: int) -> Prepared | Rejection:
    """Parse, validate, de-identify and serialise one file."""
    try:
        ds = parse(io.BytesIO(data), len(data), max_bytes)
        meta = index_metadata(ds)
        result = deid.deidentify_dataset(ds, secret=secret, options=options)
        out = serialize(ds)
    except _Refused as exc:
        return Rejection(str(exc))
    except Exception as exc:  # noqa: BLE001 - a file that breaks the pipeline is refused, the batch goes on
        return Rejection(f"could not process ({type(exc).__name__})")
    return Prepared(
        data=out, meta=meta,
        uids={"StudyInstanceUID": str(ds.StudyInstanceUID), "SeriesInstanceUID": str(ds.SeriesInstanceUID),
              "SOPInstanceUID": str(ds.SOPInstanceUID),
              "FrameOfReferenceUID": str(ds.get("FrameOfReferenceUID", "") or ""),
              "TransferSyntaxUID": str(ds.file_meta.TransferSyntaxUID)},
        texts={"StudyDate": str(ds.get("StudyDate", "") or "")[:8],
               "StudyDescription": str(ds.get("StudyDescription", "") or "")[:200],
               "SeriesDescription": str(ds.get("SeriesDescription", "") or "")[:200]},
        patient_pseudonym=result.patient_pseudonym, patient_age_years=result.patient_age_years,
        burned_in_risk=result.burned_in_risk, actions=dict(result.actions), profile_version=result.profile_version,
        original=dict(result.original), notes=list(result.notes),
    )
