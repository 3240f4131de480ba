"""Put missing or lagging chain heads back on their shard's newest event (audited)."""

from django.core.management.base import BaseCommand, CommandError
from django.db import DatabaseError

from audit.trail import SHARD_COUNT, RestoreError, restore_head


class Command(BaseCommand):
    help = ("Re-establish the chain head of each shard whose head is missing or behind its newest event, "
            "recording an audit_head_restored event. Run audit_verify first: it names the shards. Needs the "
            "database role radqueue_retention (see docs/audit.md).")

    def add_arguments(self, parser):
        parser.add_argument("--shard", type=int, action="append", dest="shards", metavar="N",
                            help=f"Only this shard (0-{SHARD_COUNT - 1}); repeatable. Default: every shard.")

    def handle(self, *args, shards=None, **options):
        if shards and any(not 0 <= s < SHARD_COUNT for s in shards):
            raise CommandError(f"Shards are numbered 0 to {SHARD_COUNT - 1}.")
        restored, refused = [], []
        for shard in shards or range(SHARD_COUNT):
            try:
                result = restore_head(shard)
            except RestoreError as exc:
                refused.append(str(exc))
                continue
            except DatabaseError as exc:
                raise CommandError(f"Shard {shard}: the database refused to move the head ({exc}). Only a member "
                                   "of the role radqueue_retention may; see docs/audit.md.") from exc
            if result is not None:
                restored.append(result)
                was = "missing" if result.from_seq is None else f"at seq {result.from_seq}"
                self.stdout.write(f"shard {shard}: head {was} -> seq {result.to_seq} {result.hash}")
        for line in refused:
            self.stderr.write(line)
        self.stdout.write(self.style.SUCCESS(f"Restored {len(restored)} head(s)."))
        if refused:
            raise CommandError(f"{len(refused)} head(s) ahead of their chain were left as they are.")
