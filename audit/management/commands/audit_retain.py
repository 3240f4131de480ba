"""Archive, verify and remove audit events older than the retention period, re-anchoring each chain."""

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from audit.retention import RetentionError, apply_retention


class Command(BaseCommand):
    help = ("Move audit events older than N days to verified JSONL archives (with SHA-256 files) and "
            "remove them from the database, re-anchoring each shard's hash chain.")

    def add_arguments(self, parser):
        parser.add_argument("--older-than-days", type=int, default=None,
                            help=f"Retention period in days (default AUDIT_RETENTION_DAYS, "
                                 f"now {settings.AUDIT_RETENTION_DAYS}).")
        parser.add_argument("--archive-dir", default=None,
                            help="Where archives are written (default DATA_DIR/audit-archive).")

    def handle(self, *args, older_than_days=None, archive_dir=None, **options):
        try:
            done = apply_retention(older_than_days, archive_dir)
        except (RetentionError, OSError) as exc:
            raise CommandError(f"Retention stopped: {exc}") from exc
        for r in done:
            self.stdout.write(f"shard {r.shard}: removed seq {r.first_seq}-{r.last_seq} ({r.removed} events) "
                              f"-> {r.archive} sha256 {r.sha256}")
        total = sum(r.removed for r in done)
        self.stdout.write(self.style.SUCCESS(f"Removed {total} events from {len(done)} shard(s)."))
