"""Who may watch a project's live feed, which groups their socket joins, and which events reach them.

Decision (the issue leaves it open): project-wide events go to members who may see the project's
progress (managers, QA, clients; superusers). Readers (annotator, radiologist and sub-specialist
roles) get only their own queue events, from ``reader.<their id>``, filtered to the project of the
socket; a reader never joins the project group, so never sees another reader's activity. A member
holding both kinds of permission gets both. Members with neither (auditors, privacy officers) are
refused with 4403; somebody who cannot see the project at all gets 4404 (as the API's 404); an
anonymous or badly authenticated socket gets 4401. Events naming a reader (``reader.suspended``,
by pseudonym) go only to members who may see the project's members (managers).

Authorisation holds for as long as the socket does, not only at connect: every socket checks its
credentials and the subscription again every RECHECK_SECONDS (and before forwarding an event once
its last check is that old), and at once when a membership of its user ends (``feed.recheck`` on
``user.<id>``). A socket whose token or session is gone (or whose account was deactivated) closes
with 4401; one whose roles no longer let it watch the project closes with 4403 or 4404; one that
lost only some of its groups (one of two roles ended) leaves those and keeps the rest.
"""

from dataclasses import dataclass, field

from core.broadcast import project_group, reader_group
from core.roles import Perm
from core.selectors import projects_visible_to, user_has_perm

CLOSE_UNAUTHENTICATED = 4401
CLOSE_FORBIDDEN = 4403
CLOSE_NOT_FOUND = 4404
RECHECK_SECONDS = 5.0

# Events that carry a reader pseudonym: only for members who may see who the members are.
EVENT_PERMISSIONS = {"reader.suspended": Perm.VIEW_MEMBERS}


@dataclass(frozen=True)
class FeedSubscription:
    project_id: int
    close_code: int | None = None
    groups: tuple[str, ...] = ()
    perms: frozenset[str] = field(default_factory=frozenset)

    def receives(self, message: dict) -> bool:
        """Whether a ``feed.event`` message from one of the groups is for this socket."""
        if message.get("project") != self.project_id:
            return False  # a reader's group carries the events of all their projects
        needed = EVENT_PERMISSIONS.get(message.get("event"))
        return needed is None or needed in self.perms


def feed_subscription(user, project_id: int) -> FeedSubscription:
    """The groups ``user`` joins on ``ws/projects/<project_id>/``, or the close code refusing them."""
    if user is None or not user.is_authenticated:
        return FeedSubscription(project_id, close_code=CLOSE_UNAUTHENTICATED)
    project = projects_visible_to(user).filter(pk=project_id).first()
    if project is None:
        return FeedSubscription(project_id, close_code=CLOSE_NOT_FOUND)
    perms = frozenset(p for p in (Perm.VIEW_PROGRESS, Perm.VIEW_MEMBERS, Perm.READ)
                      if user_has_perm(user, p, project))
    groups = []
    if Perm.VIEW_PROGRESS in perms:
        groups.append(project_group(project.pk))
    if Perm.READ in perms:
        groups.append(reader_group(user.pk))
    if not groups:
        return FeedSubscription(project_id, close_code=CLOSE_FORBIDDEN)
    return FeedSubscription(project.pk, groups=tuple(groups), perms=perms)
