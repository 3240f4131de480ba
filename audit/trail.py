"""The audit trail: ``record_event`` (the one way in) and the hash chains that make it tamper-evident.

Design. Events form SHARD_COUNT independent hash chains. A writer picks its shard from its
process and thread (so the workers of one server rarely share a shard), locks that shard's
``AuditChainHead`` row, links the new event to the head (``prev_hash``), inserts it and moves the
head, all inside the caller's transaction. Concurrent writers therefore contend only when they
hash to the same shard, never on one global lock; a rolled-back write rolls its event and the
head move back with it, so no chain ever references an event that did not commit.

Each event's ``hash`` is SHA-256 over a canonical encoding (sorted-key compact JSON of every
field, the shard, the seq and ``prev_hash``). ``verify_chains`` recomputes every chain: an edited
field, a removed or inserted event, or a moved head all break a link. Retention
(``audit.retention``) removes a shard's oldest events only after archiving and verifying them,
and re-anchors the chain with a signed ``AuditAnchor``.

Lock order: the shard head is the last lock a transaction takes; services call
``record_event`` after their own row locks, so two transactions never wait on each other in a
cycle through it.

Clock: ``occurred_at`` is the application server's UTC clock (``django.utils.timezone.now``,
microseconds; servers are expected to run NTP). Order within a shard is ``seq``, not time.
"""

import hashlib
import hmac
import json
import os
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC

from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from audit import context
from audit.models import AuditAnchor, AuditChainHead, AuditEvent

SHARD_COUNT = 64
GENESIS = "0" * 64
HASHED_FIELDS = (
    "shard", "seq", "occurred_at", "actor_id", "actor_roles", "actor_tier", "action", "object_type",
    "object_id", "project_id", "study_uid", "protocol_version", "client_ip", "user_agent", "request_id",
    "outcome", "reason", "extra", "prev_hash",
)


def is_enabled() -> bool:
    return getattr(settings, "AUDIT_ENABLED", True)


def _shard_for_writer() -> int:
    return hash((os.getpid(), threading.get_ident())) % SHARD_COUNT


def canonical(values: dict) -> bytes:
    """The canonical encoding hashed for an event: compact JSON, sorted keys, ISO-8601 UTC time."""
    doc = {}
    for name in HASHED_FIELDS:
        value = values[name]
        if name == "occurred_at":
            value = value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        doc[name] = value
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def event_hash(values: dict) -> str:
    return hashlib.sha256(canonical(values)).hexdigest()


def _roles_of(actor, project_id) -> tuple[str, int | None]:
    from core.models import Membership
    from core.roles import READER_ROLE_TIERS

    if actor is None or project_id is None:
        return ("superuser" if actor is not None and actor.is_superuser else ""), None
    ctx = context.current()
    key = (actor.pk, project_id)
    if ctx is not None and key in ctx.roles_cache:
        return ctx.roles_cache[key]
    memberships = Membership.objects.filter(user_id=actor.pk, project_id=project_id, is_active=True)
    roles = sorted(memberships.values_list("role", flat=True))
    tiers = [READER_ROLE_TIERS[r] for r in roles if r in READER_ROLE_TIERS]
    result = (",".join(roles) or ("superuser" if actor.is_superuser else "")), (max(tiers) if tiers else None)
    if ctx is not None:
        ctx.roles_cache[key] = result
    return result


def record_event(action: str, *, actor=None, project=None, project_id=None, obj=None, object_type: str = "",
                 object_id="", study_uid: str = "", protocol_version: int | None = None,
                 outcome: str = AuditEvent.Outcome.ALLOWED, reason: str = "", extra: dict | None = None,
                 roles: tuple[str, int | None] | None = None) -> AuditEvent | None:
    """Append one event inside the caller's transaction (a rollback removes it). Never holds PHI."""
    if not is_enabled():
        return None
    if actor is not None and not getattr(actor, "is_authenticated", False):
        actor = None
    if project is not None:
        project_id = project.pk
    if obj is not None:
        object_type = object_type or obj._meta.label_lower
        object_id = object_id or obj.pk
    actor_roles, actor_tier = roles if roles is not None else _roles_of(actor, project_id)
    ctx = context.current() or context.RequestContext()
    values = {
        "occurred_at": timezone.now(),
        "actor_id": actor.pk if actor is not None else None,
        "actor_roles": actor_roles[:200],
        "actor_tier": int(actor_tier) if actor_tier is not None else None,
        "action": action,
        "object_type": object_type,
        "object_id": str(object_id) if object_id not in (None, "") else "",
        "project_id": project_id,
        "study_uid": study_uid or "",
        "protocol_version": protocol_version,
        "client_ip": ctx.client_ip,
        "user_agent": ctx.user_agent,
        "request_id": ctx.request_id,
        "outcome": str(outcome),
        "reason": (reason or "")[:300],
        "extra": extra or {},
    }
    shard = _shard_for_writer()
    with transaction.atomic(savepoint=False):
        head = AuditChainHead.objects.select_for_update().filter(shard=shard).first()
        if head is None:  # heads are created by migration; this covers a flushed test database
            AuditChainHead.objects.get_or_create(shard=shard, defaults={"seq": 0, "hash": GENESIS})
            head = AuditChainHead.objects.select_for_update().get(shard=shard)
        values.update(shard=shard, seq=head.seq + 1, prev_hash=head.hash)
        values["hash"] = event_hash(values)
        event = AuditEvent.objects.create(**values)
        AuditChainHead.objects.filter(shard=shard).update(seq=values["seq"], hash=values["hash"])
    return event


# --- verification ---------------------------------------------------------------------------

@dataclass
class Break:
    shard: int
    event_id: int | None
    seq: int | None
    expected: str
    found: str
    what: str

    def __str__(self) -> str:
        where = f"shard {self.shard}"
        if self.event_id:
            where = f"event {self.event_id} (shard {self.shard}, seq {self.seq})"
        return f"{where}: {self.what}: expected {self.expected}, found {self.found}"


@dataclass
class VerifyResult:
    events: int
    shards: int
    breaks: list[Break]

    @property
    def ok(self) -> bool:
        return not self.breaks


def anchor_signature(shard: int, seq: int, hash_: str, archive: str) -> str:
    key = hashlib.sha256(("radqueue-audit-anchor:" + settings.SECRET_KEY).encode()).digest()
    return hmac.new(key, f"{shard}:{seq}:{hash_}:{archive}".encode(), hashlib.sha256).hexdigest()


def _rows(shard: int, after_seq: int, chunk: int = 5000) -> Iterator[dict]:
    fields = ["id", "hash", *HASHED_FIELDS]
    qs = AuditEvent.objects.filter(shard=shard, seq__gt=after_seq).order_by("seq").values(*fields)
    return qs.iterator(chunk_size=chunk)


def verify_shard(shard: int) -> tuple[int, Break | None]:
    """Recompute one shard's chain; the count checked and the first broken link, if any."""
    anchor = AuditAnchor.objects.filter(shard=shard).first()
    expected_prev, expected_seq = GENESIS, 1
    if anchor is not None:
        signature = anchor_signature(shard, anchor.seq, anchor.hash, anchor.archive)
        if not hmac.compare_digest(anchor.signature, signature):
            return 0, Break(shard, None, anchor.seq, "a valid anchor signature", anchor.signature, "anchor signature")
        expected_prev, expected_seq = anchor.hash, anchor.seq + 1
    count = 0
    for row in _rows(shard, expected_seq - 1):
        count += 1
        if row["seq"] != expected_seq:
            return count, Break(shard, row["id"], row["seq"], f"seq {expected_seq}", f"seq {row['seq']}",
                                "missing event before this one")
        if row["prev_hash"] != expected_prev:
            return count, Break(shard, row["id"], row["seq"], expected_prev, row["prev_hash"], "prev_hash")
        recomputed = event_hash(row)
        if recomputed != row["hash"]:
            return count, Break(shard, row["id"], row["seq"], recomputed, row["hash"], "event hash")
        expected_prev, expected_seq = row["hash"], expected_seq + 1
    head = AuditChainHead.objects.filter(shard=shard).first()
    if head is not None and (head.seq != expected_seq - 1 or head.hash != expected_prev):
        return count, Break(shard, None, head.seq, f"head at seq {expected_seq - 1} {expected_prev}",
                            f"head at seq {head.seq} {head.hash}", "chain head (events removed from the end?)")
    return count, None


def verify_chains(shards: Iterable[int] | None = None) -> VerifyResult:
    shards = list(range(SHARD_COUNT)) if shards is None else list(shards)
    total, breaks = 0, []
    for shard in shards:
        count, brk = verify_shard(shard)
        total += count
        if brk is not None:
            breaks.append(brk)
    return VerifyResult(events=total, shards=len(shards), breaks=breaks)


def db_supports_triggers() -> bool:
    return connection.vendor == "postgresql"
