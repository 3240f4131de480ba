"""What ending a membership takes back from the person: their open work on the project.

``release_work_of_departed_member`` runs inside ``core.memberships.change_membership``'s
transaction (registered in TasksConfig.ready), so the revocation and the release commit or fail
together. A person who no longer holds any reader role on the project loses every read they hold
open there; one who no longer holds an adjudicating role loses their claimed adjudications. Each
release is audited with the revoker as actor (action ``release``, extra ``reason``
``membership_ended``) and announced as a release is. Their live-feed sockets are told to check
their authorisation again at once (tasks.consumers), so a socket whose access ended closes.

From then on the lookups of held work (tasks.selectors) answer 404 to the person whatever the
work's state: they require the role as well as the holder.
"""


from audit.trail import record_event
from core.broadcast import broadcast_to_reader_on_commit, recheck_feed_on_commit
from core.models import Membership, Project, User
from core.roles import Perm
from tasks.locks import ROW_LOCK, AdvisoryLock, advisory_xact_lock
from tasks.models import Adjudication, QueueSlot, Read
from tasks.reads import free_slot
from tasks.selectors import roles_with
from tasks.states import ReadState

REASON = "membership_ended"


def _still_holds(user: User, project: Project, perm: str) -> bool:
    return Membership.objects.filter(user=user, project=project, is_active=True, role__in=roles_with(perm)).exists()


def release_work_of_departed_member(*, user: User, project: Project, roles, by: User | None) -> None:
    """Release the open reads and claimed adjudications ``user`` may no longer work on; audited."""
    # A claim of this person's that is running now commits first and is released below (this
    # statement's snapshot follows it); one that starts later waits, then sees the ended role.
    advisory_xact_lock(AdvisoryLock.CLAIM, user.pk)
    if not _still_holds(user, project, Perm.READ):
        _release_reads(user, project, by)
    if not _still_holds(user, project, Perm.ADJUDICATE):
        _release_adjudications(user, project, by)
    recheck_feed_on_commit(user.pk)


def _release_reads(user: User, project: Project, by: User | None) -> None:
    # Reads before their slots, in primary-key order: the order a heartbeat or submit locks them in.
    reads = list(Read.objects.select_for_update(**ROW_LOCK).select_related("task__study")
                 .filter(reader=user, project=project, state=ReadState.CLAIMED).order_by("pk"))
    for read in reads:
        slot = (None if read.is_check else
                QueueSlot.objects.select_for_update(**ROW_LOCK).filter(read=read, reader=user).first())
        free_slot(slot, read, ReadState.RELEASED)
        record_event("release", actor=by, project=project, obj=read, study_uid=read.task.study.study_uid,
                     extra={"reason": REASON, "reader": user.pseudonym})
        broadcast_to_reader_on_commit(user.pk, project.pk, "read.released", {"read": read.pk, "task": read.task_id})


def _release_adjudications(user: User, project: Project, by: User | None) -> None:
    adjudications = list(Adjudication.objects.select_for_update(**ROW_LOCK).select_related("task__study")
                         .filter(adjudicator=user, project=project, state=Adjudication.State.CLAIMED)
                         .order_by("pk"))
    for adjudication in adjudications:
        # release_adjudication's change, made for the revoker: the holder can no longer look it up.
        Adjudication.objects.filter(pk=adjudication.pk).update(state=Adjudication.State.OPEN, adjudicator=None,
                                                               lease_expires_at=None)
        record_event("release", actor=by, project=project, obj=adjudication,
                     study_uid=adjudication.task.study.study_uid, extra={"reason": REASON, "reader": user.pseudonym})
