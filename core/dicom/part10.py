"""DICOM Part 10 files read and written in pieces, so a file of any size passes through bounded memory.

``read`` parses the dataset up to the pixel data with pydicom (values over DEFER_BYTES stay in the
file until asked for), finds where the pixel data elements lie from their headers alone (an
encapsulated value's items are walked header by header, PS3.5 A.4), and parses what follows them.
``Part10.write`` puts the dataset out as de-identification left it: the File Meta Information and
every changed element encoded by pydicom, runs of untouched elements and the pixel data copied
from the source a chunk at a time. Pixel data is never in memory whole.

An element counts as untouched only when it is the very object read from the file and still raw
(a RawDataElement cannot be edited in place); or the very element ``remember`` saw decoded (by
validation or the index metadata), with the very value object it held then, of the same VR and,
for a multi-valued one, the same values; or a sequence whose items, and their elements at every
depth, are untouched in this sense (``remember`` runs before de-identification).
Whatever was replaced, removed, decoded and edited, or added is encoded anew: no original byte is
copied unless the whole element it belongs to was left exactly as read. Each copied run must start
with its element's tag, or the whole dataset is encoded by pydicom instead.

A file whose dataset is deflated, or is encoded other than its transfer syntax says (pydicom then
re-encodes it whole), is read and written whole as before; only then does memory grow with the file.
"""

import functools
import io
import struct
from dataclasses import dataclass, field
from typing import BinaryIO

import pydicom
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_dataset
from pydicom.filewriter import write_data_element, write_file_meta_info
from pydicom.multival import MultiValue
from pydicom.tag import Tag
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, UID, DeflatedExplicitVRLittleEndian
from pydicom.valuerep import EXPLICIT_VR_LENGTH_32, PersonName

# Float, Double Float and Pixel Data (PS3.3 C.7.6.3): bulk values that are copied, never parsed.
PIXEL_TAGS = frozenset({0x7FE00008, 0x7FE00009, 0x7FE00010})
PIXEL_DATA = 0x7FE00010
DEFER_BYTES = 64 * 1024
COPY_CHUNK = 1024 * 1024
# The elements before the pixel data are read once more into memory when they are no larger than
# this: copies and checks of untouched runs then cost no seek.
HEAD_IN_MEMORY = 4 * 1024 * 1024
_LONG_VRS = frozenset(str(vr).encode() for vr in EXPLICIT_VR_LENGTH_32)
_ITEM, _SEQUENCE_DELIMITER = 0xFFFEE000, 0xFFFEE0DD
_UNDEFINED = 0xFFFFFFFF


class Part10Error(ValueError):
    """A file whose pixel data cannot be located: the reason names lengths, never a value."""


@dataclass(frozen=True)
class PixelSpan:
    """Where the pixel data elements lie in the source: ``start`` to ``end`` covers them whole."""

    start: int
    end: int
    tag: int  # the last of them; (7FE0,0010) for every image that is not float
    start_tag: int  # the first of them
    value_start: int  # of that element
    value_length: int  # its value's bytes (an encapsulated one's items, up to the delimiter)
    encapsulated: bool
    fragments: int  # an encapsulated value's items, the Basic Offset Table among them


@dataclass
class _Snapshot:
    # What each dataset and sequence held before de-identification, by id() of the object, with
    # the objects themselves kept alive so that no id is reused.
    datasets: dict[int, tuple[Dataset, dict]] = field(default_factory=dict)
    sequences: dict[int, tuple[object, object, list]] = field(default_factory=dict)
    # Decoded elements other than sequences: (element, its value object, VR, the values of a list).
    values: dict[int, tuple[object, object, str, tuple | None]] = field(default_factory=dict)


class Part10:
    """A file read by ``read``: ``ds`` (without its pixel data), ``pixels``, and what writing needs."""

    def __init__(self, source: BinaryIO, ds: Dataset, *, size: int, pixels: PixelSpan | None,
                 starts: dict[int, int] | None, dataset_end: int, head: tuple[int, bytes] = (0, b"")):
        self.source = source
        self.ds = ds
        self.size = size
        self.pixels = pixels
        self.streamed = starts is not None  # False: read whole, written whole by pydicom
        self._starts = starts or {}
        self._dataset_end = dataset_end
        self._head = head  # (offset, bytes): the elements before the pixel data, when small
        self._snapshot: _Snapshot | None = None

    @property
    def encoding(self) -> tuple[bool, bool]:
        """(implicit VR, little endian) of the dataset as stored."""
        return self.ds.original_encoding

    def remember(self) -> None:
        """Note every element and sequence item as it is now, before de-identification: ``write``
        copies only what is still these very objects."""
        snapshot = _Snapshot()
        _remember(self.ds, snapshot)
        self._snapshot = snapshot

    def write(self, dst) -> None:
        """Write the file as ``ds`` now is, pixel data copied from the source, to ``dst`` (``.write``)."""
        if not self.streamed:
            buffer = io.BytesIO()
            self.ds.save_as(buffer, enforce_file_format=True)
            dst.write(buffer.getbuffer())
            return
        dst.write(self.ds.preamble if getattr(self.ds, "preamble", None) else b"\0" * 128)
        dst.write(b"DICM")
        sop_class, sop_instance = _uid_of(self.ds, 0x00080016), _uid_of(self.ds, 0x00080018)
        meta_bytes = _file_meta_bytes(self.ds.file_meta, sop_class, sop_instance)
        if meta_bytes is None:
            # A copy of the element table, not of the elements: the two UIDs are new elements, and
            # write_file_meta_info's group length goes into the copy, so ds.file_meta stays as it is.
            meta = FileMetaDataset(dict(self.ds.file_meta._dict))
            meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = sop_class, sop_instance
            head = DicomBytesIO()
            write_file_meta_info(head, meta, enforce_standard=True)
            meta_bytes = head.getvalue()
        dst.write(meta_bytes)
        # A changed character set re-encodes every text (as pydicom's write_dataset does).
        recode = self.ds.original_character_set != self.ds._character_set
        try:
            plan = self._plan(copy_nothing=recode)
        except _NotAsRead:
            plan = self._plan(copy_nothing=True)
        for step in plan:
            if isinstance(step, tuple):
                self._copy(dst, *step)
            else:
                dst.write(step)

    def _plan(self, *, copy_nothing: bool = False) -> list:
        """The dataset as steps: encoded bytes, or (start, end) ranges of the source to copy."""
        implicit, little = self.encoding
        encodings = self.ds.get("SpecificCharacterSet", "iso8859")
        starts, ends = self._starts, self._ends()
        steps: list = []
        run: list[int] = []  # [start, end] of the current run of untouched elements
        out = _encoder(implicit, little)

        def flush_encoded():
            nonlocal out
            if out.tell():
                steps.append(out.getvalue())
                out = _encoder(implicit, little)

        def flush_run():
            if run:
                self._check_boundary(run[1])
                steps.append((run[0], run[1]))
                run.clear()

        def copy_range(start: int, end: int):
            if run and run[1] == start:
                run[1] = end
                return
            flush_run()
            run.extend((start, end))

        pixels_done = self.pixels is None
        pixels_from = int(self.pixels.start_tag) if self.pixels is not None else 0
        # Sorted and compared as ints (BaseTag compares in Python), looked up as the very BaseTag
        # objects the dicts hold (found by identity, without BaseTag.__eq__).
        for tag in sorted(self.ds._dict, key=int):
            key = int(tag)
            if not pixels_done and key >= pixels_from:
                flush_encoded()
                copy_range(self.pixels.start, self.pixels.end)
                pixels_done = True
            if key in PIXEL_TAGS:
                continue  # copied from the source with the span, as read
            elem = self.ds._dict[tag]  # not get_item: that would load a deferred value
            start = starts.get(tag)
            if not copy_nothing and start is not None and self._untouched(tag, elem):
                self._check_tag_at(start, tag)
                flush_encoded()
                copy_range(start, ends[tag])
                continue
            flush_run()
            if elem.is_raw and elem.value is None:
                # A deferred value that changed hands: load it to encode it. An empty raw value
                # (None for some VRs) pydicom writes only decoded.
                elem = self.ds.get_item(tag) if elem.length else self.ds[tag]
            simple = (_sequence_bytes(elem, implicit, little, encodings) if elem.VR == "SQ" and not elem.is_raw
                      else _text_element_bytes(elem, implicit, little))
            if simple is None:
                write_data_element(out, elem, encodings)
            else:
                out.write(simple)
        if not pixels_done:
            flush_encoded()
            copy_range(self.pixels.start, self.pixels.end)
        flush_encoded()
        flush_run()
        return steps

    def _ends(self) -> dict[int, int]:
        """Each original element's end: where the next one (or the pixel data, or the end) starts."""
        positions = sorted(self._starts.values())
        if self.pixels is not None:
            positions.append(self.pixels.start)
            positions.sort()
        following = dict(zip(positions, positions[1:] + [self._dataset_end], strict=True))
        return {tag: following[start] for tag, start in self._starts.items()}

    def _untouched(self, tag: int, elem) -> bool:
        snapshot = self._snapshot
        if snapshot is None:
            return False
        top = snapshot.datasets.get(id(self.ds))
        return top is not None and top[1].get(tag) is elem and _same(elem, snapshot)

    def _check_tag_at(self, start: int, tag: int) -> None:
        if self._read_at(start, 4) != self._pack_tag(tag >> 16, tag & 0xFFFF):
            raise _NotAsRead

    @functools.cached_property
    def _pack_tag(self):
        return struct.Struct("<HH" if self.encoding[1] else ">HH").pack

    def _check_boundary(self, end: int) -> None:
        """A run must end where another original element (its tag there), the pixel data or the dataset ends."""
        if end == self._dataset_end:
            return
        tag = self._tag_starting_at.get(end)
        if tag is None and self.pixels is not None and end == self.pixels.start:
            return  # _locate_pixels read a pixel data tag there
        if tag is None:
            raise _NotAsRead
        self._check_tag_at(end, tag)

    @functools.cached_property
    def _tag_starting_at(self) -> dict[int, int]:
        return {start: tag for tag, start in self._starts.items()}

    def _read_at(self, start: int, length: int) -> bytes:
        offset, head = self._head
        if offset <= start and start + length <= offset + len(head):
            return head[start - offset:start + length - offset]
        self.source.seek(start)
        return self.source.read(length)

    def _copy(self, dst, start: int, end: int) -> None:
        offset, head = self._head
        if offset <= start and end <= offset + len(head):
            dst.write(memoryview(head)[start - offset:end - offset])
            return
        source = self.source
        source.seek(start)
        remaining = end - start
        while remaining > 0:
            block = source.read(min(COPY_CHUNK, remaining))
            if not block:
                raise Part10Error(f"the file ended {remaining} bytes before its last element")
            dst.write(block)
            remaining -= len(block)


class _NotAsRead(Exception):
    """An element is not where its offsets put it: the dataset is encoded whole instead."""


def _remember(ds: Dataset, snapshot: _Snapshot) -> None:
    snapshot.datasets[id(ds)] = (ds, dict(ds._dict))
    for elem in ds._dict.values():
        if elem.is_raw:
            continue
        if elem.VR != "SQ":
            value = elem.value
            snapshot.values[id(elem)] = (elem, value, elem.VR, _values_of(value))
        elif elem.value is not None:
            items = list(elem.value)
            snapshot.sequences[id(elem)] = (elem, elem.value, items)
            for item in items:
                _remember(item, snapshot)


def _values_of(value) -> tuple | None:
    # A list can change in place (MultiValue.append): its values are compared, not only its identity.
    return tuple(value) if isinstance(value, list | MultiValue) else None


def _same(elem, snapshot: _Snapshot) -> bool:
    """Whether elem is exactly as remembered: raw, decoded but unchanged, or a sequence of the same,
    untouched items."""
    if elem.is_raw:
        return True
    if elem.VR != "SQ":
        seen = snapshot.values.get(id(elem))
        return (seen is not None and seen[0] is elem and elem.value is seen[1] and elem.VR == seen[2]
                and _values_of(elem.value) == seen[3])
    seen = snapshot.sequences.get(id(elem))
    if seen is None or seen[1] is not elem.value:
        return False
    items = list(elem.value)
    if len(items) != len(seen[2]) or any(a is not b for a, b in zip(items, seen[2], strict=True)):
        return False
    for item in items:
        before = snapshot.datasets.get(id(item))
        if before is None or len(before[1]) != len(item._dict):
            return False
        for tag, child in item._dict.items():
            if before[1].get(tag) is not child or not _same(child, snapshot):
                return False
    return True


_META_VRS = {"UI": b"\0", "OB": b"\0", "SH": b" ", "AE": b" ", "UR": b" "}  # each with its padding (PS3.5 6.2)
_META_DEFAULTS = {0x00020001: ("OB", b"\0\1"), 0x00020012: ("UI", PYDICOM_IMPLEMENTATION_UID)}


def _file_meta_bytes(meta: Dataset, sop_class: str, sop_instance: str) -> bytes | None:
    """The File Meta Information (PS3.10 7.1) as pydicom's write_file_meta_info(enforce_standard=True)
    writes it, with the instance's SOP Class and Instance UIDs, encoded here in one pass: pydicom's
    validates and encodes the group twice, which costs more than de-identifying a small file. None
    when a value is not of the plain kinds the group holds (pydicom then writes it, or refuses)."""
    values = {}
    for tag, elem in meta._dict.items():
        if tag != 0x00020000:
            values[tag] = (elem.VR, elem.value)
    values[0x00020002], values[0x00020003] = ("UI", sop_class), ("UI", sop_instance)
    for tag, default in _META_DEFAULTS.items():
        if not values.get(tag, (None, None))[1]:
            values[tag] = default
    if 0x00020013 not in values:
        values[0x00020013] = ("SH", f"PYDICOM {'.'.join(pydicom.__version_info__)}")
    if not (sop_class and sop_instance and values.get(0x00020010, (None, None))[1]):
        return None
    body = bytearray()
    for tag in sorted(values):
        vr, value = values[tag]
        pad = _META_VRS.get(vr)
        if pad is None:
            return None
        if isinstance(value, bytes):
            data = value
        elif isinstance(value, str) and value.isascii():
            data = value.encode()
        else:
            return None
        if len(data) % 2:
            data += pad
        if vr in ("OB", "UR"):
            body += struct.pack("<HH2s2xI", tag >> 16, tag & 0xFFFF, vr.encode(), len(data))
        elif len(data) <= 0xFFFF:
            body += struct.pack("<HH2sH", tag >> 16, tag & 0xFFFF, vr.encode(), len(data))
        else:
            return None
        body += data
    return struct.pack("<HH2sHI", 2, 0, b"UL", 4, len(body)) + bytes(body)


_TEXT_VRS = frozenset({"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "PN", "SH", "ST", "TM", "UC", "UI",
                       "UR", "UT"})


def _text_element_bytes(elem, implicit: bool, little: bool) -> bytes | None:
    """A decoded text element whose values are plain ASCII (the same bytes in every character set,
    PS3.5 6.1.2.2), encoded as pydicom's write_data_element encodes it but without its general
    machinery: most of what de-identification writes (UIDs, pseudonyms, shifted dates, blanks).
    None for anything else, which pydicom then encodes."""
    vr = elem.VR
    if elem.is_raw or vr not in _TEXT_VRS:
        return None
    value = elem.value
    if value is None or value == "":
        data = b""
    else:
        if isinstance(value, list | MultiValue):
            if not all(isinstance(v, str | PersonName) for v in value):
                return None
            text = "\\".join(str(v) for v in value)
        elif isinstance(value, str | PersonName):
            text = str(value)
        else:
            return None
        if not text.isascii():
            return None
        data = text.encode()
        if len(data) % 2:
            data += b"\0" if vr == "UI" else b" "
    tag = elem.tag
    prefix = "<" if little else ">"
    if implicit:
        return struct.pack(prefix + "HHI", tag >> 16, tag & 0xFFFF, len(data)) + data
    if vr in ("UC", "UR", "UT"):
        return struct.pack(prefix + "HH2s2xI", tag >> 16, tag & 0xFFFF, vr.encode(), len(data)) + data
    if len(data) > 0xFFFF:
        return None
    return struct.pack(prefix + "HH2sH", tag >> 16, tag & 0xFFFF, vr.encode(), len(data)) + data


class _Unsimple(Exception):
    """An element in a sequence that only pydicom's writer encodes."""


def _sequence_bytes(elem, implicit: bool, little: bool, encodings) -> bytes | None:
    """A sequence that de-identification changed, encoded with undefined lengths (PS3.5 7.5.2): its
    raw elements as read, its plain text elements and nested sequences here, other decoded values
    by pydicom. None when something in it needs pydicom's whole writer (an ambiguous VR to resolve,
    an item's own character set, a value not in memory)."""
    out = bytearray()
    try:
        _encode_sequence(out, elem, implicit, little, encodings)
    except _Unsimple:
        return None
    return bytes(out)


def _encode_sequence(out: bytearray, elem, implicit: bool, little: bool, encodings) -> None:
    p = "<" if little else ">"
    tag = elem.tag
    out += struct.pack(p + "HH", tag >> 16, tag & 0xFFFF)
    out += struct.pack(p + "I", _UNDEFINED) if implicit else b"SQ\0\0" + struct.pack(p + "I", _UNDEFINED)
    for item in elem.value:
        if 0x00080005 in item._dict:
            raise _Unsimple
        out += struct.pack(p + "HHI", 0xFFFE, 0xE000, _UNDEFINED)
        for key in sorted(item._dict, key=int):
            child = item._dict[key]
            if child.is_raw:
                value, vr = child.value, child.VR
                if value is None and child.length:
                    raise _Unsimple
                value = value or b""
                if implicit:
                    out += struct.pack(p + "HHI", key >> 16, key & 0xFFFF, len(value))
                elif vr is None or child.length == _UNDEFINED:
                    raise _Unsimple
                elif vr.encode() in _LONG_VRS:
                    out += struct.pack(p + "HH2s2xI", key >> 16, key & 0xFFFF, vr.encode(), len(value))
                elif len(value) <= 0xFFFF:
                    out += struct.pack(p + "HH2sH", key >> 16, key & 0xFFFF, vr.encode(), len(value))
                else:
                    raise _Unsimple
                out += value
            elif child.VR == "SQ":
                _encode_sequence(out, child, implicit, little, encodings)
            elif (simple := _text_element_bytes(child, implicit, little)) is not None:
                out += simple
            elif " or " in (child.VR or " or "):
                raise _Unsimple
            else:
                encoded = _encoder(implicit, little)
                write_data_element(encoded, child, encodings)
                out += encoded.getvalue()
        out += struct.pack(p + "HHI", 0xFFFE, 0xE00D, 0)
    out += struct.pack(p + "HHI", 0xFFFE, 0xE0DD, 0)


def _encoder(implicit: bool, little: bool) -> DicomBytesIO:
    out = DicomBytesIO()
    out.is_implicit_VR, out.is_little_endian = implicit, little
    return out


def _uid_of(ds: Dataset, tag: int) -> str:
    elem = ds.get_item(tag)  # raw as read, or as de-identification set it: not decoded for this
    value = elem.value
    if isinstance(value, bytes):
        return value.decode("ascii", "replace").strip("\0 ")
    return str(value)


def _encoding_of(syntax: UID | None) -> tuple[bool, bool] | None:
    if syntax is None or not syntax.is_transfer_syntax:
        return None
    return syntax.is_implicit_VR, syntax.is_little_endian


def _header_length(elem, implicit: bool) -> int:
    if implicit:
        return 8
    return 12 if elem.VR in EXPLICIT_VR_LENGTH_32 else 8


def _explicit_start(source: BinaryIO, elem, tag: int, little: bool) -> int | None:
    expected = struct.pack("<HH" if little else ">HH", tag >> 16, tag & 0xFFFF)
    for header in (8, 12):
        start = elem.file_tell - header
        if start >= 0:
            source.seek(start)
            if source.read(4) == expected:
                return start
    return None


def _start_of(elem, implicit: bool) -> int | None:
    tell = elem.value_tell if isinstance(elem, RawDataElement) else getattr(elem, "file_tell", None)
    return None if tell is None else tell - _header_length(elem, implicit)


class _WithPreamble(io.RawIOBase):
    """A seekable source read as if a zero preamble and "DICM" stood before its first byte."""

    def __init__(self, source: BinaryIO):
        self._source, self._position = source, 0
        self._size = source.seek(0, io.SEEK_END) + len(_PREFIX)

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._position, io.SEEK_END: self._size}[whence]
        self._position = max(0, base + offset)
        return self._position

    def readinto(self, buffer) -> int:
        view, done = memoryview(buffer).cast("B"), 0
        if self._position < len(_PREFIX):
            head = _PREFIX[self._position:self._position + len(view)]
            view[:len(head)] = head
            done = len(head)
        if done < len(view):
            self._source.seek(self._position + done - len(_PREFIX))
            while done < len(view) and (data := self._source.read(len(view) - done)):
                view[done:done + len(data)] = data
                done += len(data)
        self._position += done
        return done


_PREFIX = b"\0" * 128 + b"DICM"


def with_preamble(source: BinaryIO) -> BinaryIO:
    """The source as a Part 10 file: as it is when it has the preamble and "DICM" prefix (PS3.10
    7.1), or read through a zero preamble when it starts straight with its File Meta Information.

    pydicom writes a dataset built in memory that way (no ``preamble`` set: dcmwrite leaves both
    out), and dicomweb-client's store_instances sends what dcmwrite wrote. The File Meta Information
    is always explicit VR little endian, so its first element's group (0002) and two-letter VR tell
    such a stream from anything else; a stream without File Meta Information has no transfer
    syntax to read it by and stays refused. (The wrapper is not put in an io.BufferedReader:
    pydicom takes one for a file on disk and asks for its name.)
    """
    source.seek(0)
    head = source.read(len(_PREFIX))
    source.seek(0)
    if head[128:132] == b"DICM" or len(head) < 8:
        return source
    if head[:2] == b"\x02\x00" and head[4:6].isalpha() and head[4:6].isupper():
        return _WithPreamble(source)
    return source


def read(source: BinaryIO, *, size: int | None = None) -> Part10:
    """Parse a Part 10 file from a seekable binary source, leaving its pixel data where it is.

    Raises what pydicom raises for an unreadable file, and Part10Error for pixel data whose
    declared lengths do not fit the file.
    """
    if size is None:
        size = source.seek(0, io.SEEK_END)
    source.seek(0)
    ds = pydicom.dcmread(source, stop_before_pixels=True, defer_size=DEFER_BYTES)
    position = source.tell()
    encoding = _encoding_of(ds.file_meta.get("TransferSyntaxUID"))
    if (encoding is None or ds.file_meta.get("TransferSyntaxUID") == DeflatedExplicitVRLittleEndian
            or tuple(ds.original_encoding) != encoding):
        source.seek(0)
        whole = pydicom.dcmread(source)
        return Part10(source, whole, size=size, pixels=None, starts=None, dataset_end=size)
    implicit, little = encoding
    starts = {}
    for tag, elem in ds._dict.items():
        start = _start_of(elem, implicit)
        if start is not None and not implicit and not isinstance(elem, RawDataElement):
            # Decoded while read (Specific Character Set, sequences): its VR may not be the one in
            # the file (UN there), so its header's length is found from where its tag lies.
            start = _explicit_start(source, elem, tag, little)
        if start is not None:
            starts[tag] = start
    pixels, elements = _locate_pixels(source, position, size, implicit, little) if position + 8 <= size else (None, [])
    for elem in elements:
        # Deferred (value None): reading one through the dataset loads it whole; its length and
        # position are all that validation needs of native pixel data.
        ds._dict[elem.tag] = elem
    dataset_end = position
    if pixels is not None:
        dataset_end = pixels.end
        if pixels.end + 8 <= size:
            # Elements after the pixel data (a trailing padding, a digital signature): parsed and
            # de-identified like the rest.
            source.seek(pixels.end)
            trailing = read_dataset(source, implicit, little, defer_size=DEFER_BYTES,
                                    parent_encoding=ds._character_set)
            for tag, elem in trailing._dict.items():
                if tag in PIXEL_TAGS or tag <= pixels.tag:
                    raise Part10Error("elements after the pixel data are out of order")
                ds._dict[tag] = elem
                start = _start_of(elem, implicit)
                if start is not None:
                    starts[tag] = start
            dataset_end = source.tell()
    head = (0, b"")
    first = min(starts.values(), default=position)
    if position - first <= HEAD_IN_MEMORY:
        source.seek(first)
        head = (first, source.read(position - first))
    return Part10(source, ds, size=size, pixels=pixels, starts=starts, dataset_end=dataset_end, head=head)


def _locate_pixels(source: BinaryIO, position: int, size: int, implicit: bool,
                   little: bool) -> tuple[PixelSpan | None, list[RawDataElement]]:
    """The pixel data elements at position: their span, and each as a deferred (unread) element."""
    u16, u32 = ("<H", "<I") if little else (">H", ">I")
    start, last, elements = position, None, []
    while position + 8 <= size:
        source.seek(position)
        head = source.read(8)
        tag = struct.unpack(u16, head[:2])[0] << 16 | struct.unpack(u16, head[2:4])[0]
        if tag not in PIXEL_TAGS:
            break
        if implicit:
            length, value_start = struct.unpack(u32, head[4:8])[0], position + 8
        elif head[4:6] in _LONG_VRS:
            extra = source.read(4)
            if len(extra) < 4:
                raise Part10Error("the pixel data element's header is cut off")
            length, value_start = struct.unpack(u32, extra)[0], position + 12
        else:
            length, value_start = struct.unpack(u16, head[6:8])[0], position + 8
        vr = None if implicit else head[4:6].decode("ascii", "replace")
        elements.append(RawDataElement(Tag(tag), vr, length, None, value_start, implicit, little))
        if length == _UNDEFINED:
            value_length, end, fragments = _walk_items(source, value_start, size, u16, u32)
        else:
            end, value_length, fragments = value_start + length, length, 0
            if end > size:
                raise Part10Error(f"truncated pixel data: {max(size - value_start, 0)} bytes of the "
                                  f"{length} declared")
        last = PixelSpan(start=start, end=end, tag=tag, start_tag=elements[0].tag, value_start=value_start,
                         value_length=value_length,
                         encapsulated=length == _UNDEFINED, fragments=fragments)
        position = end
    return last, elements


def _walk_items(source: BinaryIO, position: int, size: int, u16: str, u32: str) -> tuple[int, int, int]:
    """(value length, end after the delimiter, items) of an encapsulated value starting at position."""
    value_start, fragments = position, 0
    while True:
        if position + 8 > size:
            raise Part10Error("truncated pixel data: the encapsulated value has no sequence delimiter")
        source.seek(position)
        head = source.read(8)
        tag = struct.unpack(u16, head[:2])[0] << 16 | struct.unpack(u16, head[2:4])[0]
        length = struct.unpack(u32, head[4:8])[0]
        if tag == _SEQUENCE_DELIMITER:
            return position - value_start, position + 8, fragments
        if tag != _ITEM or length == _UNDEFINED:
            raise Part10Error("encapsulated pixel data holds something other than items")
        position += 8 + length
        if position > size:
            raise Part10Error(f"truncated pixel data: item {fragments + 1} declares {length} bytes the file lacks")
        fragments += 1
