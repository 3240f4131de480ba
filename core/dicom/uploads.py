"""Upload handling that streams each file into an encrypted spool: no request body held whole in
memory, and no plaintext temp file (Django's default handler writes uploads to /tmp in clear)."""

from django.core.files.uploadedfile import UploadedFile
from django.core.files.uploadhandler import FileUploadHandler

from core.dicom.crypto import EncryptedSpool


class SpooledUpload(UploadedFile):
    """An uploaded file held encrypted; ``refused`` says why it was not kept (e.g. oversize)."""

    def __init__(self, spool: EncryptedSpool | None, name: str, content_type: str, size: int, refused: str = ""):
        self.spool = spool
        self.refused = refused
        super().__init__(file=None, name=name, content_type=content_type, size=size)

    def open(self, mode=None):
        return self.spool.reader()

    def close(self):
        if self.spool is not None:
            self.spool.close()


class EncryptedSpoolUploadHandler(FileUploadHandler):
    """Each uploaded file goes chunk by chunk through AES-GCM into an unlinked temp file.

    A file over ``max_file_bytes`` is drained and dropped (the rest of the request still parses),
    and comes back refused, so the batch reports it and goes on.
    """

    def __init__(self, request=None, max_file_bytes: int | None = None):
        super().__init__(request)
        self.max_file_bytes = max_file_bytes
        self.spool = None
        self.written = 0

    def new_file(self, *args, **kwargs):
        super().new_file(*args, **kwargs)
        self.spool = EncryptedSpool()
        self.written = 0

    def receive_data_chunk(self, raw_data, start):
        self.written += len(raw_data)
        if self.spool is None:
            return None
        if self.max_file_bytes is not None and self.written > self.max_file_bytes:
            self.spool.close()
            self.spool = None
            return None
        self.spool.write(raw_data)
        return None

    def file_complete(self, file_size):
        if self.spool is None:
            return SpooledUpload(None, self.file_name, self.content_type, file_size,
                                 refused=f"file of {file_size} bytes exceeds the {self.max_file_bytes} byte limit")
        self.spool.finish()
        return SpooledUpload(self.spool, self.file_name, self.content_type, file_size)
