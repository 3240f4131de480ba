"""Re-encrypt stored objects under the current storage key (the first in RADQUEUE_STORAGE_KEYS)."""

from django.core.management.base import BaseCommand, CommandError
from tqdm import tqdm

from core.dicom.storage import get_store, rotate_all


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
        for name, why in report.failed:
            self.stderr.write(f"{name}: {why}")
        if report.failed:
            raise CommandError(f"{len(report.failed)} objects could not be re-encrypted; see above.")
