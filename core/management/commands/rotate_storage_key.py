"""Re-encrypt stored objects under the current storage key (the first in RADQUEUE_STORAGE_KEYS)."""

import io

from django.core.management.base import BaseCommand, CommandError
from django.db import transaction
from tqdm import tqdm

from core.dicom import metadata
from core.dicom.crypto import KeyRing, decrypt_bytes, encrypt_bytes, read_header
from core.dicom.ingest import project_secret_context, pseudonym_context
from core.dicom.storage import get_store, rotate_all
from core.models import Project, PseudonymMapEntry


def _rotated(blob: bytes, ring: KeyRing, context: bytes) -> bytes | None:
    """The blob under the current key, or None when it already is."""
    if read_header(io.BytesIO(blob)).key_id == ring.current_id:
        return None
    return encrypt_bytes(decrypt_bytes(blob, ring, context=context), ring, context=context)


@transaction.atomic
def rotate_database_secrets(ring: KeyRing) -> int:
    """Re-encrypt the values kept in the database under the storage keys; returns how many changed."""
    changed = 0
    for project in Project.objects.select_for_update().exclude(deid_secret_encrypted=None):
        new = _rotated(bytes(project.deid_secret_encrypted), ring, project_secret_context(project.pk))
        if new is not None:
            Project.objects.filter(pk=project.pk).update(deid_secret_encrypted=new)
            changed += 1
    for entry in PseudonymMapEntry.objects.select_for_update().iterator(chunk_size=1000):
        context = pseudonym_context(entry.project_id, entry.kind, entry.pseudonym)
        new = _rotated(bytes(entry.original_encrypted), ring, context)
        if new is not None:
            PseudonymMapEntry.objects.filter(pk=entry.pk).update(original_encrypted=new)
            changed += 1
    return changed + metadata.rotate(ring)


class Command(BaseCommand):
    help = ("Re-encrypt every stored object that is not under the current storage key. Idempotent: "
            "objects already under it are left untouched.")

    def add_arguments(self, parser):
        parser.add_argument("--dry-run", action="store_true", help="Count what would be re-encrypted; write nothing.")

    def handle(self, *args, dry_run=False, verbosity=1, **options):
        store = get_store()
        names = list(store.names())
        progress = tqdm(names, desc="rotating", unit="object", disable=verbosity < 1 or not names)
        report = rotate_all(store, progress, dry_run=dry_run)
        progress.close()
        verb = "would re-encrypt" if dry_run else "re-encrypted"
        self.stdout.write(f"{report.total} objects: {verb} {report.rotated}, already under key "
                          f"{store.ring.current_id!r} {report.current}, failed {len(report.failed)}.")
        secrets = 0 if dry_run else rotate_database_secrets(store.ring)
        self.stdout.write(f"{secrets} encrypted database values (project secrets, pseudonym map, instance "
                          "metadata) re-encrypted.")
        for name, why in report.failed:
            self.stderr.write(f"{name}: {why}")
        if report.failed:
            raise CommandError(f"{len(report.failed)} objects could not be re-encrypted; see above.")
