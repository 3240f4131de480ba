"""Recompute every audit hash chain; exit non-zero and name the first broken link of each shard."""

import time

from django.core.management.base import BaseCommand, CommandError

from audit.head_anchor import AnchorError, check_anchor
from audit.trail import SHARD_COUNT, verify_chains


class Command(BaseCommand):
    help = "Verify the audit trail's hash chains (every event, every shard, the heads and anchors)."

    def add_arguments(self, parser):
        parser.add_argument("--shard", type=int, action="append", dest="shards", metavar="N",
                            help=f"Verify only this shard (0-{SHARD_COUNT - 1}); repeatable.")
        parser.add_argument("--anchor", action="append", dest="anchors", metavar="FILE",
                            help="Also check the trail against a head anchor written by audit_anchor; repeatable.")

    def handle(self, *args, shards=None, anchors=None, **options):
        if shards and any(not 0 <= s < SHARD_COUNT for s in shards):
            raise CommandError(f"Shards are numbered 0 to {SHARD_COUNT - 1}.")
        started = time.perf_counter()
        result = verify_chains(shards)
        for path in anchors or ():
            try:
                result.breaks.extend(check_anchor(path, shards))
            except AnchorError as exc:
                raise CommandError(f"Audit trail NOT verified against {path}: {exc}") from exc
        elapsed = time.perf_counter() - started
        summary = f"{result.events} events checked in {result.shards} shards in {elapsed:.2f} s"
        if result.ok:
            self.stdout.write(self.style.SUCCESS(f"Audit trail intact: {summary}."))
            return
        for brk in result.breaks:
            self.stderr.write(f"BROKEN {brk}")
        raise CommandError(f"Audit trail BROKEN in {len({b.shard for b in result.breaks})} shard(s): {summary}.")
