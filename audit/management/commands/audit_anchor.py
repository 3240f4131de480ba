"""Write a signed file of every audit chain's head, for audit_verify --anchor to check against later."""

from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from audit.head_anchor import AnchorError, anchor_file_name, write_anchor


class Command(BaseCommand):
    help = ("Write every audit chain's head (seq, hash) and the time, signed with RADQUEUE_AUDIT_ANCHOR_KEY, "
            "to a file; keep it off the database host. `audit_verify --anchor FILE` checks the trail against it.")

    def add_arguments(self, parser):
        parser.add_argument("--out", help="File to write (default: a time-stamped file in RADQUEUE_AUDIT_ANCHOR_DIR).")

    def handle(self, *args, out=None, **options):
        if out is None:
            if not settings.RADQUEUE_AUDIT_ANCHOR_DIR:
                raise CommandError("Give --out FILE, or set RADQUEUE_AUDIT_ANCHOR_DIR.")
            directory = Path(settings.RADQUEUE_AUDIT_ANCHOR_DIR)
            directory.mkdir(parents=True, exist_ok=True)
            out = directory / anchor_file_name(timezone.now())
        try:
            path = write_anchor(out)
        except (AnchorError, OSError) as exc:
            raise CommandError(f"No anchor written: {exc}") from exc
        self.stdout.write(self.style.SUCCESS(f"Anchored the audit chain heads in {path}."))
