"""Encrypted object storage: every object is an RQE1 blob (core.dicom.crypto) bound to its name.

Objects live in a Django storage backend. By default that is a FileSystemStorage under
``settings.DATA_DIR / "objects"``. To use S3 or an S3-compatible store (MinIO, Ceph RGW), install
django-storages[s3], add a STORAGES alias and name it in ``RADQUEUE_OBJECT_STORAGE``::

    STORAGES = {
        ...,
        "objects": {
            "BACKEND": "storages.backends.s3.S3Storage",
            "OPTIONS": {
                "bucket_name": "radqueue-objects",
                "endpoint_url": "https://minio.internal:9000",  # S3-compatible only; omit for AWS
                "region_name": "eu-west-1",
                "default_acl": "private",
                "file_overwrite": True,  # key rotation rewrites objects in place; an S3 PUT replaces atomically
            },
        },
    }
    RADQUEUE_OBJECT_STORAGE = "objects"

Credentials come from the usual AWS environment/instance profile. Server-side encryption adds
nothing: objects are encrypted here, before upload, and the bucket only ever sees ciphertext.
"""

import contextlib
import io
import os
import posixpath
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, TypeVar

from django.conf import settings
from django.core.files import File
from django.core.files.storage import FileSystemStorage, Storage, storages
from django.core.signals import setting_changed
from django.dispatch import receiver

from core.dicom.crypto import (
    DEFAULT_CHUNK_SIZE,
    DecryptingReader,
    DecryptionError,
    EncryptingWriter,
    KeyRing,
    encrypt_stream,
    read_header,
    reencrypt,
)

T = TypeVar("T")
# Sealed objects wait here, inside the store's folder (dot-prefixed: names() never lists them).
INCOMING = ".incoming"
COPY_CHUNK = 1024 * 1024
SYNC_THREADS = 16


@dataclass(frozen=True)
class StoredObject:
    name: str
    size: int
    sha256: str
    key_id: str


@dataclass
class Sealed:
    """An object encrypted into a temporary file beside the store (EncryptedStore.seal), not yet stored."""

    path: str
    obj: StoredObject


def _check_name(name: str) -> str:
    # Dot-prefixed names are reserved for the temporary files of atomic writes.
    parts = name.split("/") if isinstance(name, str) else [""]
    if not name or name.startswith("/") or "\\" in name or any(not p or p.startswith(".") for p in parts):
        raise ValueError(f"invalid object name {name!r}: use relative a/b/c names without dot-prefixed parts")
    return name


class EncryptedStore:
    """Objects encrypted under the ring's current key, each bound to its name; on disk there is only ciphertext."""

    def __init__(self, storage: Storage, ring: KeyRing, *, chunk_size: int = DEFAULT_CHUNK_SIZE):
        self.storage = storage
        self.ring = ring
        self.chunk_size = chunk_size

    def put_stream(self, name: str, src: BinaryIO, *, durable: bool = True) -> StoredObject:
        """Encrypt src into the object `name`, replacing any previous one atomically.

        With ``durable=False`` the fsyncs are deferred to ``sync()``, so a batch of writes pays for
        them once, before the transaction that references the objects commits.
        """
        _check_name(name)
        size, sha256 = self._write(name, lambda dst: encrypt_stream(
            src, dst, self.ring, context=name.encode(), chunk_size=self.chunk_size), durable=durable)
        return StoredObject(name=name, size=size, sha256=sha256, key_id=self.ring.current_id)

    def put_bytes(self, name: str, data: bytes, *, durable: bool = True) -> StoredObject:
        return self.put_stream(name, io.BytesIO(data), durable=durable)

    def seal(self, name: str, fill: Callable[[BinaryIO], object]) -> Sealed:
        """Encrypt what ``fill(writer)`` writes, for the object ``name``, into a temporary file of
        ciphertext, to store later with put_sealed (or drop with discard): ingest's worker
        processes seal, so only a path comes back to the storing process, and no object is ever
        whole in memory."""
        _check_name(name)
        fd, path = tempfile.mkstemp(dir=self._incoming(), prefix=".seal.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as dst:
                writer = EncryptingWriter(dst, self.ring, context=name.encode(), chunk_size=self.chunk_size)
                fill(writer)
                size, sha256 = writer.finish()
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            raise
        return Sealed(path=path, obj=StoredObject(name=name, size=size, sha256=sha256, key_id=self.ring.current_id))

    def put_sealed(self, sealed: Sealed, *, durable: bool = True) -> StoredObject:
        """Store what seal() encrypted (bound to its name, so it decrypts only there), replacing any
        previous object atomically; the temporary file is gone afterwards."""
        name = _check_name(sealed.obj.name)
        if not isinstance(self.storage, FileSystemStorage):
            try:
                with open(sealed.path, "rb") as src:
                    self._write_remote(name, lambda dst: shutil.copyfileobj(src, dst, COPY_CHUNK))
            finally:
                self.discard(sealed)
            return sealed.obj
        path = Path(self.storage.path(name))
        path.parent.mkdir(parents=True, exist_ok=True)
        os.replace(sealed.path, path)  # same filesystem: _incoming() lies inside the store
        if durable:
            self.sync([name])
        return sealed.obj

    def discard(self, sealed: Sealed) -> None:
        """Drop a sealed object that will not be stored."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(sealed.path)

    def sweep_incoming(self, older_than_s: float = 24 * 3600) -> int:
        """Remove sealed files a killed process left behind (older than any ingest runs); returns how many."""
        folder, removed, cutoff = self._incoming(), 0, time.time() - older_than_s
        for entry in os.scandir(folder):
            if entry.name.startswith(".seal.") and entry.stat().st_mtime < cutoff:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(entry.path)
                    removed += 1
        return removed

    def _incoming(self) -> str:
        # Beside the objects, so that put_sealed is a rename; for a remote backend, the local temp folder.
        if not isinstance(self.storage, FileSystemStorage):
            return tempfile.gettempdir()
        folder = Path(self.storage.location) / INCOMING
        folder.mkdir(parents=True, exist_ok=True)
        return str(folder)

    def sync(self, names: Iterable[str]) -> None:
        """Make objects written with ``durable=False`` (and their directory entries) durable.

        The files are synced from several threads at once: concurrent fsyncs share the filesystem's
        journal commits (ext4's jbd2 batches them), where one after another each waits for its own.
        """
        if not isinstance(self.storage, FileSystemStorage):
            return  # remote backends acknowledge durable writes
        paths = [Path(self.storage.path(_check_name(name))) for name in names]
        if len(paths) > 1:
            with ThreadPoolExecutor(max_workers=min(SYNC_THREADS, len(paths))) as pool:
                list(pool.map(_fsync_file, paths))
        elif paths:
            _fsync_file(paths[0])
        for folder in {path.parent for path in paths}:
            _fsync_dir(folder)

    def open(self, name: str) -> DecryptingReader:
        """A seekable plaintext reader; raises FileNotFoundError, IntegrityError or UnknownKeyError."""
        fileobj = self.storage.open(_check_name(name), "rb")
        try:
            return DecryptingReader(fileobj, self.ring, name.encode())
        except BaseException:
            fileobj.close()
            raise

    def read_range(self, name: str, start: int, length: int) -> bytes:
        """``length`` plaintext bytes of the object from ``start``: only the chunks they lie in are decrypted."""
        with self.open(name) as reader:
            reader.seek(start)
            return reader.read(length)

    def read_bytes(self, name: str) -> bytes:
        with self.open(name) as reader:
            return reader.read()

    def exists(self, name: str) -> bool:
        return self.storage.exists(_check_name(name))

    def delete(self, name: str) -> None:
        self.storage.delete(_check_name(name))

    def key_id_of(self, name: str) -> str:
        """The key id in the object's header (read without decrypting)."""
        with self.storage.open(_check_name(name), "rb") as fileobj:
            return read_header(fileobj).key_id

    def rotate(self, name: str, key_id: str | None = None) -> bool:
        """Re-encrypt the object under key_id (default: current) unless it already is; True if rewritten."""
        target = key_id or self.ring.current_id
        self.ring.get(target)
        with self.storage.open(_check_name(name), "rb") as src:
            if read_header(src).key_id == target:
                return False
            # On the filesystem the open handle keeps reading the old file while the new one replaces it.
            self._write(name, lambda dst: reencrypt(src, dst, self.ring, context=name.encode(), key_id=target))
        return True

    def names(self) -> Iterator[str]:
        """Every object name, depth-first in sorted order (temporary files of unfinished writes skipped)."""
        stack = [""]
        while stack:
            folder = stack.pop()
            try:
                folders, files = self.storage.listdir(folder)
            except FileNotFoundError:
                if folder:
                    raise
                return
            for filename in sorted(files):
                if not filename.startswith("."):
                    yield posixpath.join(folder, filename) if folder else filename
            stack.extend(posixpath.join(folder, sub) if folder else sub
                         for sub in sorted(folders, reverse=True) if not sub.startswith("."))

    def _write(self, name: str, fill: Callable[[BinaryIO], T], *, durable: bool = True) -> T:
        # Only FileSystemStorage is known to be local: other backends may implement path() regardless.
        if not isinstance(self.storage, FileSystemStorage):
            return self._write_remote(name, fill)
        path = Path(self.storage.path(name))
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as dst:
                result = fill(dst)
                dst.flush()
                if durable:
                    os.fsync(dst.fileno())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        if durable:
            _fsync_dir(path.parent)
        return result

    def _write_remote(self, name: str, fill: Callable[[BinaryIO], T]) -> T:
        # The local temporary file holds ciphertext only; the backend must overwrite in place
        # (S3Storage with file_overwrite=True) for rotation to work.
        with tempfile.TemporaryFile() as dst:
            result = fill(dst)
            dst.seek(0)
            saved = self.storage.save(name, File(dst, name=posixpath.basename(name)))
        if saved != name:
            self.storage.delete(saved)
            raise RuntimeError(f"storage backend stored {name!r} as {saved!r}; configure it to overwrite "
                               "existing names (S3: file_overwrite=True)")
        return result


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(folder: Path) -> None:
    # Makes the rename itself durable (POSIX); not possible on every platform.
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@dataclass
class RotationReport:
    total: int = 0
    rotated: int = 0
    current: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)


def rotate_all(store: EncryptedStore, names: Iterable[str] | None = None, *, dry_run: bool = False) -> RotationReport:
    """Re-encrypt every object not under the current key; idempotent, objects already current are not touched.

    With dry_run nothing is written: ``rotated`` counts what would be. A failure (unknown key, tampered
    object) is recorded and the rest carry on.
    """
    report = RotationReport()
    current = store.ring.current_id
    for name in store.names() if names is None else names:
        report.total += 1
        try:
            key_id = store.key_id_of(name)
            if key_id == current:
                report.current += 1
                continue
            store.ring.get(key_id)
            if dry_run or store.rotate(name):
                report.rotated += 1
            else:
                report.current += 1
        except (DecryptionError, OSError) as exc:
            report.failed.append((name, str(exc)))
    return report


_store: EncryptedStore | None = None
_store_lock = threading.Lock()


def get_store() -> EncryptedStore:
    """The process-wide store built from settings (RADQUEUE_STORAGE_KEYS, RADQUEUE_OBJECT_STORAGE, DATA_DIR)."""
    global _store
    with _store_lock:
        if _store is None:
            ring = KeyRing.from_setting(settings.RADQUEUE_STORAGE_KEYS)
            alias = getattr(settings, "RADQUEUE_OBJECT_STORAGE", None)
            backend = storages[alias] if alias else FileSystemStorage(location=Path(settings.DATA_DIR) / "objects")
            _store = EncryptedStore(backend, ring)
        return _store


def reset_store() -> None:
    """Forget the cached store so the next get_store() reads settings again."""
    global _store
    with _store_lock:
        _store = None


@receiver(setting_changed)
def _reset_store_on_setting_change(*, setting, **kwargs):
    if setting in {"RADQUEUE_STORAGE_KEYS", "RADQUEUE_OBJECT_STORAGE", "DATA_DIR", "STORAGES"}:
        reset_store()
