import base64
import hashlib
import io
import os
import tempfile
import zipfile

import pydicom
import pytest
from django.core.files.storage import FileSystemStorage, InMemoryStorage
from django.core.management import CommandError, call_command
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from core.dicom import crypto, synthetic
from core.dicom.crypto import (
    DecryptingReader,
    DecryptionError,
    EncryptedSpool,
    IntegrityError,
    KeyRing,
    UnknownKeyError,
    decrypt_bytes,
    encrypt_bytes,
    encrypt_stream,
    read_header,
    reencrypt,
)
from core.dicom.storage import EncryptedStore, get_store, reset_store, rotate_all

MARKER = b"PLAINTEXT-MARKER-DOE^JANE^Q-"
CHUNK = 16


def key_b64(seed: bytes) -> str:
    return base64.b64encode(hashlib.sha256(seed).digest()).decode()


@pytest.fixture
def ring():
    return KeyRing.generate("k1")


def encrypt(data: bytes, ring: KeyRing, context: bytes = b"", chunk_size: int = CHUNK) -> bytes:
    return encrypt_bytes(data, ring, context, chunk_size=chunk_size)


def header_length(blob: bytes) -> int:
    return read_header(io.BytesIO(blob)).length


# --- The RQE1 format ------------------------------------------------------------------------------

@pytest.mark.parametrize("size", [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK, 3 * CHUNK + 5])
def test_round_trip_at_chunk_boundaries(ring, size):
    data = os.urandom(size)
    blob = encrypt(data, ring, b"ctx")
    assert decrypt_bytes(blob, ring, b"ctx") == data
    chunks = max(1, -(-size // CHUNK))
    assert len(blob) == header_length(blob) + size + chunks * crypto.TAG_SIZE


@pytest.mark.parametrize("size", [0, 1, crypto.DEFAULT_CHUNK_SIZE, 2 * crypto.DEFAULT_CHUNK_SIZE + 3])
def test_round_trip_with_the_default_chunk_size(ring, size):
    data = os.urandom(size)
    out = io.BytesIO()
    assert encrypt_stream(io.BytesIO(data), out, ring) == (size, hashlib.sha256(data).hexdigest())
    assert read_header(io.BytesIO(out.getvalue())).chunk_size == crypto.DEFAULT_CHUNK_SIZE
    assert decrypt_bytes(out.getvalue(), ring) == data


def test_the_same_plaintext_encrypts_differently_each_time(ring):
    assert encrypt(MARKER, ring) != encrypt(MARKER, ring)


@hypothesis_settings(max_examples=60, deadline=None, database=None)
@given(data=st.binary(max_size=200), chunk_size=st.integers(1, 40),
       reads=st.lists(st.tuples(st.integers(0, 220), st.integers(0, 80)), max_size=8))
def test_random_access_reads_equal_plaintext_slices(data, chunk_size, reads):
    ring = KeyRing.generate("k1")
    reader = DecryptingReader(io.BytesIO(encrypt(data, ring, b"name", chunk_size)), ring, b"name")
    assert reader.size == len(data)
    for offset, length in reads:
        assert reader.seek(offset) == offset
        assert reader.read(length) == data[offset:offset + length]
        assert reader.tell() == min(offset + length, max(offset, len(data)))
    reader.seek(-min(len(data), 5), io.SEEK_END)
    assert reader.read() == data[len(data) - min(len(data), 5):]
    reader.seek(0)
    reader.seek(3, io.SEEK_CUR)
    assert reader.read() == data[3:]


def test_reader_is_a_seekable_raw_file(ring):
    reader = DecryptingReader(io.BytesIO(encrypt(b"0123456789" * 5, ring)), ring)
    assert reader.readable() and reader.seekable() and not reader.writable()
    buffered = io.BufferedReader(reader)
    buffered.seek(12)
    assert buffered.read(5) == b"23456"
    with pytest.raises(ValueError):
        reader.seek(-1)
    buffered.close()
    assert reader.closed
    with pytest.raises(ValueError):
        reader.read(1)


def test_flipping_any_byte_is_detected(ring):
    blob = encrypt(os.urandom(40), ring, b"ctx")
    for position in range(len(blob)):
        tampered = bytearray(blob)
        tampered[position] ^= 0x01
        with pytest.raises(DecryptionError):
            decrypt_bytes(bytes(tampered), ring, b"ctx")
        if position >= header_length(blob):
            with pytest.raises(IntegrityError):
                decrypt_bytes(bytes(tampered), ring, b"ctx")


def test_truncation_is_detected_on_open(ring):
    blob = encrypt(os.urandom(3 * CHUNK), ring)
    stride = CHUNK + crypto.TAG_SIZE
    for cut in (stride, 1, crypto.TAG_SIZE, stride + 3, len(blob) - header_length(blob)):
        with pytest.raises(IntegrityError):
            DecryptingReader(io.BytesIO(blob[:-cut]), ring)


def test_reordered_or_repeated_chunks_are_detected(ring):
    data = os.urandom(3 * CHUNK + 4)
    blob = encrypt(data, ring)
    start, stride = header_length(blob), CHUNK + crypto.TAG_SIZE
    header, chunks = blob[:start], [blob[start + i * stride:start + (i + 1) * stride] for i in range(4)]
    swapped = header + chunks[1] + chunks[0] + chunks[2] + chunks[3]
    reader = DecryptingReader(io.BytesIO(swapped), ring)
    with pytest.raises(IntegrityError):
        reader.read(4)
    with pytest.raises(IntegrityError):
        decrypt_bytes(header + chunks[0] + chunks[0] + chunks[1] + chunks[2] + chunks[3], ring)
    with pytest.raises(IntegrityError):
        decrypt_bytes(header + chunks[0] + chunks[1] + chunks[3], ring)


def test_a_blob_only_decrypts_in_its_own_context(ring):
    blob = encrypt(MARKER, ring, b"studies/a.dcm")
    with pytest.raises(IntegrityError):
        decrypt_bytes(blob, ring, b"studies/b.dcm")


def test_a_key_id_missing_from_the_ring_is_refused(ring):
    blob = encrypt(MARKER, ring)
    other = KeyRing.generate("k2")
    with pytest.raises(UnknownKeyError, match="'k1'"):
        decrypt_bytes(blob, other)
    same_id_other_key = KeyRing.generate("k1")
    with pytest.raises(IntegrityError):
        decrypt_bytes(blob, same_id_other_key)


def test_not_an_rqe1_object_is_refused(ring):
    for blob in (b"", b"RQE", b"PK\x03\x04 zip file", b"RQE1\x05ab"):
        with pytest.raises(IntegrityError):
            decrypt_bytes(blob, ring)


def test_reencrypt_moves_an_object_to_another_key():
    old = KeyRing({"old": os.urandom(32)}, "old")
    both = KeyRing({"new": os.urandom(32), "old": old.get("old")}, "new")
    blob = encrypt(MARKER * 3, old, b"ctx")
    out = io.BytesIO()
    size, sha = reencrypt(io.BytesIO(blob), out, both, context=b"ctx")
    assert (size, sha) == (len(MARKER) * 3, hashlib.sha256(MARKER * 3).hexdigest())
    assert read_header(io.BytesIO(out.getvalue())).key_id == "new"
    assert read_header(io.BytesIO(out.getvalue())).chunk_size == CHUNK
    assert decrypt_bytes(out.getvalue(), both, b"ctx") == MARKER * 3


# --- KeyRing parsing -------------------------------------------------------------------------------

def test_key_ring_parses_current_and_old_keys():
    ring = KeyRing.from_setting(f" new:{key_b64(b'n')} , old_1:{key_b64(b'o')}")
    assert ring.current_id == "new"
    assert ring.ids == ("new", "old_1")
    assert ring.get("old_1") == hashlib.sha256(b"o").digest()
    assert "old_1" in ring and "nope" not in ring
    with pytest.raises(UnknownKeyError):
        ring.get("nope")


def test_a_bare_key_gets_the_default_id():
    assert KeyRing.from_setting(key_b64(b"k")).current_id == "default"


def test_url_safe_base64_is_accepted():
    key = bytes(range(200, 232))
    ring = KeyRing.from_setting("k:" + base64.urlsafe_b64encode(key).decode())
    assert ring.get("k") == key


SECRET = key_b64(b"secret")


@pytest.mark.parametrize("value, message", [
    ("", "empty"),
    (" , ", "empty"),
    (f"k1:{SECRET},{SECRET}", "entry 2 is not of the form"),
    (f"bad id:{SECRET}", "entry 1: the key id"),
    (f"{'x' * 33}:{SECRET}", "entry 1: the key id"),
    (f"k1:{SECRET},k1:{SECRET}", "twice"),
    ("k1:" + SECRET[:-4] + "!!!!", "not valid base64"),
    ("k1:" + base64.b64encode(b"x" * 31).decode(), "31 bytes"),
    ("k1:" + base64.b64encode(b"x" * 64).decode(), "64 bytes"),
])
def test_bad_key_settings_are_refused_without_echoing_the_key(value, message):
    with pytest.raises(ValueError, match=message) as caught:
        KeyRing.from_setting(value)
    assert SECRET[:12] not in str(caught.value)
    assert "eHh4" not in str(caught.value)


def test_key_ring_repr_shows_ids_only():
    ring = KeyRing.from_setting(f"k1:{SECRET}")
    assert SECRET not in repr(ring) and "k1" in repr(ring)


# --- EncryptedSpool --------------------------------------------------------------------------------

@pytest.fixture
def captured_tempfiles(monkeypatch):
    files = []
    original = tempfile.TemporaryFile

    def capture(*args, **kwargs):
        handle = original(*args, **kwargs)
        files.append(handle)
        return handle

    monkeypatch.setattr(tempfile, "TemporaryFile", capture)
    return files


def raw_bytes(handle) -> bytes:
    handle.flush()
    with open(handle.fileno(), "rb", closefd=False) as raw:
        raw.seek(0)
        return raw.read()


def test_spool_serves_a_zip_and_never_writes_plaintext(captured_tempfiles):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED) as archive:
        archive.writestr("a.txt", MARKER * 1000)
        archive.writestr("dir/b.bin", os.urandom(70_000))
    payload = buffer.getvalue()
    with EncryptedSpool(chunk_size=4096) as spool:
        for start in range(0, len(payload), 1000):
            spool.write(payload[start:start + 1000])
        assert spool.finish() == (len(payload), hashlib.sha256(payload).hexdigest())
        assert spool.size == len(payload)
        with zipfile.ZipFile(spool.reader()) as archive:
            assert archive.namelist() == ["a.txt", "dir/b.bin"]
            assert archive.read("a.txt") == MARKER * 1000
        assert spool.reader().read() == payload
        (handle,) = captured_tempfiles
        on_disk = raw_bytes(handle)
        assert MARKER not in on_disk and b"a.txt" not in on_disk
        assert on_disk.startswith(b"RQE1")


def test_spool_file_is_unlinked_on_creation(captured_tempfiles):
    spool = EncryptedSpool()
    (handle,) = captured_tempfiles
    assert os.fstat(handle.fileno()).st_nlink == 0
    spool.close()
    assert handle.closed


def test_pydicom_reads_from_a_spool():
    ds = synthetic.make_ct_series(n_slices=1, rows=16, cols=16)[0]
    spool = EncryptedSpool(chunk_size=1000)
    spool.write(synthetic.to_bytes(ds))
    spool.finish()
    read = pydicom.dcmread(spool.reader())
    assert read.SOPInstanceUID == ds.SOPInstanceUID
    assert (read.pixel_array == ds.pixel_array).all()
    spool.close()


def test_spool_refuses_reading_before_finish():
    spool = EncryptedSpool()
    spool.write(b"abc")
    with pytest.raises(ValueError, match="finish"):
        spool.reader()
    spool.close()


# --- EncryptedStore --------------------------------------------------------------------------------

@pytest.fixture
def store(tmp_path, ring):
    return EncryptedStore(FileSystemStorage(location=tmp_path / "objects"), ring, chunk_size=64)


def disk_bytes(root) -> list[bytes]:
    return [path.read_bytes() for path in root.rglob("*") if path.is_file()]


def test_store_round_trip(store):
    data = MARKER + os.urandom(500)
    obj = store.put_bytes("studies/1/a.dcm", data)
    assert obj == type(obj)("studies/1/a.dcm", len(data), hashlib.sha256(data).hexdigest(), "k1")
    assert store.exists("studies/1/a.dcm")
    assert store.read_bytes("studies/1/a.dcm") == data
    with store.open("studies/1/a.dcm") as reader:
        reader.seek(100)
        assert reader.read(10) == data[100:110]
    assert store.key_id_of("studies/1/a.dcm") == "k1"
    store.delete("studies/1/a.dcm")
    assert not store.exists("studies/1/a.dcm")
    with pytest.raises(FileNotFoundError):
        store.open("studies/1/a.dcm")


def test_store_never_puts_plaintext_on_disk(store, tmp_path):
    store.put_stream("a/big.bin", io.BytesIO(MARKER * 5000))
    store.put_bytes("a/small.bin", MARKER)
    store.put_bytes("b.bin", b"")
    store.rotate("a/small.bin", "k1")
    files = disk_bytes(tmp_path / "objects")
    assert len(files) == 3
    assert all(MARKER not in content and content.startswith(b"RQE1") for content in files)


def test_store_replaces_atomically_and_keeps_the_old_object_on_failure(store, tmp_path):
    store.put_bytes("x.bin", b"old")

    class Exploding(io.RawIOBase):
        sent = False

        def readinto(self, buffer):
            if self.sent:
                raise OSError("connection reset")
            self.sent = True
            buffer[:3] = b"new"
            return 3

    with pytest.raises(OSError, match="connection reset"):
        store.put_stream("x.bin", Exploding())
    assert store.read_bytes("x.bin") == b"old"
    assert sorted(p.name for p in (tmp_path / "objects").iterdir()) == ["x.bin"]
    store.put_bytes("x.bin", b"new")
    assert store.read_bytes("x.bin") == b"new"


def test_swapping_two_objects_on_disk_is_detected(store, tmp_path):
    store.put_bytes("a.dcm", b"first")
    store.put_bytes("b.dcm", b"second")
    root = tmp_path / "objects"
    a, b = (root / "a.dcm").read_bytes(), (root / "b.dcm").read_bytes()
    (root / "a.dcm").write_bytes(b)
    (root / "b.dcm").write_bytes(a)
    for name in ("a.dcm", "b.dcm"):
        with pytest.raises(IntegrityError):
            store.read_bytes(name)


def test_store_lists_names_and_skips_unfinished_writes(store, tmp_path):
    for name in ("z.bin", "a/2.bin", "a/1.bin", "a/b/c.bin"):
        store.put_bytes(name, b"x")
    (tmp_path / "objects" / "a" / ".1.bin.abc.tmp").write_bytes(b"partial")
    assert list(store.names()) == ["z.bin", "a/1.bin", "a/2.bin", "a/b/c.bin"]
    assert list(EncryptedStore(FileSystemStorage(location=tmp_path / "none"), store.ring).names()) == []


@pytest.mark.parametrize("name", ["", "/abs", "a/../b", "a//b", ".hidden", "a/.tmp", "a\\b", "a/"])
def test_store_refuses_unsafe_names(store, name):
    with pytest.raises(ValueError, match="invalid object name"):
        store.put_bytes(name, b"x")


def test_rotate_rewrites_only_objects_under_an_old_key(tmp_path):
    old = KeyRing({"old": os.urandom(32)}, "old")
    backend = FileSystemStorage(location=tmp_path)
    EncryptedStore(backend, old).put_bytes("a.bin", MARKER)
    both = KeyRing({"new": os.urandom(32), "old": old.get("old")}, "new")
    store = EncryptedStore(backend, both)
    assert store.rotate("a.bin") is True
    assert store.key_id_of("a.bin") == "new"
    before = (tmp_path / "a.bin").read_bytes()
    assert store.rotate("a.bin") is False
    assert (tmp_path / "a.bin").read_bytes() == before
    assert store.read_bytes("a.bin") == MARKER


class OverwritingMemoryStorage(InMemoryStorage):
    def get_available_name(self, name, max_length=None):
        return name


def test_store_works_on_a_backend_without_local_paths():
    old = KeyRing({"old": os.urandom(32)}, "old")
    backend = OverwritingMemoryStorage()
    EncryptedStore(backend, old).put_bytes("s/a.bin", MARKER * 10)
    store = EncryptedStore(backend, KeyRing({"new": os.urandom(32), "old": old.get("old")}, "new"))
    assert store.read_bytes("s/a.bin") == MARKER * 10
    assert store.rotate("s/a.bin")
    assert store.key_id_of("s/a.bin") == "new"
    assert store.read_bytes("s/a.bin") == MARKER * 10
    assert list(store.names()) == ["s/a.bin"]


def test_a_backend_that_renames_is_refused_on_overwrite():
    store = EncryptedStore(InMemoryStorage(), KeyRing.generate("k1"))
    store.put_bytes("a.bin", b"1")
    with pytest.raises(RuntimeError, match="file_overwrite"):
        store.put_bytes("a.bin", b"2")
    assert list(store.names()) == ["a.bin"]


# --- Settings, get_store and the rotation command --------------------------------------------------

@pytest.fixture
def configured(settings, tmp_path):
    settings.DATA_DIR = tmp_path
    settings.RADQUEUE_STORAGE_KEYS = f"old:{key_b64(b'old')}"
    reset_store()
    yield settings
    reset_store()


def test_get_store_reads_settings_and_is_cached(configured, tmp_path):
    store = get_store()
    assert get_store() is store
    assert store.ring.current_id == "old"
    store.put_bytes("a.bin", b"x")
    assert (tmp_path / "objects" / "a.bin").is_file()
    configured.RADQUEUE_STORAGE_KEYS = f"new:{key_b64(b'new')}"
    assert get_store().ring.current_id == "new"


def test_get_store_uses_a_named_storages_alias(configured, tmp_path):
    configured.STORAGES = {**configured.STORAGES, "objects": {
        "BACKEND": "django.core.files.storage.FileSystemStorage", "OPTIONS": {"location": str(tmp_path / "s3")}}}
    configured.RADQUEUE_OBJECT_STORAGE = "objects"
    get_store().put_bytes("a.bin", b"x")
    assert (tmp_path / "s3" / "a.bin").is_file()


@pytest.mark.django_db
def test_rotation_command_moves_every_object_to_the_new_key(configured, tmp_path, capsys):
    contents = {f"studies/{i}/{j}.dcm": MARKER + os.urandom(i * 1000 + j) for i in range(3) for j in range(2)}
    for name, data in contents.items():
        get_store().put_bytes(name, data)
    configured.RADQUEUE_STORAGE_KEYS = f"new:{key_b64(b'new')},old:{key_b64(b'old')}"
    reset_store()
    get_store().put_bytes("already-new.bin", b"fresh")
    untouched = (tmp_path / "objects" / "already-new.bin").read_bytes()

    call_command("rotate_storage_key", "--dry-run")
    assert "would re-encrypt 6" in capsys.readouterr().out
    assert {get_store().key_id_of(name) for name in contents} == {"old"}

    call_command("rotate_storage_key")
    assert "7 objects: re-encrypted 6, already under key 'new' 1, failed 0" in capsys.readouterr().out
    store = get_store()
    assert {name: store.key_id_of(name) for name in store.names()} == dict.fromkeys([*contents, "already-new.bin"],
                                                                                     "new")
    assert all(store.read_bytes(name) == data for name, data in contents.items())
    assert (tmp_path / "objects" / "already-new.bin").read_bytes() == untouched
    assert all(MARKER not in content for content in disk_bytes(tmp_path / "objects"))

    call_command("rotate_storage_key")
    assert "re-encrypted 0, already under key 'new' 7" in capsys.readouterr().out


@pytest.mark.django_db
def test_rotation_command_reports_objects_it_cannot_read(configured):
    foreign = EncryptedStore(get_store().storage, KeyRing.generate("lost"))
    foreign.put_bytes("orphan.bin", b"x")
    get_store().put_bytes("fine.bin", b"y")
    configured.RADQUEUE_STORAGE_KEYS = f"new:{key_b64(b'new')},old:{key_b64(b'old')}"
    with pytest.raises(CommandError, match="1 objects could not"):
        call_command("rotate_storage_key")
    assert get_store().key_id_of("fine.bin") == "new"
    report = rotate_all(get_store())
    assert report.total == 2 and report.current == 1 and report.failed[0][0] == "orphan.bin"
