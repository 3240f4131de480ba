"""The audit trail: ``record_event`` (the one way in) and the hash chains that make it tamper-evident.

Design. Events form SHARD_COUNT independent hash chains. A writer picks its shard from its
process and thread (the workers of one server do not share one: _shard_for_writer), locks that
shard's ``AuditChainHead`` row, links the new event to the head (``prev_hash``), inserts it and moves the
head, all inside the caller's transaction. Concurrent writers therefore contend only when they
land on the same shard, never on one global lock; a rolled-back write rolls its event and the
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

import functools
import hashlib
import hmac
import itertools
import json
import logging
import os
import threading
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC

from django.conf import settings
from django.db import DEFAULT_DB_ALIAS, connection, connections, transaction
from django.utils import timezone

from audit import context
from audit.models import AuditAnchor, AuditChainHead, AuditEvent
from pgsql import prepared

logger = logging.getLogger(__name__)

SHARD_COUNT = 64
GENESIS = "0" * 64
HASHED_FIELDS = (
    "shard", "seq", "occurred_at", "actor_id", "actor_roles", "actor_tier", "action", "object_type",
    "object_id", "project_id", "study_uid", "protocol_version", "client_ip", "user_agent", "request_id",
    "outcome", "reason", "extra", "prev_hash",
)


def is_enabled() -> bool:
    return getattr(settings, "AUDIT_ENABLED", True)


_THREADS_PER_PROCESS = 8
_writer = threading.local()
_thread_numbers = itertools.count()


def _shard_for_writer() -> int:
    """The chain this thread appends to: its process id times 8 plus the thread's number in the
    process (0, 1, 2, ... in the order threads first append), modulo the shard count. A server
    forks its workers one after another, so their process ids run on: up to 8 workers of up to
    8 threads each, or one process of 64 threads, get 64 different chains, and concurrent writers
    do not queue on one chain head's row lock (held to their commit). A hash of (pid, thread)
    put two of four workers on one chain at 9 % of server starts."""
    number = getattr(_writer, "number", None)
    if number is None:
        number = _writer.number = next(_thread_numbers)
    return (os.getpid() * _THREADS_PER_PROCESS + number) % SHARD_COUNT


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


@dataclass(frozen=True)
class RoleSource:
    """Where an event's actor roles come from: the membership table (``table``, its user and
    project columns, active rows) and the tier of each reader role. The trail imports no other
    app; core says this at start-up (core.apps) with ``use_roles``."""

    table: str
    user_column: str
    project_column: str
    reader_tiers: dict[str, int]


_ROLE_SOURCE: list[RoleSource] = []


def use_roles(source: RoleSource) -> None:
    _ROLE_SOURCE[:] = [source]
    _append_statement.cache_clear()


def _roles_source() -> RoleSource:
    if not _ROLE_SOURCE:
        raise RuntimeError("audit.trail.use_roles was not called: the app that owns memberships says where "
                           "roles live at start-up (core.apps.CoreConfig.ready)")
    return _ROLE_SOURCE[0]


def _known_roles(actor, project_id) -> tuple[str, int | None] | None:
    """The actor's roles when no query is needed (no actor or project, or cached this request)."""
    if actor is None or project_id is None:
        return ("superuser" if actor is not None and actor.is_superuser else ""), None
    ctx = context.current()
    return ctx.roles_cache.get((actor.pk, project_id)) if ctx is not None else None


def _remember_roles(actor, project_id, roles: tuple[str, int | None]) -> None:
    ctx = context.current()
    if ctx is not None and actor is not None and project_id is not None:
        ctx.roles_cache[(actor.pk, project_id)] = roles


def _roles_of(actor, project_id) -> tuple[str, int | None]:
    """(comma-joined active roles on the project, highest reader tier); "superuser" for a superuser
    without a role there."""
    known = _known_roles(actor, project_id)
    if known is not None:
        return known
    source = _roles_source()
    table, user, project, reader_tiers = (source.table, source.user_column, source.project_column,
                                          source.reader_tiers)
    with connection.cursor() as cursor:  # raw SQL: the ORM's query building costs more than the query
        cursor.execute(f"SELECT role FROM {table} WHERE {user} = %s AND {project} = %s AND is_active",
                       [actor.pk, project_id])
        roles = sorted(role for (role,) in cursor.fetchall())
    tiers = [reader_tiers[r] for r in roles if r in reader_tiers]
    result = (",".join(roles) or ("superuser" if actor.is_superuser else "")), (max(tiers) if tiers else None)
    _remember_roles(actor, project_id, result)
    return result


def _tier(tier) -> int | None:
    return int(tier) if tier is not None else None


def record_event(action: str, *, actor=None, project=None, project_id=None, obj=None, object_type: str = "",
                 object_id="", study_uid: str = "", protocol_version: int | None = None,
                 outcome: str = AuditEvent.Outcome.ALLOWED, reason: str = "", extra: dict | None = None,
                 roles: tuple[str, int | None] | None = None) -> AuditEvent | None:
    """Append one event inside the caller's transaction (a rollback removes it). Never holds PHI."""
    if not is_enabled():
        return None
    db = connections[DEFAULT_DB_ALIAS]
    actor, project_id, roles, values = _event_values(
        db, action, actor=actor, project=project, project_id=project_id, obj=obj, object_type=object_type,
        object_id=object_id, study_uid=study_uid, protocol_version=protocol_version, outcome=outcome, reason=reason,
        extra=extra, roles=roles)
    shard = _shard_for_writer()
    lookup = (actor, project_id) if roles is None else None
    # One statement: atomic by itself, and part of the caller's transaction when there is one.
    event = _append_postgresql(db, shard, values, lookup)
    if event is not None:
        return event
    # The shard has no chain head row (a flushed test database, or one removed): find or create the
    # head to append to, locked, and append there, in one transaction.
    with transaction.atomic(savepoint=False):
        event = _append_postgresql(db, _head_for_writer(shard).shard, values, lookup)
    if event is None:
        raise RuntimeError("the audit chain head locked for this event is gone")
    return event


def _event_values(db, action, *, actor, project, project_id, obj, object_type, object_id, study_uid, protocol_version,
                  outcome, reason, extra, roles) -> tuple:
    """(actor, project id, roles or None where PostgreSQL looks them up itself, the event's values)."""
    if actor is not None and not getattr(actor, "is_authenticated", False):
        actor = None
    if project is not None:
        project_id = project.pk
    if obj is not None:
        object_type = object_type or obj._meta.label_lower
        object_id = object_id or obj.pk
    if roles is None:
        roles = _known_roles(actor, project_id)  # None: the append looks them up itself
    ctx = context.current() or context.RequestContext()
    values = {
        "occurred_at": timezone.now(),
        "actor_id": actor.pk if actor is not None else None,
        "actor_roles": roles[0][:200] if roles is not None else "",
        "actor_tier": _tier(roles[1]) if roles is not None else None,
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
    return actor, project_id, roles, values


def _head_for_writer(shard: int) -> AuditChainHead:
    """The locked head to append to where the writer's shard's head row was not found: the writer's
    shard's, created at genesis where the shard holds nothing, else the next shard's
    that has one. A head at genesis on a shard with events would hand out seq 1 again and every
    append there would fail on the (shard, seq) key; the shard stays as it was instead, for
    audit_verify to report and audit_restore_head to repair."""
    head = AuditChainHead.objects.select_for_update().filter(shard=shard).first()
    if head is not None:
        return head
    if not (AuditEvent.objects.filter(shard=shard).exists() or AuditAnchor.objects.filter(shard=shard).exists()):
        AuditChainHead.objects.get_or_create(shard=shard, defaults={"seq": 0, "hash": GENESIS})
        return AuditChainHead.objects.select_for_update().get(shard=shard)
    # A writer that created the head since committed it with its first event: look once more.
    head = AuditChainHead.objects.select_for_update().filter(shard=shard).first()
    if head is not None:
        return head
    for step in range(1, SHARD_COUNT):
        head = AuditChainHead.objects.select_for_update().filter(shard=(shard + step) % SHARD_COUNT).first()
        if head is not None:
            logger.error("audit chain head of shard %s is missing while the shard has events; appending to "
                         "shard %s (run audit_verify, then audit_restore_head)", shard, head.shard)
            return head
    raise RuntimeError("No audit chain head exists on any shard that holds events; run audit_restore_head.")


# --- the one-statement append ----------------------------------------------------------------
#
# One round trip per event: look up the actor's roles (unless known), move the shard's head with
# one UPDATE (its row lock waits for the shard's previous writer; the event's hash is computed in
# SQL from the head that writer committed) and insert the event. Python builds the canonical text with
# stand-ins for the values only the database knows at that moment (prev_hash and seq, and the
# roles when looked up); SQL splices in their JSON encodings (to_json escapes exactly as
# json.dumps(ensure_ascii=False) does) and hashes the same bytes event_hash would, so
# verification is unchanged and checks this path. Roles are aggregated as _roles_of does:
# sorted by code point (COLLATE "C"), comma-joined, highest reader tier. The statement is
# prepared once per database session where connections are kept (pgsql.prepared.execute_prepared:
# prepared statements outlive rollbacks; a pooler in transaction mode would need session pooling
# for this). _append_statement builds its CTEs, which embedded_event below also puts into the
# caller's own statement.

_PG_VALUE_ARGS = (
    ("occurred_at", "timestamptz"), ("actor_id", "bigint"), ("actor_roles", "text"), ("actor_tier", "smallint"),
    ("action", "text"), ("object_type", "text"), ("object_id", "text"), ("project_id", "bigint"),
    ("study_uid", "text"), ("protocol_version", "integer"), ("client_ip", "inet"), ("user_agent", "text"),
    ("request_id", "text"), ("outcome", "text"), ("reason", "text"), ("extra", "jsonb"),
)
_STAND_IN = {name: f"{name}-{uuid.uuid4().hex}" for name in ("actor_roles", "actor_tier", "prev_hash", "seq")}


# --- the append inside one of the caller's statements ----------------------------------------
#
# The same append as CTEs of a statement the caller runs anyway (the submit's count of its
# task): one round trip and one statement start fewer per event, about a fifth of an event's
# cost. The head's UPDATE reads the caller's CTE ``after`` (one row), so it runs after that CTE's
# row locks are taken: the shard head stays a transaction's last lock.


@dataclass
class EmbeddedEvent:
    sql: str  # CTEs audit_roles (when roles are looked up), audit_head and audit_event
    args: dict  # by placeholder name (%(audit_<name>)s::type)
    shard: int


# An SQL condition that holds when an embedded event will be appended: its shard's chain head
# exists. A statement that must not change anything unless its event goes in with it puts this in
# its own WHERE (with the event's arguments, which name the shard).
HEAD_EXISTS = "EXISTS (SELECT 1 FROM audit_auditchainhead WHERE shard = %(audit_shard)s::smallint)"


def embedded_event(action: str, *, after: str, actor=None, project_id=None, obj=None, object_type: str = "",
                   object_id="", study_uid: str = "", protocol_version: int | None = None,
                   extra: dict | None = None, from_statement: dict[str, str] | None = None,
                   extra_from_statement: dict[str, str] | None = None) -> EmbeddedEvent | None:
    """record_event's append as CTEs to put in one of the caller's own statements, after its CTE
    ``after`` (which must yield one row). ``from_statement`` gives fields the statement itself
    produces (object_id, study_uid, protocol_version) as SQL expressions over ``after``'s columns,
    ``extra_from_statement`` keys of ``extra`` the same way; their JSON goes into the hashed text
    in SQL, as the head's seq and hash do. The caller checks ``(SELECT count(*) FROM
    audit_event)`` and calls record_event where it is 0 (no head row for the shard: a flushed
    test database). None where record_event must append instead: the trail is off, or a value
    holds a stand-in."""
    db = connections[DEFAULT_DB_ALIAS]
    if not is_enabled():
        return None
    sql_fields, sql_extra = from_statement or {}, extra_from_statement or {}
    assert set(sql_fields) <= {"object_id", "study_uid", "protocol_version", "project_id", "actor_roles",
                               "actor_tier"}, sql_fields
    # Roles come from the statement together or not at all (then they are known or looked up).
    assert ("actor_roles" in sql_fields) == ("actor_tier" in sql_fields), sql_fields
    actor, project_id, roles, values = _event_values(
        db, action, actor=actor, project=None, project_id=project_id, obj=obj, object_type=object_type,
        object_id=object_id, study_uid=study_uid, protocol_version=protocol_version,
        outcome=AuditEvent.Outcome.ALLOWED, reason="", extra=extra, roles=None)
    shard = _shard_for_writer()
    lookup = roles is None and "actor_roles" not in sql_fields
    names = [*(("actor_roles", "actor_tier") if lookup else ()), "prev_hash", "seq", *sql_fields,
             *(f"extra.{key}" for key in sql_extra)]
    hashed = {**values, "shard": shard, **{name: _stand_in(name) for name in names if "." not in name},
              "extra": {**values["extra"], **{key: _stand_in(f"extra.{key}") for key in sql_extra}}}
    cut = _cut(canonical(hashed).decode(), names)
    if cut is None:
        return None
    holes, pieces = cut
    sql, arg_names = _append_statement(lookup, after, holes, tuple(sql_fields.items()), tuple(sql_extra.items()))
    args = dict(values, shard=shard, extra=json.dumps(values["extra"], ensure_ascii=False),
                **{f"piece{i}": piece for i, piece in enumerate(pieces)})
    if lookup:
        args["superuser_fallback"] = "superuser" if actor.is_superuser else ""
    return EmbeddedEvent(sql, {f"audit_{name}": args[name] for name in arg_names}, shard)


def _stand_in(name: str) -> str:
    return _STAND_IN.get(name) or _STAND_IN.setdefault(name, f"{name}-{uuid.uuid4().hex}")


@functools.cache
def _append_statement(lookup_roles: bool, after: str | None, holes: tuple[str, ...], sql_fields: tuple = (),
                      sql_extra: tuple = ()) -> tuple[str, tuple[str, ...]]:
    """(the append's CTEs, the names of their arguments), with typed placeholders named
    ``%(audit_<name>)s``: audit_roles (when roles are looked up), audit_head and audit_event, which
    returns the stored event's id, seq, prev_hash, hash and roles. ``holes``: the stand-in fields
    in the order their values appear in the hashed text. ``after``: the caller's CTE the head's
    UPDATE reads (embedded_event), or None for the stand-alone append."""
    assert after is None or after.isidentifier(), after  # spliced into SQL, as are the expressions (code)
    names: list[str] = []

    def arg(name: str, kind: str) -> str:
        if name not in names:
            names.append(name)
        return f"%(audit_{name})s::{kind}"

    roles_cte = ""
    if lookup_roles:
        source = _roles_source()
        table, user, project = source.table, source.user_column, source.project_column
        for role in source.reader_tiers:
            assert role.isidentifier() and role.islower(), role  # spliced into SQL below
        tiers = " ".join(f"WHEN '{role}' THEN {int(tier)}" for role, tier in source.reader_tiers.items())
        roles_cte = f"""audit_roles AS (
    SELECT left(coalesce(nullif(string_agg(role, ',' ORDER BY role COLLATE "C"), ''),
                         {arg("superuser_fallback", "text")}), 200) AS names,
           max(CASE role {tiers} END)::smallint AS tier
    FROM {table} WHERE {user} = {arg("actor_id", "bigint")} AND {project} = {arg("project_id", "bigint")}
      AND is_active
), """
    encoded = {"actor_roles": "to_json(audit_roles.names)::text",
               "actor_tier": "coalesce(audit_roles.tier::text, 'null')",
               "prev_hash": "to_json(prev.hash)::text", "seq": "(prev.seq + 1)::text",
               # to_json of NULL is NULL, which would make the whole text NULL; json.dumps(None) is null.
               **{name: f"coalesce(to_json({expr})::text, 'null')" for name, expr in sql_fields},
               **{f"extra.{key}": f"coalesce(to_json({expr})::text, 'null')" for key, expr in sql_extra}}
    text = arg("piece0", "text") + "".join(f" || {encoded[hole]} || {arg(f'piece{i + 1}', 'text')}"
                                           for i, hole in enumerate(holes))
    sources = [*(["audit_roles"] if lookup_roles else []), *([after] if after else [])]
    returned = ["prev.seq", "prev.hash", "prev.prev_hash", *(["audit_roles.names", "audit_roles.tier"] if lookup_roles
                                                             else []), *([f"{after}.*"] if after else [])]
    head = f"""audit_head AS (
    UPDATE {AuditChainHead._meta.db_table} AS prev
    SET seq = prev.seq + 1, prev_hash = prev.hash, hash = encode(sha256(convert_to({text}, 'UTF8')), 'hex')
    {f"FROM {', '.join(sources)}" if sources else ""}
    WHERE prev.shard = {arg("shard", "smallint")}
    RETURNING {", ".join(returned)}
), """
    shard = arg("shard", "smallint")
    from_statement = dict(sql_fields)
    selected = []
    for name, kind in _PG_VALUE_ARGS:
        if lookup_roles and name in ("actor_roles", "actor_tier"):
            selected.append(f"audit_head.{'names' if name == 'actor_roles' else 'tier'}")
        elif name in from_statement:
            selected.append(f"({from_statement[name].replace(f'{after}.', 'audit_head.')})::{kind}")
        elif name == "extra" and sql_extra:
            pairs = ", ".join(f"'{key}', {expr.replace(f'{after}.', 'audit_head.')}" for key, expr in sql_extra)
            selected.append(f"({arg('extra', 'jsonb')} || jsonb_build_object({pairs}))")
        else:
            selected.append(arg(name, kind))
    columns = ", ".join(name for name, _ in _PG_VALUE_ARGS)
    event = f"""audit_event AS (
    INSERT INTO {AuditEvent._meta.db_table} (shard, seq, prev_hash, hash, {columns})
    SELECT {shard}, audit_head.seq, audit_head.prev_hash, audit_head.hash, {", ".join(selected)}
    FROM audit_head
    RETURNING id, seq, prev_hash, hash, actor_roles, actor_tier
)"""
    return roles_cte + head + event, tuple(names)


def _cut(text: str, names: list[str], stand_ins: dict[str, str] | None = None
         ) -> tuple[tuple[str, ...], list[str]] | None:
    """(the stand-in fields in the order their stand-ins appear in the canonical ``text``, the
    text cut where each one's JSON value goes); None if a stand-in is not there exactly once (a
    value holds one). ``stand_ins``: by name, where not the process's own."""
    def stand_in(name: str) -> str:
        return stand_ins[name] if stand_ins is not None else _stand_in(name)

    at = {}
    for name in names:
        quoted = f'"{stand_in(name)}"'
        if text.count(quoted) != 1:
            return None
        at[name] = text.index(quoted)
    holes = tuple(sorted(names, key=at.__getitem__))
    pieces = []
    for hole in holes:
        piece, text = text.split(f'"{stand_in(hole)}"')
        pieces.append(piece)
    pieces.append(text)
    return holes, pieces


def _append_postgresql(db, shard: int, values: dict, lookup: tuple | None) -> AuditEvent | None:
    """The append: one statement (looking up the roles of ``lookup`` = (actor, project id) if
    given); None where the shard has no head row. A value that holds one of the process's stand-ins
    (they are random) is hashed with stand-ins made for this event instead."""
    names = [*(("actor_roles", "actor_tier") if lookup is not None else ()), "prev_hash", "seq"]
    stand_ins = {name: _stand_in(name) for name in names}
    cut = _cut(canonical({**values, "shard": shard, **stand_ins}).decode(), names, stand_ins)
    while cut is None:
        stand_ins = {name: f"{name}-{uuid.uuid4().hex}" for name in names}
        cut = _cut(canonical({**values, "shard": shard, **stand_ins}).decode(), names, stand_ins)
    holes, pieces = cut
    ctes, arg_names = _append_statement(lookup is not None, None, holes)
    args = dict(values, shard=shard, extra=json.dumps(values["extra"], ensure_ascii=False),
                **{f"piece{i}": piece for i, piece in enumerate(pieces)})
    if lookup is not None:
        args["superuser_fallback"] = "superuser" if lookup[0].is_superuser else ""
    with db.cursor() as cursor:
        name = "radqueue_audit_append_roles" if lookup is not None else "radqueue_audit_append"
        prepared.execute_prepared(cursor, name, f"WITH {ctes}\nSELECT * FROM audit_event",
                                  {f"audit_{n}": args[n] for n in arg_names})
        row = cursor.fetchone()
    if row is None:
        return None
    stored = dict(values, id=row[0], shard=shard, seq=row[1], prev_hash=row[2], hash=row[3], actor_roles=row[4],
                  actor_tier=row[5])
    if lookup is not None:
        _remember_roles(*lookup, (row[4], row[5]))
    return AuditEvent.from_db(db.alias, None, [stored[f.attname] for f in AuditEvent._meta.concrete_fields])


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


@contextmanager
def _one_snapshot():
    """The events and the head read in one snapshot (outside a caller's transaction): an append
    committing between reading the last event and the head would look like a head ahead of its chain."""
    if connection.in_atomic_block:
        yield
        return
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        yield


def verify_shard(shard: int) -> tuple[int, Break | None]:
    """Recompute one shard's chain; the count checked and the first broken link, if any."""
    with _one_snapshot():
        return _verify_shard(shard)


def _verify_shard(shard: int) -> tuple[int, Break | None]:
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
    if head is None:
        # Only a flushed test database has a shard with neither events nor a head; a shard that has
        # events (or an anchor) and no head had its head deleted, which hides a truncated end.
        if expected_seq > 1:
            return count, Break(shard, None, None, f"head at seq {expected_seq - 1} {expected_prev}",
                                "no head row", "chain head missing (events removed from the end?)")
        return count, None
    if head.seq != expected_seq - 1 or head.hash != expected_prev:
        if head.seq > expected_seq - 1:
            what = "chain head ahead of the newest event (events removed from the end?)"
        elif head.seq < expected_seq - 1:
            what = "chain head behind the newest event (head rewound?)"
        else:
            what = "chain head does not match the newest event (event replaced?)"
        return count, Break(shard, None, head.seq, f"head at seq {expected_seq - 1} {expected_prev}",
                            f"head at seq {head.seq} {head.hash}", what)
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



# --- restoring a lost head ------------------------------------------------------------------

class RestoreError(RuntimeError):
    pass


@dataclass
class HeadRestore:
    shard: int
    from_seq: int | None  # None: the head row was missing
    to_seq: int
    hash: str


def chain_end(shard: int) -> tuple[int, str]:
    """(seq, hash) where the shard's chain ends now: its newest event, else its retention anchor, else genesis."""
    newest = AuditEvent.objects.filter(shard=shard).order_by("-seq").values_list("seq", "hash").first()
    if newest is not None:
        return newest
    anchor = AuditAnchor.objects.filter(shard=shard).values_list("seq", "hash").first()
    return anchor if anchor is not None else (0, GENESIS)


def restore_head(shard: int) -> HeadRestore | None:
    """Put a missing or lagging head back on the shard's newest event, recording an
    ``audit_head_restored`` event; None where the head is already there. Only the retention role
    may move a head other than by one append (audit migration 0004). A head ahead of the newest
    event is left alone: events after it were removed, and moving it back would hide that."""
    with transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute("SET LOCAL radqueue.audit_retention = 'on'")
            head = AuditChainHead.objects.select_for_update().filter(shard=shard).first()
            seq, hash_ = chain_end(shard)
            if head is not None and (head.seq, head.hash) == (seq, hash_):
                return None
            if head is not None and head.seq > seq:
                raise RestoreError(f"Shard {shard}: the head is at seq {head.seq}, past the newest event (seq {seq}): "
                                   "events after it were removed; the head stays where it is, as evidence.")
            if head is None:
                AuditChainHead.objects.create(shard=shard, seq=seq, hash=hash_, prev_hash="")
            else:
                AuditChainHead.objects.filter(shard=shard).update(seq=seq, hash=hash_, prev_hash="")
            cursor.execute("SET LOCAL radqueue.audit_retention = 'off'")
        restored = HeadRestore(shard, head.seq if head is not None else None, seq, hash_)
        record_event("audit_head_restored", object_type="audit.auditchainhead", object_id=shard, extra={
            "shard": shard, "from_seq": restored.from_seq, "from_hash": head.hash if head is not None else None,
            "to_seq": seq, "hash": hash_})
    return restored
