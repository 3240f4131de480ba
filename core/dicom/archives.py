"""Zip archives of studies, opened defensively: path traversal, zip bombs, oversize members.

Members are streamed out of the archive into encrypted spools (core.dicom.crypto.EncryptedSpool),
counting the bytes actually inflated, so neither a lying header nor a huge member can exhaust
memory or put plaintext on disk.
"""

import posixpath
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass

from django.conf import settings

from core.dicom.crypto import EncryptedSpool

COPY_CHUNK = 1024 * 1024


@dataclass
class ZipLimits:
    max_member_bytes: int
    max_total_bytes: int
    max_ratio: float
    max_members: int

    @classmethod
    def from_settings(cls) -> "ZipLimits":
        return cls(
            max_member_bytes=settings.RADQUEUE_MAX_FILE_BYTES,
            max_total_bytes=settings.RADQUEUE_MAX_ZIP_TOTAL_BYTES,
            max_ratio=settings.RADQUEUE_MAX_ZIP_RATIO,
            max_members=settings.RADQUEUE_MAX_ZIP_MEMBERS,
        )


@dataclass
class ZipMember:
    name: str
    spool: EncryptedSpool | None = None
    reason: str = ""


def _unsafe_name(name: str) -> str:
    if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        return "absolute path in archive"
    parts = posixpath.normpath(name.replace("\\", "/")).split("/")
    if ".." in parts:
        return "path traversal ('..') in archive member name"
    return ""


# What reading one member may raise: zipfile's own, zlib's (deflate), lzma's and bz2's (OSError,
# EOFError), an unsupported compression method (NotImplementedError).
MEMBER_ERRORS = (zipfile.BadZipFile, zlib.error, OSError, EOFError, NotImplementedError, ValueError)


class _DamagedMember(Exception):
    pass


def _inflate(archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> Iterator[bytes]:
    """The member's bytes chunk by chunk, or _DamagedMember: one damaged member (a bad CRC, a broken
    deflate stream, a cut-off local header) fails alone, as the central directory still locates
    the members after it. Errors writing the spool are not the archive's and pass through."""
    try:
        with archive.open(info) as member:
            while chunk := member.read(COPY_CHUNK):
                yield chunk
    except MEMBER_ERRORS as exc:
        raise _DamagedMember(_member_error(exc)) from None


def _member_error(exc: Exception) -> str:
    """The reason for a member that did not read, without zipfile's message: it quotes the member's
    name, which the report already carries and which may name the patient."""
    if isinstance(exc, zipfile.BadZipFile) and "CRC" in str(exc):
        return "corrupt archive member: its CRC-32 check failed"
    if isinstance(exc, NotImplementedError):
        return "archive member compressed with a method radqueue cannot read"
    return f"corrupt archive member ({type(exc).__name__})"


def iter_zip_members(reader, limits: ZipLimits | None = None) -> Iterator[ZipMember]:
    """Each file of the archive as a spool, or with a reason it was refused. Raises zipfile.BadZipFile."""
    limits = limits or ZipLimits.from_settings()
    archive = zipfile.ZipFile(reader)
    infos = [i for i in archive.infolist() if not i.is_dir()]
    if len(infos) > limits.max_members:
        raise zipfile.BadZipFile(f"archive has {len(infos)} files; the limit is {limits.max_members}")
    inflated_total = 0
    for info in infos:
        name = info.filename
        if reason := _unsafe_name(name):
            yield ZipMember(name, reason=reason)
            continue
        if info.flag_bits & 0x1:
            yield ZipMember(name, reason="encrypted archive member")
            continue
        if info.file_size > limits.max_member_bytes:
            yield ZipMember(name, reason=f"member of {info.file_size} bytes exceeds the "
                                         f"{limits.max_member_bytes} byte limit")
            continue
        if info.compress_size and info.file_size / info.compress_size > limits.max_ratio:
            yield ZipMember(name, reason=f"compression ratio {info.file_size / info.compress_size:.0f}:1 exceeds "
                                         f"{limits.max_ratio:.0f}:1 (zip bomb?)")
            continue
        if inflated_total + info.file_size > limits.max_total_bytes:
            yield ZipMember(name, reason=f"archive inflates beyond the {limits.max_total_bytes} byte limit")
            continue
        spool = EncryptedSpool()
        written, refused = 0, ""
        try:
            # The header's sizes may lie; count what actually inflates.
            for chunk in _inflate(archive, info):
                written += len(chunk)
                if written > max(info.file_size, 0) or written > limits.max_member_bytes:
                    refused = "member inflates beyond its declared size (zip bomb?)"
                    break
                spool.write(chunk)
        except _DamagedMember as exc:
            refused = str(exc)
        if refused:
            spool.close()
            yield ZipMember(name, reason=refused)
            continue
        inflated_total += written
        spool.finish()
        yield ZipMember(name, spool=spool)
