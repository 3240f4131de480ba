"""The CPU-bound half of ingest, free of Django so it can run in worker processes: parse a file up
to its pixel data (core.dicom.part10), check its values, read its non-identifying index metadata,
de-identify it; ``Prepared.write`` then puts the de-identified file out, pixel data streamed
through from the source unread.

Takes bytes or a seekable binary file, returns a ``Prepared`` (or a ``Rejection`` with the reason);
stores nothing. A reason names attributes and error types, never a value: the value may be the PHI
that made it fail.
"""

import io
from dataclasses import dataclass, field
from typing import BinaryIO

from pydicom.datadict import dictionary_VR, keyword_for_tag
from pydicom.errors import InvalidDicomError

from core.dicom import deid, part10
from core.dicom.sequences import mr_sequence_type
from core.dicom.validation import validate_for_serving
from core.dicom.volume import geometry_of

REQUIRED_UIDS = ("SOPInstanceUID", "SOPClassUID", "StudyInstanceUID", "SeriesInstanceUID")


@dataclass
class Rejection:
    reason: str


@dataclass
class Prepared:
    """A de-identified instance ready to store and index."""

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
    sealed: object = None  # core.dicom.storage.Sealed: the file encrypted for its object, once sealed
    recorded: object = None  # core.dicom.metadata.Recorded: its metadata and frame layout, once sealed
    part: part10.Part10 | None = field(default=None, repr=False)  # until written: the source, read lazily

    def write(self, dst) -> None:
        """Write the de-identified file to dst (``.write``); the source must still be open."""
        self.part.write(dst)


class _Refused(Exception):
    pass


def _tag_name(tag, vr) -> str:
    return f"({tag >> 16:04X},{tag & 0xFFFF:04X}) {keyword_for_tag(tag) or 'private'} {vr or 'UN'}"


# Bytes per value of the binary VRs (PS3.5 Table 6.2-1): a value of another length does not decode.
_VALUE_SIZES = {"US": 2, "SS": 2, "UL": 4, "SL": 4, "FL": 4, "FD": 8, "SV": 8, "UV": 8, "US or SS": 2}
_STRING_VRS = frozenset({"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "PN", "SH", "ST", "TM", "UC", "UI",
                         "UR", "UT"})


def _decode_all(ds) -> None:
    """Find now, by tag and VR, every value that would fail to decode (parsing is lazy), so it is
    refused instead of stored: sequences are parsed at every depth, binary numbers checked for a
    whole number of values, text that is not plain ASCII decoded. Plain ASCII text and bulk (OB,
    OW, UN) values always decode, so they stay raw: untouched, they are copied as read. Pixel data
    and values left unread (over part10.DEFER_BYTES) are not read for this."""
    for tag, elem in list(ds._dict.items()):
        if tag in part10.PIXEL_TAGS:
            continue
        if elem.is_raw:
            vr = elem.VR
            if vr is None or vr == "UN":
                try:
                    vr = dictionary_VR(tag)
                except KeyError:
                    continue  # private or unknown: decodes as bytes
            value = elem.value
            size = _VALUE_SIZES.get(vr)
            if size is not None:
                if not elem.length % size:
                    continue
            elif vr in _STRING_VRS:
                if value is None or (value.isascii() and b"\x1b" not in value):
                    continue
            elif vr != "SQ":
                continue  # bulk and ambiguous binary values decode as bytes
        try:
            elem = ds[tag]
        except Exception as exc:  # noqa: BLE001 - any decode failure is a malformed value
            raise _Refused(f"malformed value in {_tag_name(tag, ds._dict[tag].VR)} ({type(exc).__name__})") from None
        if elem.VR == "SQ":
            for item in elem.value:
                _decode_all(item)


def parse(reader: BinaryIO, size: int | None, max_bytes: int) -> part10.Part10:
    """The file read up to its pixel data (its pixel data elements deferred: value None, length
    and offset kept), validated, its values checked; or _Refused with the reason."""
    if size == 0:
        raise _Refused("empty file (0 bytes)")
    if size is not None and size > max_bytes:
        raise _Refused(f"file of {size} bytes exceeds the {max_bytes} byte limit")
    try:
        part = part10.read(reader, size=size)
    except InvalidDicomError:
        raise _Refused("not a DICOM file (no 'DICM' prefix after the 128-byte preamble)") from None
    except part10.Part10Error as exc:
        raise _Refused(str(exc)) from None
    except (EOFError, OSError, ValueError, KeyError, TypeError, NotImplementedError) as exc:
        raise _Refused(f"unreadable DICOM ({type(exc).__name__})") from None
    ds = part.ds
    # What retrieval will have to serve (core.dicom.validation), checked before _decode_all
    # converts the elements: the rules read each element's length as the file declared it.
    if problems := validate_for_serving(ds, size, part.source):
        raise _Refused(f"cannot be served: {'; '.join(problems)}")
    _decode_all(ds)
    missing = [k for k in REQUIRED_UIDS if not str(ds.get(k, "")).strip()]
    if missing:
        raise _Refused(f"missing required attribute(s): {', '.join(missing)}")
    return part


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


def prepare(source: bytes | BinaryIO, *, secret: bytes, options: "deid.DeidOptions",
            max_bytes: int) -> Prepared | Rejection:
    """Parse, validate and de-identify one file (bytes, or a seekable binary file that must stay open
    until ``Prepared.write``)."""
    if isinstance(source, bytes | bytearray | memoryview):
        source = io.BytesIO(source)
    try:
        source = part10.with_preamble(source)
        size = source.seek(0, io.SEEK_END)
        part = parse(source, size, max_bytes)
        ds = part.ds
        meta = index_metadata(ds)
        part.remember()  # what is still as read after this is copied, not encoded again
        result = deid.deidentify_dataset(ds, secret=secret, options=options)
        uids = {"StudyInstanceUID": str(ds.StudyInstanceUID), "SeriesInstanceUID": str(ds.SeriesInstanceUID),
                "SOPInstanceUID": str(ds.SOPInstanceUID),
                "FrameOfReferenceUID": str(ds.get("FrameOfReferenceUID", "") or ""),
                "TransferSyntaxUID": str(ds.file_meta.TransferSyntaxUID)}
        texts = {"StudyDate": str(ds.get("StudyDate", "") or "")[:8],
                 "StudyDescription": str(ds.get("StudyDescription", "") or "")[:200],
                 "SeriesDescription": str(ds.get("SeriesDescription", "") or "")[:200]}
    except _Refused as exc:
        return Rejection(str(exc))
    except Exception as exc:  # noqa: BLE001 - a file that breaks the pipeline is refused, the batch goes on
        return Rejection(f"could not process ({type(exc).__name__})")
    return Prepared(
        meta=meta, uids=uids, texts=texts,
        patient_pseudonym=result.patient_pseudonym, patient_age_years=result.patient_age_years,
        burned_in_risk=result.burned_in_risk, actions=dict(result.actions), profile_version=result.profile_version,
        original=dict(result.original), notes=list(result.notes), part=part,
    )
