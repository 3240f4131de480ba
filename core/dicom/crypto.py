"""AES-256-GCM encryption of stored objects in a chunked format that streams and supports random access.

An RQE1 object is a header followed by chunks::

    header = b"RQE1" | u8 key-id length | key id (ASCII) | 16-byte random file salt | u32 chunk size (big-endian)
    chunk  = AES-GCM(chunk-size plaintext bytes, the last one shorter) | 16-byte tag

Nonces never repeat under a key: every object is encrypted with its own AES key, derived by HKDF-SHA256
from the master key and the object's 128-bit random salt, and within one object the 96-bit nonce is the
chunk index (4 zero bytes, then the index as u64). The master key itself never encrypts anything.

Each chunk's associated data binds the header (key id, salt, chunk size), the chunk index, a final-chunk
flag and a caller-supplied context (the store uses the object name). So a flipped byte, a dropped or
reordered chunk, a truncated tail, a header edit or two objects swapped on disk all fail authentication.
An empty plaintext is one final chunk holding only a tag, so every valid object has at least one chunk.
"""

import base64
import binascii
import hashlib
import io
import os
import re
import struct
import tempfile
from dataclasses import dataclass
from typing import BinaryIO

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

MAGIC = b"RQE1"
KEY_SIZE = 32
SALT_SIZE = 16
TAG_SIZE = 16
DEFAULT_CHUNK_SIZE = 1024 * 1024
# A header is only authenticated once a chunk decrypts; the cap keeps a forged chunk size from
# making the reader allocate gigabytes before that.
MAX_CHUNK_SIZE = 64 * 1024 * 1024
KEY_ID_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,32}\Z")
_HKDF_INFO = b"radqueue RQE1 object key"
_U32 = struct.Struct(">I")
_CHUNK_AAD = struct.Struct(">QB")


class DecryptionError(ValueError):
    """An object that cannot be decrypted."""


class IntegrityError(DecryptionError):
    """An object that failed authentication: tampered, truncated, reordered, or decrypted in the wrong context."""


class UnknownKeyError(DecryptionError):
    """An object encrypted under a key id this key ring does not hold."""


class KeyRing:
    """Master keys by id; the current key encrypts, every key decrypts. Never reveals key bytes in repr or errors."""

    def __init__(self, keys: dict[str, bytes], current_id: str):
        if current_id not in keys:
            raise ValueError(f"current key id {current_id!r} is not in the key ring")
        for key_id, key in keys.items():
            if not KEY_ID_PATTERN.match(key_id):
                raise ValueError(f"key id {key_id!r} must match [A-Za-z0-9_-]{{1,32}}")
            if len(key) != KEY_SIZE:
                raise ValueError(f"key {key_id!r} is {len(key)} bytes; AES-256 needs exactly {KEY_SIZE}")
        self._keys = dict(keys)
        self._current_id = current_id

    @classmethod
    def from_setting(cls, value: str) -> "KeyRing":
        """Parse "keyid:base64key[,keyid:base64key...]" (first is current); a lone bare base64 key gets id "default"."""
        entries = [e.strip() for e in (value or "").split(",")]
        if not any(entries):
            raise ValueError("RADQUEUE_STORAGE_KEYS is empty: set it to keyid:base64-of-32-random-bytes")
        if len(entries) == 1 and ":" not in entries[0]:
            entries = [f"default:{entries[0]}"]
        keys: dict[str, bytes] = {}
        for position, entry in enumerate(entries, start=1):
            # Messages name the entry's position and key id, never anything after the colon.
            if ":" not in entry:
                raise ValueError(f"RADQUEUE_STORAGE_KEYS entry {position} is not of the form keyid:base64key")
            key_id, encoded = (part.strip() for part in entry.split(":", 1))
            if not KEY_ID_PATTERN.match(key_id):
                raise ValueError(f"RADQUEUE_STORAGE_KEYS entry {position}: the key id must match [A-Za-z0-9_-]{{1,32}}")
            if key_id in keys:
                raise ValueError(f"RADQUEUE_STORAGE_KEYS names key id {key_id!r} twice")
            try:
                key = base64.b64decode(encoded.replace("-", "+").replace("_", "/"), validate=True)
            except (binascii.Error, ValueError):
                raise ValueError(f"RADQUEUE_STORAGE_KEYS key {key_id!r} is not valid base64") from None
            if len(key) != KEY_SIZE:
                raise ValueError(f"RADQUEUE_STORAGE_KEYS key {key_id!r} decodes to {len(key)} bytes; "
                                 f"AES-256 needs exactly {KEY_SIZE}")
            keys[key_id] = key
        return cls(keys, current_id=next(iter(keys)))

    @classmethod
    def generate(cls, key_id: str = "ephemeral") -> "KeyRing":
        """A ring of one fresh random key that exists only in this process's memory."""
        return cls({key_id: os.urandom(KEY_SIZE)}, current_id=key_id)

    @property
    def current_id(self) -> str:
        return self._current_id

    @property
    def ids(self) -> tuple[str, ...]:
        return tuple(self._keys)

    def get(self, key_id: str) -> bytes:
        """The key with this id; raises UnknownKeyError."""
        try:
            return self._keys[key_id]
        except KeyError:
            held = ", ".join(self._keys)
            raise UnknownKeyError(f"no storage key with id {key_id!r} (the ring holds {held})") from None

    def __contains__(self, key_id: object) -> bool:
        return key_id in self._keys

    def __repr__(self) -> str:
        return f"<KeyRing current={self._current_id!r} ids={list(self._keys)!r}>"


@dataclass(frozen=True)
class Header:
    key_id: str
    salt: bytes
    chunk_size: int
    raw: bytes

    @property
    def length(self) -> int:
        return len(self.raw)


def _pack_header(key_id: str, salt: bytes, chunk_size: int) -> bytes:
    encoded = key_id.encode("ascii")
    return MAGIC + bytes([len(encoded)]) + encoded + salt + _U32.pack(chunk_size)


def read_header(fileobj: BinaryIO) -> Header:
    """Parse the header at the start of an RQE1 object (not yet authenticated); raises IntegrityError."""
    fileobj.seek(0)
    start = _read_exactly(fileobj, len(MAGIC) + 1)
    if len(start) < len(MAGIC) + 1 or start[:len(MAGIC)] != MAGIC:
        raise IntegrityError("not an RQE1 encrypted object")
    id_length = start[len(MAGIC)]
    rest = _read_exactly(fileobj, id_length + SALT_SIZE + _U32.size)
    if len(rest) < id_length + SALT_SIZE + _U32.size:
        raise IntegrityError("truncated RQE1 header")
    try:
        key_id = rest[:id_length].decode("ascii")
    except UnicodeDecodeError:
        raise IntegrityError("malformed key id in RQE1 header") from None
    if not KEY_ID_PATTERN.match(key_id):
        raise IntegrityError("malformed key id in RQE1 header")
    salt = rest[id_length:id_length + SALT_SIZE]
    (chunk_size,) = _U32.unpack(rest[id_length + SALT_SIZE:])
    if not 1 <= chunk_size <= MAX_CHUNK_SIZE:
        raise IntegrityError(f"implausible chunk size {chunk_size} in RQE1 header")
    return Header(key_id=key_id, salt=salt, chunk_size=chunk_size, raw=start + rest)


def _object_cipher(key: bytes, salt: bytes) -> AESGCM:
    hkdf = HKDF(algorithm=hashes.SHA256(), length=KEY_SIZE, salt=salt, info=_HKDF_INFO)
    return AESGCM(hkdf.derive(key))


def _nonce(index: int) -> bytes:
    return b"\0\0\0\0" + index.to_bytes(8, "big")


def _aad(header: bytes, index: int, final: bool, context: bytes) -> bytes:
    # The header and the index/flag have fixed or self-described lengths, so the context is the
    # unambiguous remainder.
    return header + _CHUNK_AAD.pack(index, 1 if final else 0) + context


def _read_exactly(fileobj: BinaryIO, n: int) -> bytes:
    parts, remaining = [], n
    while remaining > 0:
        data = fileobj.read(remaining)
        if not data:
            break
        parts.append(data)
        remaining -= len(data)
    return b"".join(parts)


class EncryptingWriter:
    """Encrypts what is written into an RQE1 object on dst; holds at most one chunk of plaintext in memory."""

    def __init__(self, dst: BinaryIO, ring: KeyRing, *, context: bytes = b"", key_id: str | None = None,
                 chunk_size: int = DEFAULT_CHUNK_SIZE):
        if not 1 <= chunk_size <= MAX_CHUNK_SIZE:
            raise ValueError(f"chunk size must be between 1 and {MAX_CHUNK_SIZE}")
        self.key_id = key_id or ring.current_id
        salt = os.urandom(SALT_SIZE)
        self._cipher = _object_cipher(ring.get(self.key_id), salt)
        self._header = _pack_header(self.key_id, salt, chunk_size)
        self._dst = dst
        self._context = bytes(context)
        self._chunk_size = chunk_size
        self._buffer = bytearray()
        self._index = 0
        self._sha = hashlib.sha256()
        self._finished = False
        self.size = 0
        dst.write(self._header)

    def write(self, data) -> int:
        if self._finished:
            raise ValueError("write after finish()")
        view = memoryview(data).cast("B")
        self._sha.update(view)
        self.size += len(view)
        pos = 0
        while pos < len(view):
            # A full buffer is written out only once more data arrives: until then it may be the final chunk.
            if len(self._buffer) == self._chunk_size:
                self._emit(final=False)
            take = min(self._chunk_size - len(self._buffer), len(view) - pos)
            self._buffer += view[pos:pos + take]
            pos += take
        return len(view)

    def finish(self) -> tuple[int, str]:
        """Write the final chunk; returns (plaintext size, sha256 hex of the plaintext)."""
        if not self._finished:
            self._emit(final=True)
            self._finished = True
        return self.size, self._sha.hexdigest()

    def _emit(self, *, final: bool) -> None:
        aad = _aad(self._header, self._index, final, self._context)
        self._dst.write(self._cipher.encrypt(_nonce(self._index), bytes(self._buffer), aad))
        self._buffer.clear()
        self._index += 1


def encrypt_stream(src: BinaryIO, dst: BinaryIO, ring: KeyRing, *, context: bytes = b"",
                   key_id: str | None = None, chunk_size: int = DEFAULT_CHUNK_SIZE) -> tuple[int, str]:
    """Encrypt src to dst under the current key (or key_id); returns (plaintext size, sha256 hex of the plaintext)."""
    writer = EncryptingWriter(dst, ring, context=context, key_id=key_id, chunk_size=chunk_size)
    while block := src.read(chunk_size):
        writer.write(block)
    return writer.finish()


def encrypt_bytes(data: bytes, ring: KeyRing, context: bytes = b"", *,
                  chunk_size: int = DEFAULT_CHUNK_SIZE) -> bytes:
    """Encrypt a small value (a secret, a mapping) into one RQE1 blob under the current key."""
    out = io.BytesIO()
    writer = EncryptingWriter(out, ring, context=context, chunk_size=chunk_size)
    writer.write(data)
    writer.finish()
    return out.getvalue()


def decrypt_bytes(blob: bytes, ring: KeyRing, context: bytes = b"") -> bytes:
    """Decrypt a whole RQE1 blob; raises IntegrityError or UnknownKeyError."""
    with DecryptingReader(io.BytesIO(blob), ring, context) as reader:
        return reader.read()


class DecryptingReader(io.RawIOBase):
    """A read-only, seekable plaintext view of an RQE1 object, decrypting one chunk at a time.

    Opening authenticates the final chunk, so ``size`` is trustworthy and truncation fails at once;
    every other chunk is authenticated when first read. Not thread-safe; readers sharing one
    underlying file may interleave in one thread because each read seeks first.
    """

    def __init__(self, fileobj: BinaryIO, ring: KeyRing, context: bytes = b"", *, close_underlying: bool = True):
        super().__init__()
        self._file = fileobj
        self._close_underlying = close_underlying
        self._context = bytes(context)
        self._cached_index = -1
        self._cached = memoryview(b"")
        self._pos = 0
        try:
            header = read_header(fileobj)
            self.key_id = header.key_id
            self.chunk_size = header.chunk_size
            self._header = header.raw
            self._cipher = _object_cipher(ring.get(header.key_id), header.salt)
            fileobj.seek(0, io.SEEK_END)
            body = fileobj.tell() - header.length
            stride = header.chunk_size + TAG_SIZE
            self._chunks = max(1, -(-body // stride))
            last = body - (self._chunks - 1) * stride
            if last < TAG_SIZE:
                raise IntegrityError("truncated RQE1 object: the final chunk is incomplete")
            self.size = (self._chunks - 1) * header.chunk_size + last - TAG_SIZE
            self._chunk(self._chunks - 1)
        except BaseException:
            # A reader that failed to open leaves the caller's file alone, even when garbage-collected.
            self._close_underlying = False
            raise

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def writable(self) -> bool:
        return False

    def tell(self) -> int:
        self._check_open()
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        self._check_open()
        if whence == io.SEEK_SET:
            target = offset
        elif whence == io.SEEK_CUR:
            target = self._pos + offset
        elif whence == io.SEEK_END:
            target = self.size + offset
        else:
            raise ValueError(f"invalid whence {whence!r}")
        if target < 0:
            raise ValueError(f"negative seek position {target}")
        self._pos = target
        return target

    def readinto(self, buffer) -> int:
        self._check_open()
        out = memoryview(buffer).cast("B")
        done = 0
        while done < len(out) and self._pos < self.size:
            index, offset = divmod(self._pos, self.chunk_size)
            chunk = self._chunk(index)
            take = min(len(chunk) - offset, len(out) - done)
            out[done:done + take] = chunk[offset:offset + take]
            done += take
            self._pos += take
        return done

    def readall(self) -> bytes:
        self._check_open()
        parts = []
        while self._pos < self.size:
            index, offset = divmod(self._pos, self.chunk_size)
            part = self._chunk(index)[offset:]
            parts.append(part)
            self._pos += len(part)
        return b"".join(parts)

    def close(self) -> None:
        if not self.closed:
            self._cached = memoryview(b"")
            if self._close_underlying:
                self._file.close()
        super().close()

    def _check_open(self) -> None:
        if self.closed:
            raise ValueError("I/O operation on closed DecryptingReader")

    def _chunk(self, index: int) -> memoryview:
        if index == self._cached_index:
            return self._cached
        stride = self.chunk_size + TAG_SIZE
        self._file.seek(len(self._header) + index * stride)
        sealed = _read_exactly(self._file, stride)
        final = index == self._chunks - 1
        try:
            plain = self._cipher.decrypt(_nonce(index), sealed, _aad(self._header, index, final, self._context))
        except InvalidTag:
            raise IntegrityError(
                f"chunk {index + 1} of {self._chunks} failed authentication: the object was tampered with, "
                "truncated or reordered, or is read under the wrong name"
            ) from None
        self._cached_index, self._cached = index, memoryview(plain)
        return self._cached


def reencrypt(blob: BinaryIO, dst: BinaryIO, ring: KeyRing, *, context: bytes = b"",
              key_id: str | None = None) -> tuple[int, str]:
    """Decrypt the RQE1 object in blob and write it to dst under key_id (default: current); same chunk size."""
    reader = DecryptingReader(blob, ring, context, close_underlying=False)
    writer = EncryptingWriter(dst, ring, context=context, key_id=key_id, chunk_size=reader.chunk_size)
    while block := reader.read(reader.chunk_size):
        writer.write(block)
    return writer.finish()


class EncryptedSpool:
    """A temporary file for uploads that holds only ciphertext, under a random key that lives only in memory.

    The file is unlinked on creation (tempfile.TemporaryFile), so nothing is left behind if the
    process dies, and the key dies with the process. Write, ``finish()``, then read back through
    any number of seekable ``reader()`` objects.
    """

    def __init__(self, *, chunk_size: int = DEFAULT_CHUNK_SIZE, dir: str | None = None):
        self._ring = KeyRing.generate("spool")
        self._file = tempfile.TemporaryFile(dir=dir)
        self._writer = EncryptingWriter(self._file, self._ring, chunk_size=chunk_size)
        self.sha256: str | None = None
        self.finished = False

    @property
    def size(self) -> int:
        return self._writer.size

    def write(self, data) -> int:
        return self._writer.write(data)

    def finish(self) -> tuple[int, str]:
        """Seal the spool; returns (plaintext size, sha256 hex). Idempotent."""
        size, self.sha256 = self._writer.finish()
        self._file.flush()
        self.finished = True
        return size, self.sha256

    def reader(self) -> DecryptingReader:
        if not self.finished:
            raise ValueError("finish() the spool before reading it")
        return DecryptingReader(self._file, self._ring, close_underlying=False)

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> "EncryptedSpool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
