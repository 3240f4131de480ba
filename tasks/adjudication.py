"""Adjudication queues: a senior reader claims the most urgent disagreement they are eligible for,
sees every read side by side, and resolves it with a rationale; the result becomes the consensus.

Eligible: an active, not suspended member allowed to adjudicate, of the adjudication's tier or
higher, holding its sub-specialty when one is required, and never one of the task's readers.
Claims take row locks with SKIP LOCKED and hold a lease like reads do.
"""

from datetime import timedelta

from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from audit.trail import record_event
from core.broadcast import broadcast_on_commit
from core.errors import Conflict, DomainError, NotFound
from core.models import Membership, User
from core.roles import READER_ROLE_TIERS, Perm
from core.selectors import projects_visible_to
from tasks.consensus import store_consensus_from_adjudication
from tasks.locks import ROW_LOCK
from tasks.models import Adjudication, Read
from tasks.selectors import holder_is_member
from tasks.states import ReadState


def _eligibility(user) -> dict[int, tuple[int, set[str], int]]:
    """project id -> (highest tier, sub-specialties, lease seconds) where the user may adjudicate."""
    projects = projects_visible_to(user, Perm.ADJUDICATE)
    result: dict[int, tuple[int, set[str], int]] = {}
    for m in Membership.objects.filter(user=user, project__in=projects, is_active=True,
                                       role__in=list(READER_ROLE_TIERS)).select_related("project"):
        if m.is_suspended:
            result.pop(m.project_id, None)
            continue
        tier, subs, lease = result.get(m.project_id, (0, set(), m.project.lease_seconds))
        result[m.project_id] = (max(tier, READER_ROLE_TIERS[m.role]), subs | set(m.subspecialties), lease)
    return result


def claim_next_adjudication(user: User) -> Adjudication | None:
    """The most urgent open adjudication the user may take, claimed and leased; None when none."""
    eligible = _eligibility(user)
    if not eligible:
        return None
    now = timezone.now()
    condition = Q()
    for project_id, (tier, subs, _) in eligible.items():
        condition |= Q(project_id=project_id, tier__lte=tier) & (Q(subspecialty="") | Q(subspecialty__in=subs))
    own_tasks = Read.objects.filter(reader=user, state__in=[ReadState.CLAIMED, ReadState.SUBMITTED]).values("task_id")
    with transaction.atomic():
        adjudication = (Adjudication.objects.select_for_update(skip_locked=True, **ROW_LOCK)
                        .filter(condition)
                        .filter(Q(state=Adjudication.State.OPEN)
                                | Q(state=Adjudication.State.CLAIMED, lease_expires_at__lt=now))
                        .exclude(task_id__in=own_tasks).order_by("-priority", "id").first())
        if adjudication is None:
            return None
        tier, _, lease = eligible[adjudication.project_id]
        previous = adjudication.adjudicator_id
        adjudication.state, adjudication.adjudicator, adjudication.adjudicator_tier = (
            Adjudication.State.CLAIMED, user, tier)
        adjudication.claimed_at, adjudication.lease_expires_at = now, now + timedelta(seconds=lease)
        adjudication.save()
        record_event("claim", actor=user, project_id=adjudication.project_id, obj=adjudication,
                     study_uid=adjudication.task.study.study_uid, extra={"previous_holder": previous})
    return adjudication


def get_adjudication_for_update(adjudication_id, user: User) -> Adjudication:
    """The caller's claimed adjudication, locked; 404 for anybody else's, and for their own once
    they hold no adjudicating role on its project (tasks.selectors)."""
    adjudication = (Adjudication.objects.select_for_update(**ROW_LOCK)
                    .select_related("task__study", "task__protocol_version")
                    .filter(holder_is_member(Perm.ADJUDICATE, "adjudicator"), pk=adjudication_id,
                            adjudicator=user).first())
    if adjudication is None:
        raise NotFound("No such adjudication.")
    if adjudication.state != Adjudication.State.CLAIMED:
        detail = _NOT_CLAIMED.get(adjudication.state, f"This adjudication is {adjudication.state}.")
        raise Conflict(detail, code=f"adjudication_{adjudication.state}")
    return adjudication


_NOT_CLAIMED = {
    Adjudication.State.CANCELLED: "This adjudication was cancelled: its task was cancelled or got its final "
                                  "label another way, so there is nothing left to resolve.",
    Adjudication.State.RESOLVED: "This adjudication has already been resolved.",
}


def resolve_adjudication(adjudication_id, user: User, *, resolution: str, rationale: str, read_id=None,
                         findings=None):
    """Pick one read, or edit / write findings (validated like a submit); rationale required."""
    from tasks.findings.loading import validate_for_task

    if not (rationale or "").strip():
        raise DomainError("A rationale is required.", errors={"rationale": ["Say why this is the answer."]})
    with transaction.atomic():
        adjudication = get_adjudication_for_update(adjudication_id, user)
        task = adjudication.task
        chosen = None
        if resolution == "read":
            chosen = Read.objects.filter(pk=read_id, task=task, state=ReadState.SUBMITTED).first()
            if chosen is None:
                raise DomainError("Choose one of this task's submitted reads.", errors={"read": ["Not a read of "
                                                                                                 "this task."]})
            result = chosen.findings
        elif resolution in ("edit", "new"):
            result, _ = validate_for_task(task, findings)
        else:
            raise DomainError("resolution is read, edit or new.", errors={"resolution": ["Unknown."]})
        now = timezone.now()
        adjudication.state, adjudication.resolution, adjudication.chosen_read = (
            Adjudication.State.RESOLVED, resolution, chosen)
        adjudication.rationale, adjudication.resolved_at = rationale.strip(), now
        adjudication.save()
        consensus = store_consensus_from_adjudication(adjudication, result)
        record_event("adjudicate", actor=user, project_id=adjudication.project_id, obj=adjudication,
                     study_uid=task.study.study_uid, protocol_version=task.protocol_version.number,
                     extra={"resolution": resolution, "task": task.pk, "consensus": consensus.pk})
        broadcast_on_commit(adjudication.project_id, "adjudication.resolved", {
            "adjudication": adjudication.pk, "task": task.pk, "resolution": resolution})
        broadcast_on_commit(adjudication.project_id, "task.consensus", {"task": task.pk, "method": consensus.method})
    return adjudication


@transaction.atomic
def release_adjudication(adjudication_id, user: User) -> Adjudication:
    adjudication = get_adjudication_for_update(adjudication_id, user)
    adjudication.state, adjudication.adjudicator, adjudication.lease_expires_at = Adjudication.State.OPEN, None, None
    adjudication.save()
    record_event("release", actor=user, project_id=adjudication.project_id, obj=adjudication,
                 study_uid=adjudication.task.study.study_uid)
    return adjudication
