"""The reading queue: claim, heartbeat, release, submit, sweep, reassign.

Guarantees, under any concurrency: no task gets more than its k reads (a task has k slots and a
read holds one); no reader reads a task twice (a partial unique index on live reads, and the
claim never offers such a slot); the k readers of a task are k different people (the same); no
reader holds more than the project's limit of open reads (checked under a per-reader lock).

A claim is one statement (a data-modifying CTE): pick the best eligible slot with
``FOR UPDATE SKIP LOCKED`` (concurrent claimers skip each other's rows instead of queueing on
them), insert the read, lease the slot, expire the read whose lease ran out, move the task to
in_reading. Order: priority, then age (slot id), so equal-priority work is served first come,
first served.

Once a worker process has seen a reader claim, the reader's next claims are one message (lock and
claim statement, one round trip, committed on their own): the statement claims on the rules the
process derived last time only while a digest of the membership and project rows they came from
is unchanged (read after the reader's lock is granted), so a suspension or a changed project
setting holds from the very next claim. Anything else takes the full path above.
"""

import functools
from dataclasses import dataclass
from datetime import timedelta

from django.db import IntegrityError, connection, transaction
from django.db.models import Count
from django.utils import timezone

from audit.trail import EmbeddedEvent, embedded_event, record_event
from audit.trail import is_enabled as audit_enabled
from core.broadcast import broadcast_to_reader_on_commit
from core.errors import Conflict, DomainError, NotFound
from core.idempotency import checked_key
from core.models import Project, User
from core.selectors import projects_visible_to
from pgsql import prepared, rows
from tasks.ending import end_task_work
from tasks.locks import ROW_LOCK, AdvisoryLock, lock_task_work
from tasks.models import QueueSlot, Read, Task
from tasks.progress import announce_progress
from tasks.routing import Eligibility, digest_check, eligibility, eligibility_and_digest
from tasks.selectors import reader_membership_sql
from tasks.states import (
    LIVE_READ_STATES,
    ReadState,
    TaskState,
    check_read_transition,
    check_task_transition,
    task_state_after_reads,
)
from tasks.transitions import advance_read, advance_task

CLAIM_LOCK = AdvisoryLock.CLAIM  # what the claim statement's text takes (tasks.locks: the lock order)
HEARTBEAT_CREDIT_CAP = timedelta(minutes=5)  # longer gaps between heartbeats are not active time


@dataclass
class Claim:
    read: Read
    task: Task
    # The study's series when the task has no single series (PostgreSQL's claim returns them with
    # the read); None: ask the database (task.study.series).
    study_series: list | None = None
    started: bool = False  # this claim moved the task from queued to in reading
    readers_see_model: bool = False  # the project shows readers the model's output (routing.Eligibility)
    recorded: bool = False  # the claim statement appended the claim's audit event itself
    resumed: bool = False  # a read the reader already held, handed back (claim_next_read's ``resume``)


def _open_counts(user) -> dict[int, int]:
    rows = Read.objects.filter(reader=user, state=ReadState.CLAIMED).values("project_id").annotate(n=Count("id"))
    return {row["project_id"]: row["n"] for row in rows}


def claim_next_read(user: User, *, project_id: int | None = None, resume: bool = False) -> Claim | None:
    """Claim the most urgent read slot the user may take (None when there is none).

    ``resume``: where the reader already holds an unexpired read on the projects this claim could
    take from, hand back the oldest of them (``Claim.resumed``) instead of taking another; decided
    under the reader's claim lock, so a claim retried while its lost first try commits still gets
    that one read."""
    if project_id is not None and not projects_visible_to(user).filter(pk=project_id).exists():
        raise NotFound("No such project.")
    now = timezone.now()
    # A reader role is what grants read_studies (core.roles), so the memberships say it all.
    projects = None if project_id is None else [project_id]
    if (claim := _claim_on_known_rules(user, projects, now, resume)) is not None:
        _announce_claim(user, claim, None, progress=True)
        return claim
    with transaction.atomic():
        # The same statement takes the reader's claim lock, which serialises one reader's
        # concurrent claims (different readers never wait on it), so the open-read limit and
        # the same-task check see each other's results.
        rules, digest = eligibility_and_digest(user, projects, claim_lock=(CLAIM_LOCK, user.pk))
        _remember_rules(user, projects, rules, digest)
        if not rules:
            return None
        shows_model = {r.project_id for r in rules if r.readers_see_model}
        in_scope = [r.project_id for r in rules]
        check = None
        # The claim statement checks the open-read limit itself (its snapshot is taken after the
        # lock above); a check read (calibration, gold) is picked here, so needs it first. So does
        # a read to resume; the claim statement otherwise claims only where there is none
        # (holding_none), and the lookup follows only where it claimed nothing.
        if any(r.needs_calibration or r.gold_rate > 0 for r in rules):
            if resume and (resumed := _resume_held(user, in_scope, now, shows_model)) is not None:
                return resumed
            counts = _open_counts(user)
            rules = [r for r in rules if counts.get(r.project_id, 0) < r.max_open_reads]
            if not rules:
                return None
            check = _claim_check(user, rules)
        rules = [r for r in rules if not r.needs_calibration]
        if check is not None:
            claim, expired = _fetch_claim(check.pk), None
        elif not rules:
            return None
        else:
            leases = {r.project_id: r.lease_seconds for r in rules}
            claimed = _claim_postgresql(user, rules, leases, now, holding_none=resume)
            if claimed is None and resume:
                return _resume_held(user, in_scope, now, shows_model)
            if claimed is None:
                return None
            claim, expired = claimed
        claim.readers_see_model = claim.read.project_id in shows_model
        _announce_claim(user, claim, expired, progress=check is None)
    return claim


# Drivers that send a two-statement text as one message and leave the cursor on the last
# statement's rows (psycopg2: client-side binding, PQexec). psycopg 3 would leave it on the
# first, or refuse the text with server-side binding: there the full path runs.
_ONE_MESSAGE_DRIVER = {"psycopg2": True}

# Each reader's claim rules as this process last derived them, with the digest of the rows they
# came from (routing.eligibility_and_digest), by (database, reader, projects asked for).
_KNOWN_RULES: dict[tuple, tuple[list[Eligibility], str]] = {}
_KNOWN_RULES_MAX = 10_000


def _remember_rules(user, projects, rules: list[Eligibility], digest: str) -> None:
    if len(_KNOWN_RULES) >= _KNOWN_RULES_MAX:
        _KNOWN_RULES.clear()
    _KNOWN_RULES[connection.alias, user.pk, None if projects is None else tuple(projects)] = rules, digest


def _oldest_held_read(user, project_ids: list[int], now) -> int | None:
    """The id of the oldest read ``user`` holds on these projects whose lease has not run out."""
    return (Read.objects.filter(reader=user, state=ReadState.CLAIMED, project_id__in=project_ids,
                                lease_expires_at__gt=now)
            .order_by("claimed_at", "id").values_list("id", flat=True).first())


def _resume_held(user, project_ids: list[int], now, shows_model: set[int]) -> Claim | None:
    """The oldest read ``user`` still holds on these projects, as its claim gave it (None: none).
    Audited as a claim, marked resumed; nothing changed, so nothing is broadcast."""
    held = _oldest_held_read(user, project_ids, now)
    if held is None:
        return None
    claim = _fetch_claim(held)
    claim.resumed, claim.readers_see_model = True, claim.read.project_id in shows_model
    read, task = claim.read, claim.task
    record_event("claim", actor=user, project_id=read.project_id, obj=read, study_uid=task.study.study_uid,
                 protocol_version=task.protocol_version.number,
                 extra={"task": read.task_id, "lease_expires_at": read.lease_expires_at.isoformat(),
                        "resumed": True})
    return claim


class OpenReadLimit(Conflict):
    """The reader holds the most open reads a project allows and nothing else could be claimed;
    ``held``: their open reads there (id, project, lease end), oldest first."""

    def __init__(self, held: list[dict]):
        super().__init__("You hold the most open reads this project allows (its max_open_reads); held_reads "
                         "lists them. Submit or release one (POST /api/reads/{id}/submit/ or .../release/), or "
                         "claim without \"another\" to get back the oldest one still leased to you; a read "
                         "whose lease has passed ends at the next sweep, within about a minute.",
                         code="open_read_limit")
        self.held = held


def claim_for_reader(user: User, *, project_id: int | None = None, another: bool = False) -> Claim | None:
    """What POST /api/queue/next/ does: the oldest read the reader still holds there (resumed),
    else a new one (``another``: a new one whatever they hold); None when there is nothing to read;
    OpenReadLimit where the open-read limit, not an empty queue, is why nothing was claimed."""
    claim = claim_next_read(user, project_id=project_id, resume=not another)
    if claim is not None:
        return claim
    rules = eligibility(user, None if project_id is None else [project_id])
    counts = _open_counts(user)
    full = [r.project_id for r in rules if counts.get(r.project_id, 0) >= r.max_open_reads]
    if full:
        held = (Read.objects.filter(reader=user, state=ReadState.CLAIMED, project_id__in=full)
                .order_by("claimed_at", "id").values_list("id", "project_id", "lease_expires_at"))
        raise OpenReadLimit([{"read": pk, "project": project, "lease_expires_at": lease}
                             for pk, project, lease in held])
    return None


def _claim_on_known_rules(user, projects, now, resume: bool = False) -> Claim | None:
    """The common claim in one round trip (PostgreSQL): the reader's claim lock and the claim
    statement in one message, on the rules this process derived at the reader's last claim, which
    the statement checks are still what the memberships and projects say (routing.digest_check,
    read after the lock is granted) before it claims; it also claims only a free slot. It commits
    on its own where no transaction is open, the claim's audit event inside it.

    None where that does not apply, and so nothing was claimed: no rules known yet, rules on
    several projects (the claim's audit event is then appended apart) or with calibration or gold
    checks to hand out, rules that changed, a lapsed lease at the head of the queue (its end is
    recorded by the full path), ``resume`` with a read still leased to the reader there (the full
    path hands it back), or nothing to claim. The caller then takes the full path, which learns
    the rules afresh."""
    known = _KNOWN_RULES.get((connection.alias, user.pk, None if projects is None else tuple(projects)))
    if known is None or not _ONE_MESSAGE_DRIVER.get(connection.Database.__name__, False):
        return None
    rules, digest = known
    if len(rules) != 1 or not digest or rules[0].needs_calibration or rules[0].gold_rate > 0:
        return None
    expression, params = digest_check(user.pk, projects)
    claimed = _claim_postgresql(user, rules, {rules[0].project_id: rules[0].lease_seconds}, now,
                                unchanged=(expression, params, digest), lock=(CLAIM_LOCK, user.pk),
                                holding_none=resume)
    if claimed is None:
        return None
    claim, _expired = claimed  # never a lapsed lease (unchanged)
    claim.readers_see_model = rules[0].readers_see_model
    return claim


def _announce_claim(user, claim: Claim, expired: tuple[int, int] | None, *, progress: bool) -> None:
    """The claim's audit event where its statement did not append it, the lapsed lease it took
    over, the reader's live feed and the project's progress."""
    read, task = claim.read, claim.task
    if not claim.recorded:  # never on known rules with the trail on (the statement appends it or claims nothing)
        record_event("claim", actor=user, project_id=read.project_id, obj=read, study_uid=task.study.study_uid,
                     protocol_version=task.protocol_version.number,
                     extra={"task": read.task_id, "lease_expires_at": read.lease_expires_at.isoformat()})
    if expired is not None:  # this claim took over a slot whose lease had passed
        expired_read_id, expired_reader_id = expired
        record_event("expire", actor=None, project_id=read.project_id, object_type="tasks.read",
                     object_id=expired_read_id, study_uid=task.study.study_uid,
                     extra={"reclaimed_by_read": read.pk})
        broadcast_to_reader_on_commit(expired_reader_id, read.project_id, "read.expired", {"read": expired_read_id})
    broadcast_to_reader_on_commit(user.pk, read.project_id, "read.claimed", {
        "read": read.pk, "task": read.task_id, "lease_expires_at": read.lease_expires_at.isoformat()})
    if progress and task.kind == Task.Kind.PRODUCTION:
        announce_progress(read.project_id, reads_claimed=1,
                          **({TaskState.QUEUED: -1, TaskState.IN_READING: 1} if claim.started else {}))


def _fetch_claim(read_id: int, started: bool = False) -> Claim:
    read = Read.objects.select_related("task__study", "task__series", "task__protocol_version").get(pk=read_id)
    return Claim(read=read, task=read.task, started=started)


def _lease_seconds(project_id: int) -> int:
    return Project.objects.values_list("lease_seconds", flat=True).get(pk=project_id)


def _claim_check(user, rules: list[Eligibility]) -> Read | None:
    """A calibration check (readers still calibrating) or, at the project's rate, a hidden gold check."""
    from tasks import gold

    for rule in rules:
        if rule.needs_calibration:
            read = gold.claim_check(user, rule.project_id, Task.Kind.CALIBRATION, rule.reader_tier,
                                    rule.lease_seconds)
            if read is not None:
                return read
    for rule in rules:
        if not rule.needs_calibration and gold.wants_gold_check(rule.gold_rate):
            read = gold.claim_check(user, rule.project_id, Task.Kind.GOLD, rule.reader_tier, rule.lease_seconds)
            if read is not None:
                return read
    return None


def _candidates_sql(rules: list[Eligibility], reader_id: int, now, params: list, skip_busy_tasks: bool = False) -> str:
    """One ordered, locked LIMIT 1 scan per project (each walks the project's claim-order index from
    the head and stops at the first eligible, unlocked slot), then the best of them.

    A task the reader already holds or read is skipped by a scalar subquery probing the live-read
    unique index (task, reader) for each slot that passes the cheaper filters: one index probe per
    slot looked at, whatever the reader's history. NOT EXISTS is pulled up into an anti-join over
    the whole queue; NOT IN hashes all of the reader's reads on every claim (thousands, for a
    reader months in). A project where the reader already holds the most open reads it allows
    yields nothing (the count is a one-time subplan, evaluated under the reader's advisory lock).
    Every placeholder carries its type: the statement is prepared (pgsql.prepared).

    ``skip_busy_tasks``: also skip a slot whose task another claim is taking at this moment (it
    holds the task's transaction-level advisory lock, which this scan tries to take, without
    waiting, for a slot that passes every other filter; claims alone take it). With k reads per
    task a task's slots are neighbours at the head of the queue, so concurrent readers took the
    two slots of one task: the second then waited for the first's commit on the task's row, and
    PostgreSQL rechecked it (EvalPlanQual, which starts every subplan of the statement again).
    Skipping can answer nothing while a busy task still has a free slot: only the claim on known
    rules skips, and where it finds nothing the full path, which does not, looks again.
    """
    scans = []
    probe = ("(SELECT r.id FROM tasks_read r WHERE r.task_id = s.task_id AND r.reader_id = %s::bigint "
             f"AND r.state IN ('{ReadState.CLAIMED}', '{ReadState.SUBMITTED}')) IS NULL")
    if skip_busy_tasks:
        # One expression, so that the lock is tried only where the probe passed (and after the
        # cheaper filters, which the planner orders first): a CASE keeps its order.
        probe = f"CASE WHEN {probe} THEN pg_try_advisory_xact_lock(s.task_id) ELSE false END"
    for rule in rules:
        # Each scan is a subquery of its own: PostgreSQL allows no FOR UPDATE in a UNION's arms.
        scans.append(f"""SELECT * FROM (SELECT s.id, s.task_id, s.project_id, s.read_id AS old_read_id,
               s.reader_id AS old_reader_id, s.priority
        FROM tasks_queueslot s
        WHERE s.project_id = %s::bigint AND s.tier = ANY(%s::smallint[])
          AND (s.subspecialty = '' OR s.subspecialty = ANY(%s::varchar[]))
          AND (SELECT count(*) FROM tasks_read o WHERE o.reader_id = %s::bigint AND o.project_id = %s::bigint
               AND o.state = '{ReadState.CLAIMED}') < %s::bigint
          AND (s.reader_id IS NULL OR s.lease_expires_at < %s::timestamptz)
          AND {probe}
        ORDER BY s.priority DESC, s.id
        LIMIT 1
        FOR UPDATE OF s SKIP LOCKED) project_{len(scans)}""")
        params += [rule.project_id, list(rule.tiers), list(rule.subspecialties), reader_id, rule.project_id,
                   rule.max_open_reads, now, reader_id]
    if len(scans) == 1:  # already the best: no union to order
        return scans[0]
    return f"SELECT * FROM ({' UNION ALL '.join(scans)}) candidates ORDER BY priority DESC, id LIMIT 1"


def _case(rules: list[Eligibility], values: dict[int, object], params: list, cast: str) -> str:
    whens = []
    for rule in rules:
        whens.append(f"WHEN %s::bigint THEN %s::{cast}")
        params += [rule.project_id, values[rule.project_id]]
    return f"(CASE c.project_id {' '.join(whens)} END)::{cast}"


def _claim_postgresql(user, rules, leases, now, *, unchanged: tuple[str, list, str] | None = None,
                      lock: tuple[int, int] | None = None,
                      holding_none: bool = False) -> tuple[Claim, tuple[int, int] | None] | None:
    """The claim and, when it took over a slot whose lease had passed, (that read, its reader).
    ``unchanged``, ``holding_none``: as claim_statement's; ``lock``: the advisory lock to take
    first, in the same message (the claim statement's snapshot is taken after it is granted)."""
    from core.dicom.models import Series, Study
    from core.models import ProtocolVersion

    event = None
    if len(rules) == 1:  # the claim's audit event goes in with the claim (its project and lease known here)
        lease_expires_at = (now + timedelta(seconds=leases[rules[0].project_id])).isoformat()  # as the statement's
        event = embedded_event("claim", after="claimed", actor=user, project_id=rules[0].project_id,
                               object_type=Read._meta.label_lower, extra={"lease_expires_at": lease_expires_at},
                               from_statement={"object_id": "claimed.read_id::text",
                                               "study_uid": "claimed.claimed_study_uid",
                                               "protocol_version": "claimed.claimed_version"},
                               extra_from_statement={"task": "claimed.claimed_task_id"})
    if unchanged is not None and event is None and audit_enabled():
        return None  # the event could not go in with the claim, which must not commit without it
    sql, args = claim_statement(user.pk, rules, leases, now, event, unchanged, holding_none=holding_none)
    before = None if lock is None else ("SELECT pg_advisory_xact_lock(%s, %s)", list(lock))
    with connection.cursor() as cursor:
        # The text depends only on how many projects are eligible; everything else is an argument.
        prepared.execute_prepared(cursor, f"radqueue_claim_{len(rules)}", sql, args, before)
        row = cursor.fetchone()
    if row is None:
        return None
    (read_id, expired_read_id, expired_reader_id, task_id, project_id, tier, lease_expires_at, study_id, study_uid,
     series_id, series_uid, series_modality, series_mr_sequence, version_id, version_number, version_used_at,
     study_series, _other_writes, started, task_kind, recorded) = row
    # Everything the claim's response and audit event need came back with it: no query follows.
    read = rows.loaded(Read, id=read_id, project_id=project_id, task_id=task_id, reader_id=user.pk,
                   state=ReadState.CLAIMED, tier=tier, claimed_at=now, lease_expires_at=lease_expires_at,
                   last_heartbeat_at=None, active_seconds=0.0, submitted_at=None, ended_at=None, draft=None,
                   findings=None, findings_count=0, slices_touched=0, idempotency_key="", is_check=False)
    task = rows.loaded(Task, id=task_id, project_id=project_id, study_id=study_id, series_id=series_id,
                   protocol_version_id=version_id, kind=task_kind)
    task.study = rows.loaded(Study, id=study_id, project_id=project_id, study_uid=study_uid)
    task.series = None if series_id is None else rows.loaded(
        Series, id=series_id, study_id=study_id, series_uid=series_uid, modality=series_modality,
        mr_sequence=series_mr_sequence)
    task.protocol_version = rows.loaded(ProtocolVersion, id=version_id, project_id=project_id, number=version_number,
                                    used_at=version_used_at)
    read.task = task
    series = None
    if series_id is None:
        series = [rows.loaded(Series, id=pk, study_id=study_id, series_uid=uid, modality=modality, mr_sequence=sequence)
                  for pk, uid, modality, sequence in (study_series or [])]
    expired = None if expired_read_id is None else (expired_read_id, expired_reader_id)
    return Claim(read=read, task=task, study_series=series, started=bool(started), recorded=bool(recorded)), expired


def claim_statement(reader_id: int, rules, leases, now, event: EmbeddedEvent | None = None,
                    unchanged: tuple[str, list, str] | None = None, *, holding_none: bool = False
                    ) -> tuple[str, list]:
    """The PostgreSQL claim statement and its arguments (bench/claims.py drives it with pgbench too).

    With ``event`` (audit.trail.embedded_event, after the CTE ``claimed``) the statement also
    appends the claim's audit event. ``claimed`` waits for every other CTE's writes (its row
    reads them), so the audit chain's head is still the last row the transaction locks.

    ``unchanged`` (an SQL expression, its arguments, the value it must have: routing.digest_check
    and the digest ``rules`` came with): the statement claims only while the expression still has
    that value (the rules still hold), only where ``event`` (if any) will be appended with the claim
    (its chain head exists), and only a free slot: where the best candidate is one whose lease ran
    out, it claims nothing (the caller's full path records that lease's end). ``holding_none``:
    it also claims nothing while the reader holds a read on these projects whose lease has not run
    out (the caller hands that one back): the check costs the claim no round trip."""
    fresh_params: list = []
    candidate_params: list = []
    candidates = _candidates_sql(rules, reader_id, now, candidate_params, skip_busy_tasks=unchanged is not None)
    fresh = ""
    holding, holding_params = "true", []
    if holding_none:
        # The partial index read_open_per_reader answers this (a handful of rows per reader).
        holding = ("NOT EXISTS (SELECT 1 FROM tasks_read h WHERE h.reader_id = %s::bigint "
                   f"AND h.state = '{ReadState.CLAIMED}' AND h.project_id = ANY(%s::bigint[]) "
                   "AND h.lease_expires_at > %s::timestamptz)")
        holding_params = [reader_id, [r.project_id for r in rules], now]
    if unchanged is not None:
        expression, fresh_params, expected = unchanged
        appended, appended_params = event.will_append() if event is not None else ("true", [])
        fresh = f"fresh AS MATERIALIZED (SELECT {expression} = %s::text AND {appended} AND {holding} AS ok), "
        fresh_params = [*fresh_params, expected, *appended_params, *holding_params]
        candidates = (f"SELECT * FROM ({candidates}) best "
                      f"WHERE best.old_reader_id IS NULL AND (SELECT ok FROM fresh)")
    elif holding_none:
        # Evaluated once, before any slot is locked; its parameters go first, as its text does.
        fresh = f"fresh AS MATERIALIZED (SELECT {holding} AS ok), "
        fresh_params = holding_params
        candidates = f"SELECT * FROM ({candidates}) best WHERE (SELECT ok FROM fresh)"
    tier_case_params: list = []
    tier_case = _case(rules, {r.project_id: r.reader_tier for r in rules}, tier_case_params, "smallint")
    lease_case_params: list = []
    lease_case = _case(rules, {r.project_id: leases[r.project_id] for r in rules}, lease_case_params, "integer")
    # ``claimed`` joins the new read to its task, study and protocol version once, for the
    # response and for the audit event. Its row carries the counts of the other CTEs' writes, so
    # by the time the event's UPDATE reads that row those writes are done and the chain head is
    # the last row the statement locks. Every CTE and subquery here is a subplan, and PostgreSQL
    # starts all of them afresh each time a concurrent claim makes it recheck a row
    # (EvalPlanQual): the fewer, the cheaper a contended claim.
    if unchanged is not None:
        # On known rules the statement claims only a free slot (above): no lapsed lease to end.
        expired, expired_params, expired_columns = "", [], "NULL::bigint, NULL::bigint"
        counts = "(SELECT count(*) FROM leased)"
    else:
        expired = f""", expired AS (
    UPDATE tasks_read r SET state = '{ReadState.EXPIRED}', ended_at = %s::timestamptz
    FROM c WHERE r.task_id = c.task_id AND r.reader_id = c.old_reader_id AND r.id = c.old_read_id
      AND r.state = '{ReadState.CLAIMED}'
    RETURNING r.id, r.reader_id
)"""
        expired_params, expired_columns = [now], "(SELECT id FROM expired), (SELECT reader_id FROM expired)"
        counts = "(SELECT count(*) FROM leased) + (SELECT count(*) FROM expired)"
    audit, recorded = "", "0"
    if event is not None:
        audit = f", {event.sql}"
        # On known rules the statement claims only where the event's chain head exists (fresh),
        # and a data-modifying CTE always runs: a claimed row means an appended event.
        recorded = "1" if unchanged is not None else "(SELECT count(*) FROM audit_event)"
    sql = f"""
WITH {fresh}c AS (
    {candidates}
), new_read AS (
    INSERT INTO tasks_read (project_id, task_id, reader_id, state, tier, claimed_at, lease_expires_at,
                            active_seconds, findings_count, slices_touched, idempotency_key, is_check)
    SELECT c.project_id, c.task_id, %s::bigint, '{ReadState.CLAIMED}', {tier_case}, %s::timestamptz,
           %s::timestamptz + make_interval(secs => {lease_case}),
           0, 0, 0, '', false
    FROM c
    RETURNING id, task_id, tier, lease_expires_at
), leased AS (
    UPDATE tasks_queueslot s
    SET reader_id = %s::bigint, lease_expires_at = new_read.lease_expires_at, read_id = new_read.id
    FROM new_read, c WHERE s.id = c.id
    RETURNING s.id
){expired}, started AS (
    UPDATE tasks_task t SET state = '{TaskState.IN_READING}', updated_at = %s::timestamptz
    FROM c WHERE t.id = c.task_id AND t.state = '{TaskState.QUEUED}'
    RETURNING t.id
), claimed AS (
    SELECT new_read.id AS read_id, new_read.task_id AS claimed_task_id, t.project_id, new_read.tier AS read_tier,
           new_read.lease_expires_at, t.study_id, st.study_uid AS claimed_study_uid, t.series_id,
           t.protocol_version_id, pv.number AS claimed_version, pv.used_at, t.kind,
           (SELECT count(*) FROM started) AS started_count, {counts} AS other_writes
    FROM new_read
    JOIN tasks_task t ON t.id = new_read.task_id
    JOIN core_study st ON st.id = t.study_id
    JOIN core_protocolversion pv ON pv.id = t.protocol_version_id
){audit}
SELECT claimed.read_id, {expired_columns}, claimed.claimed_task_id, claimed.project_id,
       claimed.read_tier, claimed.lease_expires_at, claimed.study_id, claimed.claimed_study_uid, claimed.series_id,
       se.series_uid, se.modality, se.mr_sequence, claimed.protocol_version_id, claimed.claimed_version,
       claimed.used_at,
       CASE WHEN claimed.series_id IS NULL THEN (
           SELECT json_agg(json_build_array(x.id, x.series_uid, x.modality, x.mr_sequence) ORDER BY x.id)
           FROM core_series x WHERE x.study_id = claimed.study_id) END,
       claimed.other_writes, claimed.started_count, claimed.kind, {recorded}
FROM claimed
LEFT JOIN core_series se ON se.id = claimed.series_id"""
    # Parameter order follows the text: the digest check's, candidates, reader, tier CASE, now, now,
    # lease CASE, reader, now (expired, when there), now (started), the audit event's.
    args = [*fresh_params, *candidate_params, reader_id, *tier_case_params, now, now, *lease_case_params, reader_id,
            *expired_params, now,
            *(event.args if event is not None else ())]
    return sql, args


# --- operations on a held read -------------------------------------------------------------

def get_read_for_update(read_id, user: User) -> Read:
    """The caller's own read, locked; 404 for anybody else's (existence does not leak), and for
    their own once they hold no reader role on its project (tasks.selectors).

    Locks in this module take only the row itself, FOR NO KEY UPDATE (no key ever changes): a
    plain FOR UPDATE on joined rows made a concurrent claim's foreign-key check (KEY SHARE on
    the task) wait on a submit that in turn waited on the claim's audit shard: a deadlock.
    """
    read = _locked_read(read_id, user)
    if read is None:
        raise NotFound("No such read.")
    return read


def _locked_read(read_id, user: User) -> Read | None:
    """get_read_for_update's query in plain SQL (the ORM's building of it cost more than running
    it): the read, locked FOR NO KEY UPDATE, with its task, study and protocol version."""
    try:
        read_id = int(read_id)
    except (ValueError, TypeError):
        return None
    if not -(2 ** 63) <= read_id < 2 ** 63:
        return None
    models, sql = _locked_read_statement()
    with connection.cursor() as cursor:
        prepared.execute_prepared(cursor, "radqueue_locked_read", sql, [read_id, user.pk])
        row = cursor.fetchone()
    if row is None:
        return None
    read, task, study, version = rows.instances(models, row)
    task.study, task.protocol_version, read.task = study, version, task
    return read


@functools.cache
def _locked_read_statement() -> tuple[tuple, str]:
    from core.dicom.models import Study
    from core.models import ProtocolVersion

    models = (Read, Task, Study, ProtocolVersion)
    selected = [column for model, alias in zip(models, ("r", "t", "st", "pv"), strict=True)
                for column in rows.columns(model, alias)]
    return models, f"""SELECT {", ".join(selected)}
        FROM tasks_read r JOIN tasks_task t ON t.id = r.task_id JOIN core_study st ON st.id = t.study_id
        JOIN core_protocolversion pv ON pv.id = t.protocol_version_id
        WHERE r.id = %s::bigint AND r.reader_id = %s::bigint AND {reader_membership_sql("r")}
        FOR NO KEY UPDATE OF r"""


def _live_slot(read: Read) -> QueueSlot | None:
    """The slot this read still holds; 409 when its lease passed and another reader has it.

    Check reads (gold, calibration) hold no slot: None.
    """
    if read.is_check:
        return None
    # Plain SQL (the ORM's query building costs ten times the query): the slot, locked.
    with connection.cursor() as cursor:
        cursor.execute("SELECT id, reader_id FROM tasks_queueslot WHERE read_id = %s FOR NO KEY UPDATE", [read.pk])
        row = cursor.fetchone()
    slot = None if row is None else rows.loaded(QueueSlot, id=row[0], reader_id=row[1], read_id=read.pk)
    if slot is None or slot.reader_id != read.reader_id:
        raise Conflict("Your lease on this read expired and the task was handed to another reader; "
                       "your work on it cannot be submitted.", code="lease_lost")
    return slot


@transaction.atomic
def heartbeat_read(read_id, user: User) -> Read:
    """Extend the lease by the project's lease length; credit active time since the last beat."""
    read = get_read_for_update(read_id, user)
    check_read_transition(read.state, ReadState.SUBMITTED)  # only claimed reads beat
    slot = _live_slot(read)
    now = timezone.now()
    last = read.last_heartbeat_at or read.claimed_at
    read.active_seconds += min(now - last, HEARTBEAT_CREDIT_CAP).total_seconds()
    read.last_heartbeat_at = now
    read.lease_expires_at = now + timedelta(seconds=_lease_seconds(read.project_id))
    read.save(update_fields=["active_seconds", "last_heartbeat_at", "lease_expires_at"])
    if slot is not None:
        QueueSlot.objects.filter(pk=slot.pk).update(lease_expires_at=read.lease_expires_at)
    record_event("heartbeat", actor=user, project_id=read.project_id, obj=read, study_uid=read.task.study.study_uid)
    return read


@transaction.atomic
def release_read(read_id, user: User) -> Read:
    """Give the read back: its slot returns to the queue for another reader."""
    read = get_read_for_update(read_id, user)
    check_read_transition(read.state, ReadState.RELEASED)
    slot = _live_slot(read)
    free_slot(slot, read, ReadState.RELEASED)
    record_event("release", actor=user, project_id=read.project_id, obj=read, study_uid=read.task.study.study_uid)
    broadcast_to_reader_on_commit(user.pk, read.project_id, "read.released", {"read": read.pk, "task": read.task_id})
    return read


def free_slot(slot: QueueSlot | None, read: Read, state: str) -> None:
    advance_read(read, state)
    if slot is None:  # a check read: its task is not in the queue
        return
    QueueSlot.objects.filter(pk=slot.pk).update(reader=None, lease_expires_at=None, read=None)
    _refresh_task_state(read.task_id)


def _refresh_task_state(task_id: int) -> Task:
    """Set a reading task's state from its read counts (tasks.states.task_state_after_reads)."""
    task = Task.objects.select_for_update(**ROW_LOCK).select_related("study", "protocol_version").get(pk=task_id)
    if task.state not in (TaskState.QUEUED, TaskState.IN_READING):
        return task
    claimed = Read.objects.filter(task_id=task_id, state=ReadState.CLAIMED).count()
    target = task_state_after_reads(submitted=task.reads_submitted, claimed=claimed, required=task.reads_required)
    if target != task.state:
        advance_task(task, target)
    return task


@transaction.atomic
def save_draft(read_id, user: User, draft) -> Read:
    read = get_read_for_update(read_id, user)
    check_read_transition(read.state, ReadState.SUBMITTED)
    _live_slot(read)
    if not isinstance(draft, list | dict):
        raise DomainError("A draft is a list of findings (or an object).", errors={"draft": ["Expected JSON."]})
    Read.objects.filter(pk=read.pk).update(draft=draft)
    read.draft = draft
    record_event("update", actor=user, project_id=read.project_id, obj=read, study_uid=read.task.study.study_uid,
                 extra={"draft": True})
    return read


def submit_read(read_id, user: User, findings, *, idempotency_key: str = "") -> tuple[Read, bool]:
    """Validate and store the findings, completing the read. Returns (read, replayed).

    A retry with the same idempotency key returns the first result; the lease must still be
    the caller's (409 if it passed and the slot went to another reader).
    """
    from tasks.findings.loading import validated_findings

    idempotency_key = checked_key(idempotency_key)
    with transaction.atomic():
        read = get_read_for_update(read_id, user)
        if read.state == ReadState.SUBMITTED and idempotency_key and read.idempotency_key == idempotency_key:
            return read, True
        check_read_transition(read.state, ReadState.SUBMITTED)
        slot = _live_slot(read)
        normalised, summary = validated_findings(read, findings)
        now = timezone.now()
        last = read.last_heartbeat_at or read.claimed_at
        read.active_seconds += min(now - last, HEARTBEAT_CREDIT_CAP).total_seconds()
        read.state, read.submitted_at, read.ended_at = ReadState.SUBMITTED, now, now
        read.findings, read.draft = normalised, None
        read.findings_count, read.slices_touched = summary["findings"], summary["slices_touched"]
        read.idempotency_key = idempotency_key
        _store_submission(read)
        broadcast_to_reader_on_commit(user.pk, read.project_id, "read.submitted",
                                      {"read": read.pk, "task": read.task_id})
        if slot is None:  # a check read: scored against the reference, the task itself unchanged
            from tasks.gold import on_check_submitted

            on_check_submitted(read)
            record_event("submit", actor=user, project_id=read.project_id, obj=read,
                         study_uid=read.task.study.study_uid, extra={"findings": read.findings_count})
            return read, False
        event = {"actor": user, "project_id": read.project_id, "obj": read, "study_uid": read.task.study.study_uid,
                 "protocol_version": read.task.protocol_version.number,
                 "extra": {"task": read.task_id, "findings": read.findings_count,
                           "active_seconds": round(read.active_seconds)}}
        # On PostgreSQL the submit's audit event goes in with the count of its task (one statement).
        complete, recorded = _count_submission(slot, read.task, now, embedded_event("submit", after="counted", **event))
        if read.task.kind == Task.Kind.PRODUCTION:
            announce_progress(read.project_id, reads_submitted=1)
        if not recorded:
            record_event("submit", **event)
        if complete:
            _on_reads_complete(read.task)
    return read, False


_SUBMITTED_FIELDS = ("active_seconds", "state", "submitted_at", "ended_at", "findings", "draft", "findings_count",
                     "slices_touched", "idempotency_key")


def _store_submission(read: Read) -> None:
    """``read.save(update_fields=_SUBMITTED_FIELDS)``, without the ORM's building of the UPDATE
    (it cost more than the statement)."""
    fields, sql = _submission_update()
    values = [f.get_db_prep_save(getattr(read, f.attname), connection) for f in fields]
    with connection.cursor() as cursor:
        cursor.execute(sql, [*values, read.pk])


@functools.cache
def _submission_update() -> tuple[list, str]:
    fields = [Read._meta.get_field(name) for name in _SUBMITTED_FIELDS]
    assignments = ", ".join(f'"{f.column}" = %s' for f in fields)
    return fields, f"UPDATE {Read._meta.db_table} SET {assignments} WHERE id = %s"


_COUNTED = ("state, reads_submitted, reads_required, kind, project_id, priority, adjudication_tier, "
            "adjudication_subspecialty")


def _count_submission(slot: QueueSlot, task: Task, now, event: EmbeddedEvent | None = None) -> tuple[bool, bool]:
    """Delete the submitted read's slot, count the read on its task and set the task's state from
    its reads (as _refresh_task_state does; the UPDATE locks the task's row). (True when that made
    the task's reads complete, True when ``event`` was appended with the count); ``task`` then
    holds the new state and counts. Plain SQL: the submit path's hottest statements."""
    with connection.cursor() as cursor:
        cursor.execute("DELETE FROM tasks_queueslot WHERE id = %s", [slot.pk])
        # The row as this UPDATE locked it: what consensus or a new adjudication copies (priority,
        # the adjudication's tier) may have changed since the read was loaded (scoring, a manager).
        count = "UPDATE tasks_task SET reads_submitted = reads_submitted + 1 WHERE id = %s{} RETURNING " + _COUNTED
        if event is None:
            cursor.execute(count.format(""), [task.pk])
            counted, recorded = cursor.fetchone(), False
        else:
            prepared.execute_prepared(cursor, "radqueue_count_submission",
                                  f"WITH counted AS ({count.format('::bigint')}), {event.sql}\n"
                                  "SELECT counted.*, (SELECT count(*) FROM audit_event) FROM counted",
                                  [task.pk, *event.args])
            *counted, recorded = cursor.fetchone()
        (state, submitted, required, kind, project_id, task.priority, task.adjudication_tier,
         task.adjudication_subspecialty) = counted
        task.state, task.reads_submitted, task.reads_required = state, submitted, required
        if state not in (TaskState.QUEUED, TaskState.IN_READING):
            return False, bool(recorded)
        cursor.execute("SELECT count(*) FROM tasks_read WHERE task_id = %s AND state = %s",
                       [task.pk, ReadState.CLAIMED])
        target = task_state_after_reads(submitted=submitted, claimed=cursor.fetchone()[0], required=required)
        if target == state:
            return False, bool(recorded)
    task.kind, task.project_id = kind, project_id
    advance_task(task, target, now=now)
    return target == TaskState.READS_COMPLETE, bool(recorded)


def _on_reads_complete(task: Task) -> None:
    """All k reads are in: agreement and consensus (tasks.consensus) take over when installed."""
    try:
        from tasks.consensus import on_reads_complete
    except ImportError:
        return
    on_reads_complete(task)


# --- leases, managers ------------------------------------------------------------------------

def sweep_expired_leases(now=None) -> int:
    """Return every slot whose lease ran out to the queue (also done lazily by claims)."""
    now = now or timezone.now()
    swept = 0
    expired = QueueSlot.objects.filter(reader__isnull=False, lease_expires_at__lt=now)
    for slot_id in expired.values_list("id", flat=True):
        with transaction.atomic():
            slot = (QueueSlot.objects.select_for_update(skip_locked=True, **ROW_LOCK)
                    .select_related("read__task__study")
                    .filter(pk=slot_id, reader__isnull=False, lease_expires_at__lt=now).first())
            if slot is None or slot.read is None:
                continue
            _expire(slot, slot.read)
            swept += 1
    # Check reads (gold, calibration) hold no slot: their lease is the read's own. They end as a
    # production read does, so nobody learns from a lease that never ran out that they hold a check.
    lapsed = Read.objects.filter(is_check=True, state=ReadState.CLAIMED, lease_expires_at__lt=now)
    for read_id in lapsed.values_list("id", flat=True):
        with transaction.atomic():
            read = (Read.objects.select_for_update(skip_locked=True, **ROW_LOCK).select_related("task__study")
                    .filter(pk=read_id, state=ReadState.CLAIMED, lease_expires_at__lt=now).first())
            if read is None:
                continue
            _expire(None, read)
            swept += 1
    return swept


def _expire(slot: QueueSlot | None, read: Read) -> None:
    free_slot(slot, read, ReadState.EXPIRED)
    record_event("expire", actor=None, project_id=read.project_id, obj=read, study_uid=read.task.study.study_uid)
    broadcast_to_reader_on_commit(read.reader_id, read.project_id, "read.expired", {"read": read.pk})


@transaction.atomic
def reassign_read(read_id, to_user: User, *, by: User) -> Read:
    """Move a claimed read, a check read too, to another eligible reader (a manager's action); the
    lease restarts and the former holder hears ``read.cancelled``."""
    read = Read.objects.select_for_update(**ROW_LOCK).select_related("task__study").filter(pk=read_id).first()
    if read is None:
        raise NotFound("No such read.")
    check_read_transition(read.state, ReadState.CANCELLED)
    rules = eligibility(to_user, [read.project_id])
    slot = None
    if read.is_check:  # no slot: the check goes only to somebody the claim could have served it to
        from tasks.gold import may_take_check

        eligible = bool(rules) and may_take_check(to_user, read.task, rules[0])
    else:
        slot = QueueSlot.objects.select_for_update(**ROW_LOCK).get(read=read)
        eligible = bool(rules) and slot.tier in rules[0].tiers and (
            not slot.subspecialty or slot.subspecialty in rules[0].subspecialties)
    if not eligible:
        raise DomainError("That person is not eligible for this read (tier, sub-specialty, calibration or "
                          "suspension).", code="not_eligible", errors={"reader": ["Not eligible."]})
    if Read.objects.filter(task_id=read.task_id, reader=to_user, state__in=LIVE_READ_STATES).exists():
        raise Conflict("That person already reads this task.", code="already_reading")
    now = timezone.now()
    advance_read(read, ReadState.CANCELLED, now=now)
    try:
        with transaction.atomic():
            new = Read.objects.create(project_id=read.project_id, task_id=read.task_id, reader=to_user,
                                      tier=rules[0].reader_tier, claimed_at=now, is_check=read.is_check,
                                      lease_expires_at=now + timedelta(seconds=_lease_seconds(read.project_id)))
    except IntegrityError:
        raise Conflict("That person already reads this task.", code="already_reading") from None
    if slot is not None:
        QueueSlot.objects.filter(pk=slot.pk).update(reader=to_user, read=new, lease_expires_at=new.lease_expires_at)
    record_event("reassign", actor=by, project_id=read.project_id, obj=new, study_uid=read.task.study.study_uid,
                 extra={"from_read": read.pk, "to": to_user.pseudonym})
    broadcast_to_reader_on_commit(read.reader_id, read.project_id, "read.cancelled",
                                  {"read": read.pk, "task": read.task_id, "reason": "reassigned"})
    broadcast_to_reader_on_commit(to_user.pk, read.project_id, "read.claimed", {
        "read": new.pk, "task": new.task_id, "lease_expires_at": new.lease_expires_at.isoformat()})
    return new


@transaction.atomic
def cancel_task(task_id, *, by: User, project: Project) -> Task:
    """Cancel a task: its claimed reads end, its slots go and its adjudication closes (end_task_work)."""
    if not Task.objects.filter(pk=task_id, project=project).exists():
        raise NotFound("No such task.")
    work = lock_task_work(task_id)
    task = Task.objects.select_for_update(**ROW_LOCK).select_related("study").get(pk=task_id)
    check_task_transition(task.state, TaskState.CANCELLED)  # before any of its work ends
    end_task_work(work, by=by, reason="task_cancelled")
    advance_task(task, TaskState.CANCELLED)
    record_event("cancel", actor=by, project=project, obj=task, study_uid=task.study.study_uid)
    return task
