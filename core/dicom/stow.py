"""STOW-RS request bodies (PS3.18 10.5): a streaming multipart/related parser into encrypted spools.

The body is read from the socket in chunks and each application/dicom part is written through
AES-GCM into its own spool as it arrives; python-multipart does the boundary scanning.
"""

from dataclasses import dataclass, field

from django.utils.http import parse_header_parameters
from python_multipart.multipart import MultipartParser

from core.dicom.crypto import EncryptedSpool

READ_CHUNK = 256 * 1024


class StowError(ValueError):
    pass


@dataclass
class StowPart:
    content_type: str
    spool: EncryptedSpool | None
    size: int = 0
    reason: str = ""


@dataclass
class _State:
    parts: list[StowPart] = field(default_factory=list)
    header_field: bytearray = field(default_factory=bytearray)
    header_value: bytearray = field(default_factory=bytearray)
    headers: dict = field(default_factory=dict)
    current: StowPart | None = None


def boundary_of(content_type_header: str) -> bytes:
    """The boundary of a multipart/related; type="application/dicom" body, or StowError saying why not."""
    media, params = parse_header_parameters(content_type_header or "")
    if media.lower() != "multipart/related":
        raise StowError(f"STOW-RS takes multipart/related; got {media or 'no Content-Type'}")
    kind = params.get("type", "application/dicom").lower()
    if kind != "application/dicom":
        raise StowError(f'only type="application/dicom" is supported, not {kind!r}')
    if not params.get("boundary"):
        raise StowError("the Content-Type has no boundary parameter")
    return params["boundary"].encode("latin-1")


def parse_stow_body(stream, content_type_header: str, *, max_part_bytes: int) -> list[StowPart]:
    """Split the body into parts, each spooled encrypted; oversize parts come back refused."""
    boundary = boundary_of(content_type_header)
    state = _State()

    def on_part_begin():
        state.headers = {}
        state.current = StowPart(content_type="", spool=EncryptedSpool())

    def on_header_field(data, start, end):
        state.header_field += data[start:end]

    def on_header_value(data, start, end):
        state.header_value += data[start:end]

    def on_header_end():
        state.headers[bytes(state.header_field).decode("latin-1").lower()] = bytes(state.header_value).decode("latin-1")
        state.header_field.clear()
        state.header_value.clear()

    def on_headers_finished():
        media, _ = parse_header_parameters(state.headers.get("content-type", "application/dicom"))
        state.current.content_type = media.lower()

    def on_part_data(data, start, end):
        part = state.current
        part.size += end - start
        if part.spool is None:
            return
        if part.size > max_part_bytes:
            part.spool.close()
            part.spool, part.reason = None, f"part of more than {max_part_bytes} bytes exceeds the limit"
            return
        part.spool.write(data[start:end])

    def on_part_end():
        part = state.current
        if part.spool is not None:
            if part.content_type != "application/dicom":
                part.spool.close()
                part.spool, part.reason = None, f"unsupported part type {part.content_type!r} (send application/dicom)"
            else:
                part.spool.finish()
        state.parts.append(part)
        state.current = None

    parser = MultipartParser(boundary, {
        "on_part_begin": on_part_begin, "on_header_field": on_header_field, "on_header_value": on_header_value,
        "on_header_end": on_header_end, "on_headers_finished": on_headers_finished, "on_part_data": on_part_data,
        "on_part_end": on_part_end,
    })
    try:
        while chunk := stream.read(READ_CHUNK):
            parser.write(chunk)
        parser.finalize()
    except Exception as exc:  # python-multipart raises its own error types for malformed bodies
        for part in state.parts:
            if part.spool is not None:
                part.spool.close()
        raise StowError(f"malformed multipart body: {exc}") from None
    if not state.parts:
        raise StowError("the multipart body holds no parts")
    return state.parts
