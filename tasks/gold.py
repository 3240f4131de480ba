"""Gold standards, hidden gold checks and calibration.

A gold or calibration task carries a reference: the consensus of the radiologists who read it
(gold and calibration tasks are routed to radiologists, with the project's resolution rule) or a
reference imported by a manager. Check reads put such a task in front of a reader exactly as any
claim does (the response has the same shape, kind and priority are never shown); they use no
queue slot and are scored against the reference: the share of the schema's labels on which the
read agrees with the reference under the protocol's agreement rules (tasks.consensus).

- Gold checks are injected into claims at the project's ``gold_rate``. A rolling mean of the
  reader's last ``gold_window`` gold scores below ``gold_threshold`` (after three checks)
  suspends the reader from new claims and tells the managers (audit event, workforce view).
- Calibration: where the project requires it, a reader's first claims are the calibration set;
  once every calibration task is read, a mean score of at least ``calibration_threshold``
  calibrates the reader; below it the reader is suspended until a manager reinstates them.
- Nobody is served a check whose reference they read, adjudicated or imported (``_unread``).
- A check read is leased, heartbeats, expires (the sweep), is released and reassigned exactly as
  a production read is, with the same answers and events: only its missing slot differs.
"""

from datetime import timedelta
from types import SimpleNamespace

from django.db import transaction
from django.db.models import Avg, Q
from django.utils import timezone

from audit.trail import record_event
from core.broadcast import broadcast_on_commit
from core.errors import DomainError
from core.models import Membership, Project, User
from core.roles import READER_ROLE_TIERS
from tasks.consensus import compute_agreement
from tasks.ending import end_task_work
from tasks.locks import ROW_LOCK, lock_task_work
from tasks.models import Consensus, Read, Task
from tasks.states import LIVE_READ_STATES, ReadState, TaskState, check_reference_import
from tasks.transitions import advance_task

MIN_GOLD_CHECKS = 3


def references(project_id: int, kind: str):
    """Gold or calibration tasks of the project whose reference is settled."""
    return Task.objects.filter(project_id=project_id, kind=kind, consensus__isnull=False)


@transaction.atomic
def import_reference(task: Task, findings, *, by: User) -> Consensus:
    """A manager's reference for a gold or calibration task (validated like a read). The task's
    open work ends (tasks.ending.end_task_work): radiologists need not read it any more, and an
    adjudication of its reads has nothing left to settle."""
    from tasks.findings.loading import validate_for_task

    work = lock_task_work(task.pk)
    task = Task.objects.select_for_update(**ROW_LOCK).select_related("study", "protocol_version").get(pk=task.pk)
    if task.kind == Task.Kind.PRODUCTION:
        raise DomainError("Only gold and calibration tasks take a reference.", code="not_gold")
    if hasattr(task, "consensus"):
        raise DomainError("This task already has its reference.", code="reference_exists", status=409)
    check_reference_import(task.state)
    normalised, _ = validate_for_task(task, findings)
    consensus = Consensus.objects.create(task=task, method=Consensus.Method.GOLD_REFERENCE, findings=normalised,
                                         imported_by=by)
    end_task_work(work, by=by, reason="task_settled")
    advance_task(task, TaskState.CONSENSUS, reference_import=True)
    record_event("create", actor=by, project_id=task.project_id, obj=consensus, study_uid=task.study.study_uid,
                 extra={"task": task.pk, "reference": "imported"})
    from tasks.consensus import _consensus_stored

    _consensus_stored(task.project_id)
    return consensus


def _unread(user: User, project_id: int, kind: str):
    """The reference tasks the user may still be served as checks, oldest first.

    Never one whose reference they had a hand in or saw: read for the reference (any read of the
    task that is no check, finished or not), adjudicated (the adjudication's holder, whatever its
    state) or imported. A check they read (or hold) is not served again; one they gave back,
    that expired or was moved to another reader may be, as a production task may be claimed again.
    """
    seen = (Read.objects.filter(reader=user, task__project_id=project_id, task__kind=kind)
            .filter(Q(is_check=False) | Q(state__in=LIVE_READ_STATES)).values("task_id"))
    return (references(project_id, kind).exclude(pk__in=seen).exclude(adjudication__adjudicator=user)
            .exclude(consensus__imported_by=user).order_by("id"))


def may_take_check(user: User, task: Task, rule) -> bool:
    """Whether a claim on ``rule`` (tasks.routing.Eligibility) could serve ``task`` to ``user`` as a
    check: calibration checks while calibrating, gold checks after, and only one _unread allows."""
    if (task.kind == Task.Kind.CALIBRATION) != rule.needs_calibration:
        return False
    return _unread(user, task.project_id, task.kind).filter(pk=task.pk).exists()


def claim_check(user: User, project_id: int, kind: str, tier: int, lease_seconds: int) -> Read | None:
    """A check read of a reference task the user may be served (_unread; no queue slot); None if none.
    Leased like any read: the sweep expires it (tasks.reads.sweep_expired_leases)."""
    task = _unread(user, project_id, kind).first()
    if task is None:
        return None
    now = timezone.now()
    return Read.objects.create(project_id=project_id, task=task, reader=user, tier=tier, claimed_at=now,
                               lease_expires_at=now + timedelta(seconds=lease_seconds), is_check=True)


def score_against_reference(read: Read) -> float:
    """Share of labels (used by the read or the reference) on which they agree."""
    reference = SimpleNamespace(findings=read.task.consensus.findings)
    agreement = compute_agreement(read.task, [reference, read])
    labels = agreement["labels"]
    if not labels:
        return 1.0
    return sum(1 for v in labels.values() if v["agree"]) / len(labels)


def _reader_memberships(read: Read):
    return Membership.objects.select_for_update(**ROW_LOCK).filter(
        user_id=read.reader_id, project_id=read.project_id, is_active=True, role__in=list(READER_ROLE_TIERS))


def on_check_submitted(read: Read) -> None:
    """Score a submitted check read; suspend or calibrate the reader as the project's rules say."""
    read.score = round(score_against_reference(read), 4)
    Read.objects.filter(pk=read.pk).update(score=read.score)
    project = Project.objects.get(pk=read.project_id)
    record_event("score", actor=None, project=project, obj=read, study_uid=read.task.study.study_uid,
                 extra={"kind": read.task.kind, "score": read.score, "reader": read.reader.pseudonym})
    if read.task.kind == Task.Kind.GOLD:
        _apply_gold_rule(read, project)
    elif read.task.kind == Task.Kind.CALIBRATION:
        _apply_calibration_rule(read, project)


def rolling_gold_score(user_id: int, project_id: int, window: int) -> tuple[float | None, int]:
    scores = list(Read.objects.filter(reader_id=user_id, project_id=project_id, is_check=True,
                                      task__kind=Task.Kind.GOLD, state=ReadState.SUBMITTED, score__isnull=False)
                  .order_by("-submitted_at", "-id").values_list("score", flat=True)[:window])
    return (sum(scores) / len(scores) if scores else None), len(scores)


def _apply_gold_rule(read: Read, project: Project) -> None:
    score, count = rolling_gold_score(read.reader_id, project.pk, project.gold_window)
    if count < MIN_GOLD_CHECKS or score >= project.gold_threshold:
        return
    reason = f"rolling gold score {score:.2f} over {count} checks is below {project.gold_threshold:.2f}"
    for membership in _reader_memberships(read):
        if not membership.is_suspended:
            Membership.objects.filter(pk=membership.pk).update(is_suspended=True, suspension_reason=reason)
            record_event("suspend", actor=None, project=project, obj=membership,
                         extra={"reader": read.reader.pseudonym, "reason": reason})
            broadcast_on_commit(project.pk, "reader.suspended", {"reader": read.reader.pseudonym, "reason": reason})


def _apply_calibration_rule(read: Read, project: Project) -> None:
    if _unread(read.reader, project.pk, Task.Kind.CALIBRATION).exists():
        return
    done = Read.objects.filter(reader_id=read.reader_id, project=project, is_check=True,
                               task__kind=Task.Kind.CALIBRATION, state=ReadState.SUBMITTED)
    mean = done.aggregate(m=Avg("score"))["m"] or 0.0
    memberships = _reader_memberships(read)
    if mean >= project.calibration_threshold:
        memberships.update(calibrated_at=timezone.now())
        record_event("calibrated", actor=None, project=project, object_type="core.user", object_id=read.reader_id,
                     extra={"reader": read.reader.pseudonym, "score": round(mean, 4)})
    else:
        reason = f"calibration score {mean:.2f} is below {project.calibration_threshold:.2f}"
        memberships.update(is_suspended=True, suspension_reason=reason)
        record_event("suspend", actor=None, project=project, object_type="core.user", object_id=read.reader_id,
                     extra={"reader": read.reader.pseudonym, "reason": reason})
        broadcast_on_commit(project.pk, "reader.suspended", {"reader": read.reader.pseudonym, "reason": reason})

