"""The reading queue: what a claim hands out (tasks.reads: what happens to a read once held).

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

from dataclasses import dataclass
from datetime import timedelta

from django.db import connection, transaction
from django.db.models import Count
from django.utils import timezone

from audit.trail import EmbeddedEvent, embedded_event, record_event
from audit.trail import is_enabled as audit_enabled
from core.broadcast import broadcast_to_reader_on_commit
from core.errors import Conflict, NotFound
from core.models import Project, User
from core.selectors import projects_visible_to
from pgsql import prepared, rows
from tasks.locks import AdvisoryLock
from tasks.models import Read, Task
from tasks.progress import announce_progress
from tasks.routing import Eligibility, digest_check, eligibility, eligibility_and_digest
from tasks.states import (
    ReadState,
    TaskState,
)


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
        rules, digest = eligibility_and_digest(user, projects, claim_lock=(AdvisoryLock.CLAIM, user.pk))
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
                                unchanged=(expression, params, digest), lock=(AdvisoryLock.CLAIM, user.pk),
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


def lease_seconds(project_id: int) -> int:
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
