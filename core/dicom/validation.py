"""What ingest refuses because radqueue could not serve it afterwards, and what a project does not take.

Parsing alone lets through files that break retrieval later: pixel data four times what Rows x
Columns asks for, BitsAllocated 0, a private element whose declared length swallows the pixel data
(pydicom reads a short value without complaint). Such a file is stored, and its frames, rendered
image and thumbnail fail ever after. ``validate_for_serving`` checks, before anything is stored,
what those endpoints will need; pure pydicom, no Django.

==========================  ===================================================================
Rule                        Why (what would fail afterwards)
==========================  ===================================================================
known VRs                   An element whose VR PS3.5 does not define cannot be written as JSON.
declared lengths            An element declaring more bytes than the file (or its sequence item)
                            holds has swallowed what followed it: the pixel data, usually.
sequence depth              Deeper than MAX_SEQUENCE_DEPTH, walking the dataset (JSON metadata,
                            de-identification) recurses past Python's limit.
image without pixels        Rows and Columns promise frames; with no pixel data there are none.
Image Pixel module          PS3.3 C.7.6.3.1: Rows, Columns >= 1; BitsAllocated 1 or a multiple of
                            8 up to 64; 1 <= BitsStored <= BitsAllocated; BitsStored - 1 <=
                            HighBit < BitsAllocated; PixelRepresentation 0 or 1; SamplesPerPixel
                            1 (MONOCHROME1/2, PALETTE COLOR) or 3 (RGB, YBR_*) with
                            PlanarConfiguration 0 or 1; NumberOfFrames >= 1. The decoder needs each.
native pixel data length    PS3.5 8.1.1 and 8.2: exactly Rows x Columns x SamplesPerPixel x frames
                            x BitsAllocated bits, plus one padding byte to an even length. Less is
                            a truncated frame; more decodes as extra frames nobody described.
encapsulated pixel data     PS3.5 A.4: a Basic Offset Table item, then at least one non-empty
                            fragment per frame, every item inside the data; an offset table (Basic
                            or Extended), when present, has one entry per frame; several frames
                            over more fragments than frames need one, or frames cannot be found.
a decoder for the syntax    Frames and rendered images decode the pixel data (pydicom.pixels); a
                            transfer syntax with no decoder here (video, say) cannot be served.
window and rescale values   Rendering reads WindowCenter/Width and RescaleSlope/Intercept as
                            numbers, and a Modality LUT's descriptor and data.
==========================  ===================================================================

Every reason names attributes, lengths and counts, never a value (a value may be PHI).

The rules read each element's declared length as the file gave it, so call them on a dataset as
pydicom read it, before its elements are converted; a lazily read one (``defer_size``) will do: a
deferred element keeps its length and offset, checked against ``file_size`` without being read.
"""

import copy
import io
from typing import BinaryIO

from pydicom.datadict import dictionary_has_tag, dictionary_VR, keyword_for_tag
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.multival import MultiValue
from pydicom.pixels import get_decoder
from pydicom.valuerep import VR

MAX_SEQUENCE_DEPTH = 32
KNOWN_VRS = frozenset(str(vr) for vr in VR)  # PS3.5 6.2, and pydicom's ambiguous "US or SS" and the like
UNDEFINED_LENGTH = 0xFFFFFFFF
# (tag, VRs the element may have): Pixel Data, Float Pixel Data, Double Float Pixel Data (PS3.6).
PIXEL_ELEMENTS = ((0x7FE00010, ("OB", "OW", "OB or OW")), (0x7FE00008, ("OF",)), (0x7FE00009, ("OD",)))
EXTENDED_OFFSET_TABLE = 0x7FE00001
PHOTOMETRIC_SAMPLES = {
    "MONOCHROME1": 1, "MONOCHROME2": 1, "PALETTE COLOR": 1,
    "RGB": 3, "YBR_FULL": 3, "YBR_FULL_422": 3, "YBR_PARTIAL_420": 3, "YBR_ICT": 3, "YBR_RCT": 3,
}
ITEM, SEQUENCE_DELIMITER = 0xFFFEE000, 0xFFFEE0DD


class _Invalid(Exception):
    pass


class _Undecodable(Exception):
    """A value that does not decode: parsing reports it by tag and VR, not these rules."""


def validate_for_serving(ds: Dataset, file_size: int | None, source: BinaryIO | None = None) -> list[str]:
    """Why this dataset could not be served once stored (empty when it can): see the module's table.

    ``file_size`` is the size of the file ``ds`` was read from (None: unknown, deferred elements are
    then not checked against it); ``source``, that file, seekable: deferred encapsulated pixel data
    is walked there item by item, and only its first frame read.
    """
    syntax = getattr(ds, "file_meta", Dataset()).get("TransferSyntaxUID")
    if syntax is not None and syntax.is_deflated:
        file_size = None  # offsets count in the inflated stream, not the file
    problems = _declared_lengths(ds, file_size, depth=0)
    if problems:
        return problems  # what follows reads values a wrong length has swallowed or cut short
    pixel = next(((tag, vrs) for tag, vrs in PIXEL_ELEMENTS if tag in ds), None)
    if pixel is None:
        if "Rows" in ds or "Columns" in ds:
            return ["Rows and Columns describe an image, but the file has no pixel data"]
        return []
    try:
        frames = _image_pixel_module(ds)
        _pixel_data(ds, *pixel, frames, source)
        _rendering_values(ds)
    except _Invalid as exc:
        return [str(exc)]
    except _Undecodable:
        return []
    return []


def modality_refusal(accepted: list[str], modality: str) -> str:
    """Why a project declaring ``accepted`` modalities refuses an instance of ``modality`` ('' when
    it takes it). A project that declares none takes every modality."""
    wanted = {str(m).strip().upper() for m in accepted or ()}
    code = (modality or "").strip().upper()
    if not wanted or code in wanted:
        return ""
    return f"modality {code or '(none)'} is not one this project takes ({', '.join(sorted(wanted))})"


# --- declared lengths ---------------------------------------------------------------------------

def _vr(tag: int, elem) -> str | None:
    """The element's VR; an implicit-VR file's raw elements carry none, the dictionary's applies."""
    if elem.VR is None and dictionary_has_tag(tag):
        return dictionary_VR(tag)
    return elem.VR

def _name(tag: int, vr: str | None) -> str:
    return f"({tag >> 16:04X},{tag & 0xFFFF:04X}) {keyword_for_tag(tag) or 'private'} {vr or 'UN'}"


def _declared_lengths(ds: Dataset, file_size: int | None, depth: int) -> list[str]:
    """Elements whose declared length is more than the bytes there were for them, at any depth."""
    if depth > MAX_SEQUENCE_DEPTH:
        return [f"sequences nested deeper than {MAX_SEQUENCE_DEPTH} levels"]
    problems = []
    for tag in list(ds.keys()):
        elem = ds.get_item(tag, keep_deferred=True)  # a deferred value stays on disk: only its length matters
        if elem.VR is not None and elem.VR not in KNOWN_VRS:
            # pydicom keeps such an element as bytes, but DICOM JSON (WADO-RS metadata) cannot say it.
            problems.append(f"({tag >> 16:04X},{tag & 0xFFFF:04X}) has a VR DICOM does not define")
            continue
        if isinstance(elem, RawDataElement) and elem.length != UNDEFINED_LENGTH:
            if elem.value is not None:
                held = len(elem.value)  # pydicom reads what there is when the data ends early
            elif file_size is not None and depth == 0 and elem.value_tell is not None:
                held = max(file_size - elem.value_tell, 0)  # deferred: measured, not read
            else:
                held = elem.length
            if held < elem.length:
                problems.append(f"{_name(tag, elem.VR)} declares {elem.length} bytes but only {held} follow "
                                f"(a truncated file, or a wrong length)")
                continue
        if _vr(tag, elem) != "SQ":
            continue
        try:
            items = ds[tag].value
        except Exception:  # noqa: BLE001 - a malformed sequence is parsing's to report, by tag and VR
            continue
        for item in items or ():
            if isinstance(item, Dataset):
                problems += _declared_lengths(item, None, depth + 1)
                if problems:
                    return problems
    return problems


# --- the Image Pixel module ---------------------------------------------------------------------

def _number(ds: Dataset, keyword: str, *, required: bool = True, default: int | None = None) -> int | None:
    """A single whole number from ``ds``, or _Invalid saying which attribute is wrong."""
    if keyword not in ds:
        if required:
            raise _Invalid(f"pixel data without {keyword}")
        return default
    try:
        value = ds[keyword].value
    except Exception:  # noqa: BLE001 - any decode failure is a malformed value
        raise _Undecodable from None
    if value is None or value == "":
        if required:
            raise _Invalid(f"{keyword} is empty")
        return default
    if isinstance(value, MultiValue | list):
        raise _Invalid(f"{keyword} holds several values; one is allowed")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise _Invalid(f"{keyword} is not a number") from None
    if number != int(number):
        raise _Invalid(f"{keyword} is not a whole number")
    return int(number)


def _text(ds: Dataset, keyword: str) -> str:
    try:
        value = ds[keyword].value if keyword in ds else None
    except Exception:  # noqa: BLE001 - any decode failure is a malformed value
        raise _Undecodable from None
    if isinstance(value, bytes):
        value = value.decode("ascii", "replace")
    return str(value or "").strip().upper()


def _image_pixel_module(ds: Dataset) -> int:
    """Checks PS3.3 C.7.6.3's rules the decoder depends on; returns the number of frames."""
    rows, columns = _number(ds, "Rows"), _number(ds, "Columns")
    if rows < 1 or columns < 1:
        raise _Invalid(f"Rows and Columns must be at least 1 (got {rows} x {columns})")
    allocated = _number(ds, "BitsAllocated")
    if not (allocated == 1 or (allocated % 8 == 0 and 8 <= allocated <= 64)):
        raise _Invalid(f"BitsAllocated {allocated} is invalid (1, or a multiple of 8 up to 64)")
    stored = _number(ds, "BitsStored")
    if not 1 <= stored <= allocated:
        raise _Invalid(f"BitsStored {stored} must lie in 1..BitsAllocated ({allocated})")
    high_bit = _number(ds, "HighBit", required=False)
    if high_bit is not None and not stored - 1 <= high_bit < allocated:
        raise _Invalid(f"HighBit {high_bit} must lie in BitsStored - 1 ({stored - 1})..BitsAllocated - 1 "
                       f"({allocated - 1})")
    if _number(ds, "PixelRepresentation") not in (0, 1):
        raise _Invalid("PixelRepresentation must be 0 (unsigned) or 1 (two's complement)")
    samples = _number(ds, "SamplesPerPixel")
    photometric = _text(ds, "PhotometricInterpretation")
    if photometric not in PHOTOMETRIC_SAMPLES:
        raise _Invalid("PhotometricInterpretation is missing or not one radqueue can display "
                       f"({', '.join(PHOTOMETRIC_SAMPLES)})")
    if samples != PHOTOMETRIC_SAMPLES[photometric]:
        raise _Invalid(f"SamplesPerPixel {samples} does not fit PhotometricInterpretation {photometric} "
                       f"({PHOTOMETRIC_SAMPLES[photometric]} expected)")
    if samples > 1 and _number(ds, "PlanarConfiguration") not in (0, 1):
        raise _Invalid("PlanarConfiguration must be 0 or 1")
    frames = _number(ds, "NumberOfFrames", required=False, default=1)
    # An empty or zero NumberOfFrames reads as one frame everywhere (pydicom, the index, WADO-RS).
    frames = 1 if frames == 0 else frames
    if frames < 1:
        raise _Invalid(f"NumberOfFrames {frames} must be at least 1")
    return frames


# --- the pixel data itself ----------------------------------------------------------------------

def _pixel_data(ds: Dataset, tag: int, vrs: tuple[str, ...], frames: int, source: BinaryIO | None) -> None:
    elem = ds.get_item(tag, keep_deferred=True)  # streamed ingest defers pixel data: never load it whole here
    if elem.VR is not None and elem.VR not in vrs:  # None: implicit VR, the dictionary's applies
        raise _Invalid(f"{_name(tag, elem.VR)}: pixel data must have VR {' or '.join(v for v in vrs if ' ' not in v)}")
    syntax = getattr(ds, "file_meta", Dataset()).get("TransferSyntaxUID")
    encapsulated = syntax is not None and syntax.is_transfer_syntax and syntax.is_encapsulated
    if encapsulated:
        try:
            decoder = get_decoder(syntax)
        except NotImplementedError:
            decoder = None
        if decoder is None or not decoder.is_available:
            raise _Invalid(f"no decoder here for transfer syntax {syntax.name} ({syntax}): frames and "
                           "rendered images could not be served")
        if isinstance(elem, RawDataElement) and elem.value is None:
            if source is None:
                return  # deferred, and no file to walk: the reader has checked the items' lengths
            items, end = io.BufferedReader(_Window(source, elem.value_tell)), None
        else:
            value = bytes(ds[tag].value or b"")
            items, end = io.BytesIO(value), len(value)
        first = _fragments(ds, items, end, frames)
        # A well-formed stream may still not decode here (a 12-bit JPEG no plugin reads, say): try
        # the first frame, as frames and rendered will. Native data needs no trial: its layout is
        # the arithmetic above.
        trial = copy.copy(ds)
        # New elements in a table of its own: a shallow copy shares the dataset's table and its
        # elements, and setting a value sets it on the shared element, so the trial's one frame
        # became the file's (a 10-frame RLE object was indexed and stored as one frame).
        trial._dict = {t: e for t, e in ds._dict.items() if t not in (0x00280008, 0x7FE00010)}
        trial.PixelData, trial.NumberOfFrames = encapsulate([first]), 1
        try:
            decoder.as_array(trial, index=0)
        except Exception as exc:  # noqa: BLE001 - each plugin raises its own; the type is the reason
            raise _Invalid(f"the first frame does not decode ({syntax.name}, {type(exc).__name__})") from None
        return
    length = elem.length if isinstance(elem, RawDataElement) and elem.value is None else len(elem.value or b"")
    expected = _native_length(ds, frames)
    if length < expected:
        raise _Invalid(f"truncated pixel data: {length} bytes, {expected} expected for {frames} frame(s)")
    # Trailing bytes short of a frame are padding some writers add, which decoding ignores; a
    # frame's worth or more decodes as frames that NumberOfFrames does not describe.
    if length - expected >= max(expected // frames, 2):
        raise _Invalid(f"pixel data of {length} bytes holds more than the {expected} that Rows, Columns, "
                       f"SamplesPerPixel, BitsAllocated and {frames} frame(s) describe")


def _native_length(ds: Dataset, frames: int) -> int:
    """Bytes of native pixel data the module describes, before even padding (PS3.5 8.1.1, 8.2)."""
    samples = _number(ds, "SamplesPerPixel")
    if _text(ds, "PhotometricInterpretation") == "YBR_FULL_422":
        samples = 2  # two chrominance samples per pair of pixels (PS3.3 C.7.6.3.1.2)
    bits = _number(ds, "Rows") * _number(ds, "Columns") * samples * frames * _number(ds, "BitsAllocated")
    return (bits + 7) // 8


class _Window(io.RawIOBase):
    """The source from ``start`` on, read without moving anybody else's position for long."""

    def __init__(self, source: BinaryIO, start: int):
        self.source, self.position = source, start

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        self.source.seek(self.position)
        data = self.source.read(len(buffer))
        buffer[:len(data)] = data
        self.position += len(data)
        return len(data)


def _fragments(ds: Dataset, items: BinaryIO, end: int | None, frames: int) -> bytes:
    """PS3.5 A.4: items (offset table, then fragments), each wholly inside the data; returns the
    first frame's bytes (its fragments joined), reading no other fragment into memory."""
    lengths, position, first = [], 0, bytearray()
    offsets: list[int] = []
    while True:
        head = items.read(8)
        if len(head) < 8:
            break
        group, element = int.from_bytes(head[0:2], "little"), int.from_bytes(head[2:4], "little")
        tag, length = group << 16 | element, int.from_bytes(head[4:8], "little")
        if tag == SEQUENCE_DELIMITER:
            break
        if tag != ITEM:
            raise _Invalid(f"encapsulated pixel data: an element ({group:04X},{element:04X}) where an item "
                           "was expected")
        if length == UNDEFINED_LENGTH or (end is not None and position + 8 + length > end):
            raise _Invalid(f"encapsulated pixel data: item {len(lengths) + 1} declares {length} bytes, "
                           f"{max((end or 0) - position - 8, 0)} follow")
        fragment_start = position - (8 + lengths[0]) if lengths else 0  # from the first fragment's item
        # The first frame: every fragment when there is one frame, else those before the second
        # frame's offset (Basic Offset Table), else the first fragment alone (one per frame).
        wanted = lengths and (frames == 1 or (len(offsets) > 1 and fragment_start < offsets[1])
                              or (len(offsets) <= 1 and len(lengths) == 1))
        value = items.read(length) if not lengths or wanted else None
        if value is None:
            items.seek(length, io.SEEK_CUR) if items.seekable() else items.read(length)
        elif len(value) < length:
            raise _Invalid(f"encapsulated pixel data: item {len(lengths) + 1} declares {length} bytes, "
                           f"{len(value)} follow")
        elif not lengths:
            offsets = [int.from_bytes(value[i:i + 4], "little") for i in range(0, len(value) - 3, 4)]
        else:
            first += value
        lengths.append(length)
        position += 8 + length
    if not lengths:
        raise _Invalid("encapsulated pixel data has no Basic Offset Table item")
    table, fragments = lengths[0], lengths[1:]
    if not fragments:
        raise _Invalid("encapsulated pixel data has no fragments")
    if any(length == 0 for length in fragments):
        raise _Invalid("encapsulated pixel data has an empty fragment")
    if len(fragments) < frames:
        raise _Invalid(f"encapsulated pixel data has {len(fragments)} fragment(s) for {frames} frames")
    if table and table != 4 * frames:
        raise _Invalid(f"the Basic Offset Table has {table // 4} entries for {frames} frame(s)")
    extended = EXTENDED_OFFSET_TABLE in ds
    if extended and len(ds[EXTENDED_OFFSET_TABLE].value or b"") != 8 * frames:
        raise _Invalid(f"the Extended Offset Table does not have one entry per frame ({frames})")
    if frames > 1 and len(fragments) != frames and not table and not extended:
        raise _Invalid(f"{frames} frames in {len(fragments)} fragments without an offset table: the frames "
                       "cannot be told apart")
    return bytes(first)


# --- values rendering reads ---------------------------------------------------------------------

def _rendering_values(ds: Dataset) -> None:
    """What render_jpeg and pydicom's apply_modality_lut read as numbers, when they read them."""
    for pair, several in ((("WindowCenter", "WindowWidth"), True), (("RescaleSlope", "RescaleIntercept"), False)):
        if not all(keyword in ds for keyword in pair):
            continue  # used only together
        for keyword in pair:
            try:
                value = ds[keyword].value
                if several and isinstance(value, MultiValue):
                    value = value[0]  # the first window is the one rendered
                float(value)
            except Exception:  # noqa: BLE001 - empty, several values, or not a number
                raise _Invalid(f"{keyword} is empty or not a number" + ("" if several else " (one value)")) from None
    if "ModalityLUTSequence" in ds:
        _modality_lut(ds)


def _modality_lut(ds: Dataset) -> None:
    try:
        items = ds.ModalityLUTSequence
        if not items:
            return  # an empty sequence is ignored
        entries, _, depth = (int(v) for v in items[0].LUTDescriptor)
        data = items[0].LUTData
    except Exception:  # noqa: BLE001 - missing, malformed or incomplete
        raise _Invalid("the Modality LUT needs a LUTDescriptor of three numbers and LUTData") from None
    entries = entries or 65536  # PS3.3 C.11.1.1.1: 0 means 2**16
    if isinstance(data, bytes):
        fits = len(data) == 2 * entries  # OW: unpacked as exactly that many words
    else:
        fits = isinstance(data, MultiValue | list) and len(data) >= entries
    if depth not in (8, 16) or not fits:
        raise _Invalid("the Modality LUT's data does not match its descriptor (8 or 16 bits, one entry each)")
