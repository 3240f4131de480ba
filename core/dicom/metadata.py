"""WADO-RS metadata and frames served from what ingest recorded, not from the stored objects.

Building a series' metadata by decrypting and parsing every instance costs about 4.5 ms an
instance (pydicom's parse and its DICOM JSON conversion), 1.4 s for a 300-slice CT, on every
request. Ingest now records, per instance, in ``InstanceMetadata`` (a side table keyed by the
instance):

- ``json_encrypted``: the instance's DICOM JSON as WADO-RS serves it, encrypted like the stored
  objects (RQE1, core.dicom.crypto, bound to the instance's object name): de-identified text is
  still treated as sensitive. It is built by the very function the parse path uses
  (``template_of``) from the very bytes that are stored, so the two cannot differ. URLs are not in
  it: each BulkDataURI holds a mark (a NUL, which JSON always escapes as ``\\u0000``) where the
  instance's URL goes, filled per request from the public base URL by a byte replace.
- ``frame_layout``: where each frame's bytes lie in the stored object (positions only, no values),
  so a frame is one ranged read of the object: no header parse per request.

Why a side table, not a column on Instance: every DICOMweb and index query loads Instance rows,
and a few kilobytes of ciphertext per row would travel with each of them; here a series' metadata
is one query joining the rows it needs, and nothing else pays for it.

An instance without a row (ingested before this, or stored by another path) is served by the
parse path and its row written then (``backfill``; ``manage.py backfill_dicom_metadata`` does it
for everything at once). A row whose ciphertext no key of the ring opens is rebuilt the same way.
"""

import io
import json
import struct
from dataclasses import dataclass

import pydicom
from django.db.models import QuerySet

from core.dicom import part10
from core.dicom.crypto import DecryptionError, KeyRing, decrypt_bytes, encrypt_bytes, read_header
from core.dicom.models import Instance, InstanceMetadata
from core.dicom.storage import get_store

BULK_DATA_THRESHOLD = 4096
URL_MARK = "\x00"
_MARKED = b'"BulkDataURI":"\\u0000'
_PIXEL_TAG_BYTES = frozenset(struct.pack("<HH", tag >> 16, tag & 0xFFFF) for tag in part10.PIXEL_TAGS)
# What ingest keeps of the de-identified file as it is written, to parse its header: the source's
# header length and this much more (de-identification adds a few elements), or a file without
# pixel data up to this size whole.
HEAD_MARGIN = 64 * 1024
NO_PIXELS_CAP = 8 * 1024 * 1024
_ITEM, _SEQUENCE_DELIMITER = 0xFFFEE000, 0xFFFEE0DD


def context_of(storage_name: str) -> bytes:
    """AES-GCM associated data binding an instance's encrypted metadata to its object."""
    return f"instance-metadata:{storage_name}".encode()


def template_of(ds: pydicom.Dataset, *, rows: int | None, frames: int, transfer_syntax_uid: str) -> bytes:
    """The DICOM JSON of a dataset read up to its pixel data, with URL_MARK where the instance's
    URL goes: what WADO-RS metadata answers for it (bulk values over the threshold and the pixel
    data by BulkDataURI; the available transfer syntax, the stored one)."""

    def bulk(elem) -> str:
        return f"{URL_MARK}/bulk/{elem.tag:08X}"

    data = ds.to_json_dict(bulk_data_threshold=BULK_DATA_THRESHOLD, bulk_data_element_handler=bulk)
    if rows:
        numbers = ",".join(str(i + 1) for i in range(frames))
        data["7FE00010"] = {"vr": "OW", "BulkDataURI": f"{URL_MARK}/frames/{numbers}"}
    data["00083002"] = {"vr": "UI", "Value": [transfer_syntax_uid]} if transfer_syntax_uid else {"vr": "UI"}
    return json.dumps(data, separators=(",", ":")).encode()


def filled(template: bytes, url: str) -> bytes:
    """A template with the instance's URL in each BulkDataURI. Only our marks match: a quote inside
    a JSON string is escaped, so ``"BulkDataURI":"`` occurs only as the key and start of a value."""
    return template.replace(_MARKED, b'"BulkDataURI":"' + json.dumps(url)[1:-1].encode())


# --- frame layout ----------------------------------------------------------------------------

def _items(source, value_start: int, value_length: int) -> list[tuple[int, int, int]]:
    """(tag position, value position, length) of each item of an encapsulated value, headers only."""
    out, position, end = [], value_start, value_start + value_length
    while position + 8 <= end:
        source.seek(position)
        group, element, length = struct.unpack("<HHI", source.read(8))
        tag = group << 16 | element
        if tag == _SEQUENCE_DELIMITER or tag != _ITEM:
            break
        out.append((position, position + 8, length))
        position += 8 + length
    return out


def layout_of(ds: pydicom.Dataset, source, pixels: part10.PixelSpan | None, shift: int) -> dict | None:
    """Where each frame lies in the stored object, from the pixel data's span in ``source`` (which
    lies ``shift`` bytes earlier there than in the stored object), by the rules the request path
    applied (dicomweb.stored_frames and encoded_frames, pydicom's get_frame): ``{"native": [start,
    size, count]}`` or ``{"fragments": [[[position, length], ...] for each frame]}``; None where
    those rules leave it to the parse path (no pixel data, frames that cannot be told apart
    undecoded, a layout this does not know)."""
    if pixels is None or pixels.tag != part10.PIXEL_DATA or "Rows" not in ds:
        return None
    count = int(ds.get("NumberOfFrames", 1) or 1)
    syntax = ds.file_meta.get("TransferSyntaxUID")
    if not pixels.encapsulated:
        if syntax is None or syntax.is_compressed or not syntax.is_little_endian:
            return None
        bits = int(ds.Rows) * int(ds.Columns) * int(ds.get("SamplesPerPixel", 1) or 1) * int(ds.BitsAllocated)
        size = bits // 8
        if bits % 8 or count * size > pixels.value_length:
            return None
        return {"native": [pixels.value_start + shift, size, count]}
    items = _items(source, pixels.value_start, pixels.value_length)
    if not items:
        return None
    table, fragments = items[0], items[1:]
    base = table[0] + 8 + table[2]  # the first fragment's item tag: where offsets count from
    if "ExtendedOffsetTable" in ds and "ExtendedOffsetTableLengths" in ds:
        offsets = struct.unpack(f"<{len(ds.ExtendedOffsetTable) // 8}Q", ds.ExtendedOffsetTable)
        lengths = struct.unpack(f"<{len(ds.ExtendedOffsetTableLengths) // 8}Q", ds.ExtendedOffsetTableLengths)
        frames = [[[base + offset + 8, length]] for offset, length in zip(offsets, lengths, strict=False)]
    elif table[2]:
        source.seek(table[1])
        offsets = struct.unpack(f"<{table[2] // 4}I", source.read(table[2] // 4 * 4))
        bounds = [base + o for o in offsets] + [pixels.value_start + pixels.value_length + 1]
        frames = [[[v, n] for tag, v, n in fragments if bounds[i] <= tag < bounds[i + 1]]
                  for i in range(len(offsets))]
    elif fragments and len(fragments) in (1, count):
        frames = [[[v, n]] for _, v, n in fragments]  # a fragment a frame
    elif fragments and count == 1:
        frames = [[[v, n] for _, v, n in fragments]]  # one frame in several fragments
    else:
        return None  # several fragments a frame, no table: get_frame guesses by JPEG markers
    if len(frames) < count:
        return None
    return {"fragments": [[[v + shift, n] for v, n in frame] for frame in frames[:count]]}


NOT_LOOKED_UP = object()


def frames_by_layout(instance: Instance, numbers: list[int], *, encapsulated: bool) -> list[bytes] | None:
    """The frames' bytes by the recorded layout, one ranged read of the object each (only their
    chunks decrypted); None when no layout of that kind is recorded (the caller parses)."""
    # A lookup may have brought the layout along already (tasks.dicomweb_scopes joins it in).
    layout = getattr(instance, "recorded_frame_layout", NOT_LOOKED_UP)
    if layout is NOT_LOOKED_UP:
        layout = (InstanceMetadata.objects.filter(instance_id=instance.pk)
                  .values_list("frame_layout", flat=True).first())
    elif isinstance(layout, str):
        layout = json.loads(layout)
    key = "fragments" if encapsulated else "native"
    if not layout or key not in layout:
        return None
    with get_store().open(instance.storage_name) as reader:
        if not encapsulated:
            start, size, count = layout["native"]
            if any(n > count for n in numbers):
                return None
            out = []
            for n in numbers:
                reader.seek(start + (n - 1) * size)
                out.append(reader.read(size))
            return out
        frames = layout["fragments"]
        if any(n > len(frames) for n in numbers):
            return None
        out = []
        for n in numbers:
            parts = []
            for position, length in frames[n - 1]:
                reader.seek(position)
                parts.append(reader.read(length))
            out.append(b"".join(parts))
        return out


# --- at ingest -------------------------------------------------------------------------------

class HeadCapture:
    """A writer that passes everything on and keeps the first ``limit`` bytes written: the header of
    the de-identified file as it is stored, to parse for its metadata without reading it back."""

    def __init__(self, dst, limit: int):
        self.dst, self.limit = dst, limit
        self.head = bytearray()
        self.written = 0

    def write(self, data) -> int:
        if len(self.head) < self.limit:
            self.head += memoryview(data)[:self.limit - len(self.head)]
        self.written += len(data)
        return self.dst.write(data)


def head_limit(pixels: part10.PixelSpan | None) -> int:
    return NO_PIXELS_CAP if pixels is None else pixels.start + HEAD_MARGIN


@dataclass
class Recorded:
    """What ingest keeps of an instance for serving: its metadata encrypted, its frames' layout."""

    json_encrypted: bytes
    frame_layout: dict | None


def record_at_ingest(capture: HeadCapture, part: part10.Part10, *, rows: int | None, frames: int,
                     transfer_syntax_uid: str, storage_name: str, ring: KeyRing) -> Recorded | None:
    """The metadata and layout of the file just written through ``capture`` (from ``part``, the
    source it was copied from); None when its header did not fit in what was kept (served by the
    parse path, which then records it)."""
    head = bytes(capture.head)
    complete = capture.written == len(head)
    source = io.BytesIO(head)
    ds = pydicom.dcmread(source, stop_before_pixels=True)
    position = source.tell()
    if not complete and head[position:position + 4] not in _PIXEL_TAG_BYTES:
        return None
    layout = None
    if part.streamed and part.pixels is not None:
        # The pixel data is copied into the stored file as read (core.dicom.part10), so its items
        # lie where they lie in the source, moved by where the stored header ends.
        layout = layout_of(ds, part.source, part.pixels, position - part.pixels.start)
    template = template_of(ds, rows=rows, frames=frames, transfer_syntax_uid=transfer_syntax_uid)
    return Recorded(encrypt_bytes(template, ring, context=context_of(storage_name)), layout)


def rows_for(indexed: list[tuple[Instance, Recorded | None]]) -> list[InstanceMetadata]:
    return [InstanceMetadata(instance=instance, json_encrypted=recorded.json_encrypted,
                             frame_layout=recorded.frame_layout)
            for instance, recorded in indexed if recorded is not None]


# --- from the stored object ------------------------------------------------------------------

def record_from_store(instance: Instance) -> tuple[bytes, InstanceMetadata]:
    """An instance's template and its row, parsed from its stored object (the parse path)."""
    store = get_store()
    with store.open(instance.storage_name) as reader:
        ds = pydicom.dcmread(reader, stop_before_pixels=True)
        template = template_of(ds, rows=instance.rows, frames=instance.frames,
                               transfer_syntax_uid=instance.transfer_syntax_uid)
        layout = None
        if instance.rows:
            part = part10.read(reader)
            if part.streamed:
                layout = layout_of(part.ds, reader, part.pixels, 0)
    row = InstanceMetadata(instance=instance, json_encrypted=encrypt_bytes(
        template, store.ring, context=context_of(instance.storage_name)), frame_layout=layout)
    return template, row


def backfill(instances: QuerySet[Instance], *, batch: int = 200) -> int:
    """Record the instances that have no metadata row yet; returns how many were recorded."""
    done = 0
    pending = instances.filter(served_metadata__isnull=True).order_by("pk")
    while chunk := list(pending[:batch]):
        InstanceMetadata.objects.bulk_create([record_from_store(i)[1] for i in chunk], ignore_conflicts=True)
        done += len(chunk)
    return done


def rotate(ring: KeyRing) -> int:
    """Re-encrypt the metadata rows not under the ring's current key; returns how many changed."""
    changed = 0
    for row in InstanceMetadata.objects.select_related("instance").iterator(chunk_size=1000):
        blob = bytes(row.json_encrypted)
        if read_header(io.BytesIO(blob)).key_id == ring.current_id:
            continue
        context = context_of(row.instance.storage_name)
        InstanceMetadata.objects.filter(pk=row.pk).update(
            json_encrypted=encrypt_bytes(decrypt_bytes(blob, ring, context=context), ring, context=context))
        changed += 1
    return changed


# --- serving ---------------------------------------------------------------------------------

def metadata_body(instances: QuerySet[Instance], base: str) -> bytes:
    """The DICOM JSON array WADO-RS metadata answers for ``instances`` (by instance number), in one
    query; instances without a usable row are parsed from the store and recorded then."""
    rows = (instances.order_by("instance_number", "id")
            .values_list("pk", "storage_name", "sop_instance_uid", "series__series_uid", "series__study__study_uid",
                         "served_metadata__json_encrypted"))
    ring = get_store().ring
    parts, missing, broken = [], [], []
    for pk, storage_name, sop_uid, series_uid, study_uid, blob in rows:
        url = f"{base}/studies/{study_uid}/series/{series_uid}/instances/{sop_uid}"
        template = None
        if blob is not None:
            try:
                template = decrypt_bytes(bytes(blob), ring, context=context_of(storage_name))
            except DecryptionError:
                broken.append(pk)  # under a key the ring no longer holds: built again below
        parts.append(template)
        if template is None:
            missing.append((len(parts) - 1, pk, url))
        else:
            parts[-1] = filled(template, url)
    if missing:
        by_pk = {i.pk: i for i in Instance.objects.filter(pk__in=[pk for _, pk, _ in missing])}
        recorded = []
        for index, pk, url in missing:
            template, row = record_from_store(by_pk[pk])
            parts[index] = filled(template, url)
            recorded.append(row)
        InstanceMetadata.objects.filter(pk__in=broken).delete()
        InstanceMetadata.objects.bulk_create(recorded, ignore_conflicts=True)
    return b"[" + b",".join(parts) + b"]"
