"""Head anchors: a signed file of every chain's head, kept outside the database.

The database alone cannot prove that a chain was not cut back: whoever can rewrite the newest
events and the head consistently leaves a chain that verifies. A head anchor records each shard's
(seq, hash) at one moment, signed with HMAC-SHA256 under RADQUEUE_AUDIT_ANCHOR_KEY (a key the
database never sees). ``check_anchor`` then fails where a shard is now behind its anchored seq or
the event at that seq has another hash, so anything recorded before the anchor cannot go
missing or change unseen. See docs/audit.md for where the files and the key must live.
"""

import hashlib
import hmac
import json
import os
from datetime import UTC, datetime
from pathlib import Path

from django.conf import settings
from django.utils import timezone

from audit.models import AuditAnchor, AuditChainHead, AuditEvent
from audit.trail import Break

FORMAT = "radqueue-audit-heads/1"


class AnchorError(RuntimeError):
    pass


def _key() -> bytes:
    key = settings.RADQUEUE_AUDIT_ANCHOR_KEY
    if not key:
        raise AnchorError("RADQUEUE_AUDIT_ANCHOR_KEY is not set: head anchors cannot be signed or checked.")
    return key.encode()


def _signature(body: dict) -> str:
    signed = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    return hmac.new(_key(), signed, hashlib.sha256).hexdigest()


def current_heads() -> dict:
    """The signed document of every shard's head now."""
    heads = {str(shard): {"seq": seq, "hash": hash_}
             for shard, seq, hash_ in AuditChainHead.objects.order_by("shard").values_list("shard", "seq", "hash")}
    body = {"format": FORMAT, "created_at": timezone.now().astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            "heads": heads}
    return {**body, "signature": _signature(body)}


def write_anchor(path: str | Path) -> Path:
    """Write the head document to ``path`` (whole or not at all: a reader never sees half a file)."""
    path = Path(path)
    doc = current_heads()
    partial = path.with_name(path.name + ".partial")
    with open(partial, "w", encoding="utf-8") as out:
        json.dump(doc, out, sort_keys=True, indent=1)
        out.write("\n")
        out.flush()
        os.fsync(out.fileno())
    partial.replace(path)
    return path


def anchor_file_name(moment: datetime) -> str:
    return f"audit-heads-{moment.astimezone(UTC):%Y%m%dT%H%M%SZ}.json"


def load_anchor(path: str | Path) -> dict:
    """The anchor's heads, {shard: (seq, hash)}, after checking its signature."""
    try:
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
        signature = doc.pop("signature")
        heads = {int(shard): (int(head["seq"]), str(head["hash"])) for shard, head in doc["heads"].items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise AnchorError(f"{path} is not a head anchor file: {exc}") from exc
    if doc.get("format") != FORMAT:
        raise AnchorError(f"{path}: unknown format {doc.get('format')!r}.")
    if not isinstance(signature, str) or not hmac.compare_digest(signature, _signature(doc)):
        raise AnchorError(f"{path}: the signature is wrong (the file was changed, or another key signed it).")
    return heads


def check_anchor(path: str | Path, shards=None) -> list[Break]:
    """Where the trail now disagrees with the anchored heads (behind, or another event at that seq)."""
    breaks = []
    heads = {h.shard: h for h in AuditChainHead.objects.all()}
    for shard, (seq, hash_) in sorted(load_anchor(path).items()):
        if seq == 0 or (shards is not None and shard not in shards):
            continue
        expected = f"seq {seq} {hash_} (anchored)"
        head = heads.get(shard)
        if head is None or head.seq < seq:
            found = "no head row" if head is None else f"head at seq {head.seq}"
            breaks.append(Break(shard, None, seq, expected, found, "chain behind its head anchor (events removed?)"))
            continue
        event = AuditEvent.objects.filter(shard=shard, seq=seq).values("id", "hash").first()
        if event is None:
            # Retention may have archived it since; its anchor then names the last removed event.
            retained = AuditAnchor.objects.filter(shard=shard).first()
            if retained is not None and retained.seq > seq:
                continue
            if retained is not None and retained.seq == seq:
                event = {"id": None, "hash": retained.hash}
            else:
                breaks.append(Break(shard, None, seq, expected, "no event at that seq", "anchored event missing"))
                continue
        if event["hash"] != hash_:
            breaks.append(Break(shard, event["id"], seq, expected, event["hash"], "anchored event replaced"))
    return breaks
