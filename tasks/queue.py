"""The reading queue: what a claim hands out (tasks.reads: what happens to a read once held).

Guarantees, under any concurrency: no task gets more than its k reads (a task has k slots and a
read holds one); no reader reads a task twice (a partial unique index on live reads, and the
claim never offers such a slot); the k readers of a task are k different people (the same); no
reader holds more than the project's limit of open reads (checked under a per-reader lock).

A claim is one statement, ``tasks/sql/claim.sql``: it derives what the reader may claim from their
memberships (tasks.routing's rule, in SQL), picks the best eligible slot with ``FOR UPDATE SKIP
LOCKED``, inserts the read, leases the slot, moves the task to in_reading and appends the claim's
audit event. It goes in one message with the reader's claim lock and commits on its own: one
round trip. Where it claims nothing it says why, and the rarer cases take one more statement
inside a transaction (``_claim_carefully``): a calibration or gold check due (tasks.gold hands
those out), a slot whose lease ran out at the head of the queue (its end is recorded with the
claim), a shard with no audit chain head yet, or an empty-looking queue (looked at again without
passing over the tasks other claims are taking).
"""

import functools
import random
from dataclasses import dataclass
from typing import NamedTuple

from django.db import connection, transaction
from django.utils import timezone

from audit.trail import HEAD_EXISTS, EmbeddedEvent, embedded_event, record_event
from audit.trail import is_enabled as audit_enabled
from core.broadcast import broadcast_to_reader_on_commit
from core.errors import Conflict, NotFound
from core.models import Project, User
from core.selectors import projects_visible_to
from pgsql import prepared, rows
from tasks import sql
from tasks.locks import AdvisoryLock, advisory_xact_lock
from tasks.models import Read, Task
from tasks.progress import announce_progress
from tasks.routing import READER_ROLES, ROLE_TIERS, Eligibility, eligibility, eligibility_ctes
from tasks.states import ReadState, TaskState


@dataclass
class Claim:
    read: Read
    task: Task
    # The study's series when the task has no single series (the claim statement returns them
    # with the read); None: ask the database (task.study.series).
    study_series: list | None = None
    started: bool = False  # this claim moved the task from queued to in reading
    readers_see_model: bool = False  # the project shows readers the model's output (routing.Eligibility)
    recorded: bool = False  # the claim statement appended the claim's audit event itself
    resumed: bool = False  # a read the reader already held, handed back (claim_next_read's ``resume``)


class ClaimRow(NamedTuple):
    """The claim statement's one row, column for column (checked against the cursor's description)."""

    held_read: int | None  # resume: the read handed back instead (nothing claimed)
    held_sees_model: bool
    wants_check: bool  # a calibration or gold check is due (nothing claimed)
    audit_ready: bool  # false: the event's chain head is missing (nothing claimed)
    read_id: int | None  # the new read; None: nothing claimed
    expired_read_id: int | None  # the read whose lapsed lease this claim took over
    expired_reader_id: int | None
    task_id: int | None
    project_id: int | None
    read_tier: int | None
    lease_expires_at: object
    study_id: int | None
    study_uid: str | None
    series_id: int | None
    series_uid: str | None
    series_modality: str | None
    series_mr_sequence: str | None
    version_id: int | None
    version_number: int | None
    version_used_at: object
    study_series: list | None
    other_writes: int | None
    started_count: int | None
    task_kind: str | None
    sees_model: bool | None
    recorded: int


_CLAIM_LOCK = "SELECT pg_advisory_xact_lock(%(claim_lock)s, %(reader)s)"


@functools.cache
def claim_text(audit_sql: str | None) -> str:
    """The claim statement's text, with the claim's audit event CTEs (audit.trail.embedded_event's
    ``sql``, after ``claimed``) or without (the trail off): filled in once per process."""
    return sql.load(
        "claim.sql", eligibility=eligibility_ctes(),
        claimed=ReadState.CLAIMED.value, submitted=ReadState.SUBMITTED.value, expired=ReadState.EXPIRED.value,
        queued=TaskState.QUEUED.value, in_reading=TaskState.IN_READING.value, audit_head_exists=HEAD_EXISTS,
        audit="" if audit_sql is None else f", {audit_sql}",
        recorded="0" if audit_sql is None else "(SELECT count(*) FROM audit_event)")


def claim_statement(reader_id: int, now, *, project_id: int | None = None, event: EmbeddedEvent | None = None,
                    resume: bool = False, offer_checks: bool = True, gold_draw: float = 1.0,
                    take_lapsed: bool = False, skip_busy: bool = True,
                    audit_head_required: bool | None = None) -> tuple[str, dict]:
    """The claim statement and its arguments by name (bench/claims.py drives it with pgbench
    too); the flags are claim.sql's. ``event``: the claim's audit event, appended by the statement;
    the statement then claims only where the event's chain head exists (the event goes in with the
    claim or nothing is claimed) unless ``audit_head_required`` says otherwise."""
    args = {"reader": reader_id, "projects": None if project_id is None else [project_id], "now": now,
            "reader_roles": READER_ROLES, "role_tiers": ROLE_TIERS, "resume": resume, "offer_checks": offer_checks,
            "gold_draw": gold_draw, "take_lapsed": take_lapsed, "skip_busy": skip_busy,
            "audit_head_required": event is not None if audit_head_required is None else audit_head_required,
            "audit_shard": event.shard if event is not None else 0, **(event.args if event is not None else {})}
    return claim_text(None if event is None else event.sql), args


def _claim_event(user) -> EmbeddedEvent | None:
    """The claim's audit event, every field the statement knows taken from its row ``claimed``."""
    return embedded_event(
        "claim", after="claimed", actor=user, object_type=Read._meta.label_lower,
        from_statement={"object_id": "claimed.read_id::text", "study_uid": "claimed.claimed_study_uid",
                        "protocol_version": "claimed.claimed_version", "project_id": "claimed.project_id",
                        "actor_roles": "claimed.actor_roles", "actor_tier": "claimed.actor_tier"},
        extra_from_statement={"task": "claimed.claimed_task_id", "lease_expires_at": "claimed.lease_expires_text"})


def _run_claim(user, now, *, project_id, event: EmbeddedEvent | None, **flags) -> ClaimRow:
    """Send the reader's claim lock and the claim statement in one message (the statement's
    snapshot is taken once the lock is granted); its row."""
    text, args = claim_statement(user.pk, now, project_id=project_id, event=event, **flags)
    args["claim_lock"] = int(AdvisoryLock.CLAIM)
    with connection.cursor() as cursor:
        prepared.execute_prepared(cursor, "radqueue_claim", text, args, before=(_CLAIM_LOCK, args))
        if not _checked_columns.get(text):
            names = tuple(column.name for column in cursor.description)
            assert names == ClaimRow._fields, f"claim.sql's columns {names} differ from ClaimRow's"
            _checked_columns[text] = True
        return ClaimRow._make(cursor.fetchone())


_checked_columns: dict[str, bool] = {}


def claim_next_read(user: User, *, project_id: int | None = None, resume: bool = False) -> Claim | None:
    """Claim the most urgent read slot the user may take (None when there is none).

    ``resume``: where the reader already holds an unexpired read on the projects this claim could
    take from, hand back the oldest of them (``Claim.resumed``) instead of taking another; decided
    under the reader's claim lock, so a claim retried while its lost first try commits still gets
    that one read."""
    if project_id is not None and not projects_visible_to(user).filter(pk=project_id).exists():
        raise NotFound("No such project.")
    now = timezone.now()
    # One draw per claim: a project with gold rate r hands out a gold check where it is below r.
    draw = random.random()  # noqa: S311 - sampling, not security
    event = _claim_event(user) if audit_enabled() else None
    if event is None and audit_enabled():  # the event cannot go in with the claim: append it apart
        return _claim_carefully(user, project_id, now, event, resume=resume, gold_draw=draw, check_due=True)
    row = _run_claim(user, now, project_id=project_id, event=event, resume=resume, gold_draw=draw)
    if row.read_id is not None:  # with its audit event, where the trail is on (audit_head_required)
        claim = _claim_of(user, row, now)
        _announce_claim(user, claim, None, progress=True)
        return claim
    if row.held_read is not None:
        return _resume_held(user, row.held_read, row.held_sees_model)
    return _claim_carefully(user, project_id, now, event, resume=resume, gold_draw=draw, check_due=row.wants_check)


def _claim_carefully(user, project_id, now, event: EmbeddedEvent | None, *, resume: bool, gold_draw: float,
                     check_due: bool) -> Claim | None:
    """The claim in a transaction, for what the one-message claim leaves: a calibration or gold
    check due, a lapsed lease to take over (its end recorded with the claim), the claim's audit
    event appended apart (no chain head for its shard yet), and a queue that looked empty because
    its last free slots were on tasks other claims were taking."""
    with transaction.atomic():
        if check_due:
            projects = None if project_id is None else [project_id]
            # The lock first: the open-read counts in the rules must see the reader's other claims.
            advisory_xact_lock(AdvisoryLock.CLAIM, user.pk)
            rules = [r for r in eligibility(user, projects) if not r.at_limit]
            check = _claim_check(user, rules, gold_draw)
            if check is not None:
                claim = _fetch_claim(check.pk)
                claim.readers_see_model = any(r.readers_see_model for r in rules if r.project_id == check.project_id)
                _announce_claim(user, claim, None, progress=False)
                return claim
        # Here a missing chain head does not stop the claim: its event is then appended apart
        # (_announce_claim), in this transaction.
        row = _run_claim(user, now, project_id=project_id, event=event, resume=resume, offer_checks=False,
                         take_lapsed=True, skip_busy=False, audit_head_required=False)
        if row.held_read is not None:
            return _resume_held(user, row.held_read, row.held_sees_model)
        if row.read_id is None:
            return None
        claim = _claim_of(user, row, now)
        expired = None if row.expired_read_id is None else (row.expired_read_id, row.expired_reader_id)
        _announce_claim(user, claim, expired, progress=True)
    return claim


def _resume_held(user, read_id: int, sees_model: bool) -> Claim:
    """The read ``user`` still holds, as its claim gave it. Audited as a claim, marked resumed;
    nothing changed, so nothing is broadcast."""
    claim = _fetch_claim(read_id)
    claim.resumed, claim.readers_see_model = True, sees_model
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
    full = [r.project_id for r in rules if r.at_limit]
    if full:
        held = (Read.objects.filter(reader=user, state=ReadState.CLAIMED, project_id__in=full)
                .order_by("claimed_at", "id").values_list("id", "project_id", "lease_expires_at"))
        raise OpenReadLimit([{"read": pk, "project": project, "lease_expires_at": lease}
                             for pk, project, lease in held])
    return None


def _announce_claim(user, claim: Claim, expired: tuple[int, int] | None, *, progress: bool) -> None:
    """The claim's audit event where its statement did not append it, the lapsed lease it took
    over, the reader's live feed and the project's progress."""
    read, task = claim.read, claim.task
    if not claim.recorded:  # only in a transaction (_claim_carefully): a shard without its chain head yet
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


def _claim_check(user, rules: list[Eligibility], gold_draw: float) -> Read | None:
    """A calibration check (readers still calibrating) or, where ``gold_draw`` is below the
    project's gold rate, a hidden gold check."""
    from tasks import gold

    for rule in rules:
        if rule.needs_calibration:
            read = gold.claim_check(user, rule.project_id, Task.Kind.CALIBRATION, rule.reader_tier,
                                    rule.lease_seconds)
            if read is not None:
                return read
    for rule in rules:
        if not rule.needs_calibration and gold_draw < rule.gold_rate:
            read = gold.claim_check(user, rule.project_id, Task.Kind.GOLD, rule.reader_tier, rule.lease_seconds)
            if read is not None:
                return read
    return None


def _claim_of(user, row: ClaimRow, now) -> Claim:
    """The claim the statement's row describes: everything its response and audit event need came
    back with it, so no query follows."""
    from core.dicom.models import Series, Study
    from core.models import ProtocolVersion

    read = rows.loaded(Read, id=row.read_id, project_id=row.project_id, task_id=row.task_id, reader_id=user.pk,
                       state=ReadState.CLAIMED, tier=row.read_tier, claimed_at=now,
                       lease_expires_at=row.lease_expires_at, last_heartbeat_at=None, active_seconds=0.0,
                       submitted_at=None, ended_at=None, draft=None, findings=None, findings_count=0,
                       slices_touched=0, idempotency_key="", is_check=False)
    task = rows.loaded(Task, id=row.task_id, project_id=row.project_id, study_id=row.study_id,
                       series_id=row.series_id, protocol_version_id=row.version_id, kind=row.task_kind)
    task.study = rows.loaded(Study, id=row.study_id, project_id=row.project_id, study_uid=row.study_uid)
    task.series = None if row.series_id is None else rows.loaded(
        Series, id=row.series_id, study_id=row.study_id, series_uid=row.series_uid, modality=row.series_modality,
        mr_sequence=row.series_mr_sequence)
    task.protocol_version = rows.loaded(ProtocolVersion, id=row.version_id, project_id=row.project_id,
                                        number=row.version_number, used_at=row.version_used_at)
    read.task = task
    series = None
    if row.series_id is None:
        series = [rows.loaded(Series, id=pk, study_id=row.study_id, series_uid=uid, modality=modality,
                              mr_sequence=sequence)
                  for pk, uid, modality, sequence in (row.study_series or [])]
    return Claim(read=read, task=task, study_series=series, started=bool(row.started_count),
                 readers_see_model=bool(row.sees_model), recorded=bool(row.recorded))
