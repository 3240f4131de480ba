"""Retention: remove a shard's oldest events only after archiving them and verifying the archive.

For each shard, the events to remove are a prefix of its chain: every seq up to the highest seq
among the shard's events older than the cutoff. ``occurred_at`` is the application server's UTC
clock (see audit.trail), so times within a shard may step back a little; seq is the order, and a
slightly newer event before an old one leaves with it. The prefix is written to a JSONL archive,
which is then re-read and verified link by link from the shard's current anchor (or genesis); a
SHA-256 of the archive is written beside it. Only then, in one transaction, are the events deleted, the
shard's ``AuditAnchor`` moved to the last removed event (signed) and an ``audit_retention`` event
recorded, so a failure at any step leaves the chain as it was.
"""

import hashlib
import hmac
import json
import os
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from django.conf import settings
from django.db import connection, transaction
from django.db.models import Max
from django.utils import timezone

from audit.export import documents, format_time, to_json_line, values_from_document
from audit.models import AuditAnchor, AuditEvent
from audit.trail import GENESIS, SHARD_COUNT, anchor_signature, event_hash, record_event


class RetentionError(RuntimeError):
    pass


@dataclass
class ShardRetention:
    shard: int
    first_seq: int
    last_seq: int
    removed: int
    archive: str
    sha256: str


def _chain_start(shard: int) -> tuple[int, str]:
    """(seq, hash) the shard's remaining chain hangs from: its anchor, else genesis."""
    anchor = AuditAnchor.objects.filter(shard=shard).first()
    if anchor is None:
        return 0, GENESIS
    if not hmac.compare_digest(anchor.signature, anchor_signature(shard, anchor.seq, anchor.hash, anchor.archive)):
        raise RetentionError(f"Shard {shard}: the anchor's signature is wrong; run audit_verify.")
    return anchor.seq, anchor.hash


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_archive(path: Path, shard: int, after_seq: int, after_hash: str) -> tuple[int, int, str]:
    """Re-read an archive and check every link; (count, last seq, last hash)."""
    seq, prev = after_seq, after_hash
    count = 0
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            doc = json.loads(line)
            values = values_from_document(doc)
            problem = None
            if doc["shard"] != shard:
                problem = f"shard {doc['shard']}"
            elif doc["seq"] != seq + 1:
                problem = f"seq {doc['seq']} where {seq + 1} was due"
            elif doc["prev_hash"] != prev:
                problem = "prev_hash does not link to the previous event"
            elif event_hash(values) != doc["hash"]:
                problem = "the event hash does not match its fields"
            if problem:
                raise RetentionError(f"Archive {path} line {number} (event {doc['id']}): {problem}.")
            seq, prev = doc["seq"], doc["hash"]
            count += 1
    return count, seq, prev


def _write_archive(shard: int, after_seq: int, last_seq: int, archive_dir: Path, now: datetime) -> Path:
    path = archive_dir / f"audit-shard{shard:02d}-seq{after_seq + 1}-{last_seq}-{now:%Y%m%dT%H%M%SZ}.jsonl"
    if path.exists():
        raise RetentionError(f"{path} exists already; not overwriting an archive.")
    partial = path.with_name(path.name + ".partial")
    qs = AuditEvent.objects.filter(shard=shard, seq__gt=after_seq, seq__lte=last_seq).order_by("seq")
    try:
        with open(partial, "w", encoding="utf-8") as out:
            for doc in documents(qs):
                out.write(to_json_line(doc))
            out.flush()
            os.fsync(out.fileno())
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    partial.rename(path)
    return path


def _delete_prefix(shard: int, after_seq: int, last_seq: int) -> int:
    # The model and queryset refuse deletes, and the database's trigger allows them only while
    # this transaction-local setting is on and only to a member of radqueue_retention.
    table = connection.ops.quote_name(AuditEvent._meta.db_table)
    with connection.cursor() as cursor:
        cursor.execute("SET LOCAL radqueue.audit_retention = 'on'")
        cursor.execute(f"DELETE FROM {table} WHERE shard = %s AND seq > %s AND seq <= %s",
                       [shard, after_seq, last_seq])
        removed = cursor.rowcount
        cursor.execute("SET LOCAL radqueue.audit_retention = 'off'")
    return removed


def retain_shard(shard: int, cutoff: datetime, archive_dir: Path, now: datetime) -> ShardRetention | None:
    """Archive, verify and remove the prefix of one shard's chain older than ``cutoff``."""
    after_seq, after_hash = _chain_start(shard)
    last_seq = (AuditEvent.objects.filter(shard=shard, seq__gt=after_seq, occurred_at__lt=cutoff)
                .aggregate(last=Max("seq"))["last"])
    if last_seq is None:
        return None
    path = _write_archive(shard, after_seq, last_seq, archive_dir, now)
    count, verified_seq, last_hash = verify_archive(path, shard, after_seq, after_hash)
    if count != last_seq - after_seq or verified_seq != last_seq:
        raise RetentionError(f"Archive {path} holds seq {after_seq + 1}-{verified_seq} ({count} events); "
                             f"expected up to {last_seq}.")
    checksum = _file_sha256(path)
    Path(f"{path}.sha256").write_text(f"{checksum}  {path.name}\n", encoding="utf-8")
    archive = str(path.resolve())
    with transaction.atomic():
        # A concurrent retention run may have moved the anchor since the archive was written.
        anchor = AuditAnchor.objects.select_for_update().filter(shard=shard).first()
        if (anchor.seq if anchor else 0) != after_seq:
            raise RetentionError(f"Shard {shard}: the anchor moved while archiving; run retention again.")
        removed = _delete_prefix(shard, after_seq, last_seq)
        if removed != count:
            raise RetentionError(f"Shard {shard}: {removed} events matched for deletion, {count} archived.")
        AuditAnchor.objects.update_or_create(shard=shard, defaults={
            "seq": last_seq, "hash": last_hash, "archive": archive,
            "signature": anchor_signature(shard, last_seq, last_hash, archive),
        })
        record_event("audit_retention", object_type="audit.auditanchor", object_id=shard, extra={
            "shard": shard, "removed": removed, "first_seq": after_seq + 1, "last_seq": last_seq,
            "cutoff": format_time(cutoff), "archive": archive, "sha256": checksum,
        })
    return ShardRetention(shard, after_seq + 1, last_seq, removed, archive, checksum)


RETENTION_ROLE = "radqueue_retention"


def _check_retention_role() -> None:
    """Fail before archiving anything where the database would refuse the deletes: only a member
    of the retention role (audit migration 0004) may remove events and move anchors, so the
    application's own credentials cannot cut the trail (docs/audit.md)."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT current_user, pg_has_role(current_user, %s, 'MEMBER')", [RETENTION_ROLE])
        user, member = cursor.fetchone()
    if not member:
        raise RetentionError(f"the database role {user!r} is not a member of {RETENTION_ROLE}; run audit_retain "
                             f"with the retention credentials (DATABASE_URL of a role granted {RETENTION_ROLE}).")


def apply_retention(older_than_days: int | None = None, archive_dir: str | Path | None = None,
                    shards=None) -> list[ShardRetention]:
    """Archive and remove every shard's events older than ``older_than_days`` (default the setting)."""
    days = settings.AUDIT_RETENTION_DAYS if older_than_days is None else older_than_days
    if days < 0:
        raise RetentionError("older_than_days cannot be negative.")
    _check_retention_role()
    directory = Path(archive_dir) if archive_dir is not None else Path(settings.DATA_DIR) / "audit-archive"
    directory.mkdir(parents=True, exist_ok=True)
    now = timezone.now()
    cutoff = now - timedelta(days=days)
    done = []
    for shard in range(SHARD_COUNT) if shards is None else shards:
        result = retain_shard(shard, cutoff, directory, now)
        if result is not None:
            done.append(result)
    return done
