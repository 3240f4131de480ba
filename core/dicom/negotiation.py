"""What a DICOMweb request's Accept header admits (PS3.18 8.7), and in which media type and transfer
syntax an answer is sent. Pure Python: no Django, no pydicom.

An Accept header lists media types, each with optional parameters, q-values among them
(RFC 9110 12.5.1; PS3.18 8.7.5). For ``multipart/related`` the parts' media type is its ``type``
parameter and their transfer syntax its ``transfer-syntax`` parameter (PS3.18 8.7.3.5.2); a bare
media type is read as the same part type (radqueue always answers multipart). ``*`` as the transfer
syntax admits any, the stored one included.

| stored pixel data | Accept (part type; transfer-syntax)      | answered as                              |
| ----------------- | ---------------------------------------- | ---------------------------------------- |
| uncompressed      | octet-stream or */*; absent, * or 1.2.1  | octet-stream; 1.2.840.10008.1.2.1        |
| compressed        | octet-stream or */*; * or the stored UID | octet-stream; the stored UID, as stored  |
| compressed        | its media type (image/jp2 ...); absent, * or the stored UID | that type; the stored UID |
| compressed        | octet-stream; absent or 1.2.1            | octet-stream; 1.2.840.10008.1.2.1, decoded |

Without a ``transfer-syntax=`` on a part, OHIF's image loader assumes Implicit VR Little Endian, so
every frame part names its syntax.
"""

from dataclasses import dataclass

EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"
IMPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2"
OCTET_STREAM = "application/octet-stream"
ANY = "*/*"

# PS3.18 Table 8.7.3-5: the media types of compressed pixel data, by transfer syntax (the first is
# the one a part is labelled with when the request named none).
COMPRESSED_MEDIA: dict[str, tuple[str, ...]] = {
    "1.2.840.10008.1.2.5": ("image/dicom-rle", "image/x-dicom-rle"),
    "1.2.840.10008.1.2.4.50": ("image/jpeg",),
    "1.2.840.10008.1.2.4.51": ("image/jpeg",),
    "1.2.840.10008.1.2.4.57": ("image/jpeg",),
    "1.2.840.10008.1.2.4.70": ("image/jpeg",),
    "1.2.840.10008.1.2.4.80": ("image/jls", "image/x-jls"),
    "1.2.840.10008.1.2.4.81": ("image/jls", "image/x-jls"),
    "1.2.840.10008.1.2.4.90": ("image/jp2",),
    "1.2.840.10008.1.2.4.91": ("image/jp2",),
    "1.2.840.10008.1.2.4.92": ("image/jpx",),
    "1.2.840.10008.1.2.4.93": ("image/jpx",),
    "1.2.840.10008.1.2.4.201": ("image/jphc",),
    "1.2.840.10008.1.2.4.202": ("image/jphc",),
    "1.2.840.10008.1.2.4.203": ("image/jphc",),
}


@dataclass(frozen=True)
class Choice:
    """One media range of an Accept header, as the part it asks for."""

    media: str  # the part's media type, lower case: "application/octet-stream", "image/jp2", "*/*"
    transfer_syntax: str | None  # None: not named; "*": any
    q: float


def _split(header: str) -> list[str]:
    """The header's comma-separated elements; a comma inside a quoted string belongs to it."""
    items, current, quoted = [], [], False
    for char in header:
        if char == '"':
            quoted = not quoted
        if char == "," and not quoted:
            items.append("".join(current))
            current = []
        else:
            current.append(char)
    items.append("".join(current))
    return [item.strip() for item in items if item.strip()]


def _parameters(element: str) -> tuple[str, dict[str, str]]:
    media, *rest = element.split(";")
    params = {}
    for item in rest:
        name, _, value = item.partition("=")
        params[name.strip().lower()] = value.strip().strip('"').strip()
    return media.strip().lower(), params


def choices(header: str | None, default: str) -> list[Choice]:
    """The parts an Accept header admits, best first (by q, then as listed; q=0 and malformed
    q-values dropped). An absent or empty header admits ``default`` in its default syntax."""
    if not (header or "").strip():
        return [Choice(default, None, 1.0)]
    found = []
    for position, element in enumerate(_split(header)):
        media, params = _parameters(element)
        try:
            q = float(params.get("q", "1"))
        except ValueError:
            continue
        if not 0 < q <= 1:
            continue
        if media == "multipart/related":
            media = params.get("type", default).lower() or default
        elif media == "multipart/*":
            media = ANY
        syntax = params.get("transfer-syntax") or None
        found.append((-q, position, Choice(media, syntax, q)))
    return [choice for *_, choice in sorted(found)]


def _admits(choice: Choice, media: str) -> bool:
    if choice.media in (ANY, media):
        return True
    kind, _, sub = choice.media.partition("/")
    return sub == "*" and media.startswith(kind + "/")


def frame_encoding(header: str | None, stored_syntax: str) -> tuple[str, str] | None:
    """(part media type, transfer syntax) to send a frame of pixel data stored in ``stored_syntax``
    in: the stored bytes as they are when the choice admits them, else decoded to explicit VR little
    endian; None when the header admits neither (a 406)."""
    stored_media = COMPRESSED_MEDIA.get(stored_syntax)
    for choice in choices(header, OCTET_STREAM):
        syntax = choice.transfer_syntax
        if stored_media:
            compressed_ok = syntax in ("*", stored_syntax) or (syntax is None and choice.media != OCTET_STREAM
                                                               and choice.media != ANY)
            for media in (OCTET_STREAM, *stored_media):
                if compressed_ok and _admits(choice, media):
                    named = choice.media if choice.media in stored_media else media
                    return named, stored_syntax
        if _admits(choice, OCTET_STREAM) and syntax in (None, "*", EXPLICIT_VR_LITTLE_ENDIAN):
            return OCTET_STREAM, EXPLICIT_VR_LITTLE_ENDIAN
        if _admits(choice, OCTET_STREAM) and syntax == IMPLICIT_VR_LITTLE_ENDIAN:
            return OCTET_STREAM, IMPLICIT_VR_LITTLE_ENDIAN  # the same pixel bytes (PS3.5 A.1, A.2)
    return None


def instance_encoding(header: str | None, stored_syntax: str) -> str | None:
    """The transfer syntax to send a whole instance (application/dicom) in: as stored, when the
    header admits application/dicom with no syntax named (radqueue does not transcode objects), ``*``
    or the stored one; None (a 406) otherwise."""
    for choice in choices(header, "application/dicom"):
        if _admits(choice, "application/dicom") and choice.transfer_syntax in (None, "*", stored_syntax):
            return stored_syntax
    return None


def admits(header: str | None, media: str) -> bool:
    """Whether the header admits ``media`` at all (as a part type or bare), in any syntax."""
    return any(_admits(choice, media) for choice in choices(header, media))
