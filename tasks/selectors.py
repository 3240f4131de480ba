"""Reads and tasks a caller may see, and under which name a reader appears to them.

One rule, ``reader_visibility``, for every path that shows reads or readers (task detail, the
reads list, the workforce, concordance scorecards, batch reports, progress):

| who (permission on the project)     | others' reads                     | readers named by         |
|-------------------------------------|-----------------------------------|--------------------------|
| managers (manage_project), superuser| every read, open ones with drafts | username (view_members)  |
| QA (view_reads)                     | submitted reads only              | pseudonym                |
| clients (view_progress only)        | none                              | nobody: tier aggregates  |
| readers, everybody else             | none (blinding)                   | nobody                   |

Everybody sees their own reads on projects they still belong to. Work a person holds counts
only while they hold the role for it: an open read while a reader role is active, a claimed
adjudication while an adjudicating role is; without it the lookups answer 404, whatever the
read's state says (tasks.revocation releases such work when a membership ends).
"""

from dataclasses import dataclass
from enum import StrEnum

from django.db.models import Exists, OuterRef, Q, QuerySet
from guardian.core import ObjectPermissionChecker

from core.dicom.models import Study
from core.models import Membership
from core.roles import ROLE_PERMISSIONS, Perm
from core.selectors import projects_visible_to
from tasks.models import Adjudication, Read, Task
from tasks.states import ReadState


class Naming(StrEnum):
    USERNAME = "username"
    PSEUDONYM = "pseudonym"
    NONE = "none"  # no per-reader rows at all: aggregates by tier


@dataclass(frozen=True)
class ReaderVisibility:
    """What one user sees of one project's reads and readers."""

    user_id: int | None
    others_open_reads: bool  # claimed, released ... reads of others, with their drafts and holders
    others_submitted_reads: bool
    naming: Naming

    @property
    def per_reader(self) -> bool:
        """Whether this user gets rows per reader (else aggregates by tier only)."""
        return self.naming != Naming.NONE

    def reads(self) -> Q:
        """The filter on a project's reads this user may see."""
        if self.others_open_reads:
            return Q()
        own = Q(reader_id=self.user_id)
        return own | Q(state=ReadState.SUBMITTED) if self.others_submitted_reads else own

    def name_of(self, reader) -> str | None:
        if self.naming == Naming.USERNAME:
            return reader.username
        if self.naming == Naming.PSEUDONYM:
            return reader.pseudonym
        return None


def _visibility(user_id, perms, *, superuser: bool) -> ReaderVisibility:
    if superuser or Perm.MANAGE in perms:
        naming = Naming.USERNAME if superuser or Perm.VIEW_MEMBERS in perms else Naming.PSEUDONYM
        return ReaderVisibility(user_id, True, True, naming)
    if Perm.VIEW_READS in perms:
        return ReaderVisibility(user_id, False, True, Naming.PSEUDONYM)
    return ReaderVisibility(user_id, False, False, Naming.NONE)


def reader_visibility(user, project) -> ReaderVisibility:
    """What ``user`` sees of ``project``'s reads and readers (the table above)."""
    if not user.is_authenticated:
        return ReaderVisibility(None, False, False, Naming.NONE)
    perms = () if user.is_superuser else set(ObjectPermissionChecker(user).get_perms(project))
    return _visibility(user.pk, perms, superuser=user.is_superuser)


def reader_visibilities(user):
    """``reader_visibility`` for many projects at once (lists): project id -> ReaderVisibility,
    from three permission lookups whatever the number of projects."""
    if user.is_superuser:
        everything = _visibility(user.pk, (), superuser=True)
        return lambda project_id: everything
    held = {perm: set(projects_visible_to(user, perm).values_list("pk", flat=True))
            for perm in (Perm.MANAGE, Perm.VIEW_MEMBERS, Perm.VIEW_READS)}

    def visibility(project_id: int) -> ReaderVisibility:
        return _visibility(user.pk, {perm for perm, ids in held.items() if project_id in ids}, superuser=False)

    return visibility


def reads_visible_to(user) -> QuerySet[Read]:
    """Every read ``user`` may see: ``ReaderVisibility.reads`` over all their projects."""
    if user.is_superuser:
        return Read.objects.all()
    member_of = projects_visible_to(user).values("pk")
    managed = projects_visible_to(user, Perm.MANAGE).values("pk")
    reviewed = projects_visible_to(user, Perm.VIEW_READS).values("pk")
    return Read.objects.filter(Q(reader=user, project_id__in=member_of) | Q(project_id__in=managed)
                               | Q(project_id__in=reviewed, state=ReadState.SUBMITTED))


def tasks_for_managers(user, project) -> QuerySet[Task]:
    return Task.objects.filter(project=project).select_related("study", "series", "protocol_version")


def roles_with(perm: str) -> list[str]:
    """The roles that carry ``perm`` (core.roles' one map)."""
    return sorted(role for role, perms in ROLE_PERMISSIONS.items() if perm in perms)


def holder_is_member(perm: str, holder: str = "reader") -> Exists:
    """The row's ``holder`` still holds an active membership of the row's project with ``perm``."""
    return Exists(Membership.objects.filter(user_id=OuterRef(f"{holder}_id"), project_id=OuterRef("project_id"),
                                            is_active=True, role__in=roles_with(perm)))


def open_reads_of(user) -> QuerySet[Read]:
    """The reads ``user`` holds open and may still work on (a reader role on the read's project)."""
    return Read.objects.filter(holder_is_member(Perm.READ), reader=user, state=ReadState.CLAIMED)


def claimed_adjudications_of(user) -> QuerySet:
    """The adjudications ``user`` has claimed and may still resolve (an adjudicating role on the project)."""
    return Adjudication.objects.filter(holder_is_member(Perm.ADJUDICATE, "adjudicator"), adjudicator=user,
                                       state=Adjudication.State.CLAIMED)


def study_ids_held_by(user) -> QuerySet:
    """Studies of the reads and adjudications the user holds open (what DICOMweb lets them retrieve)."""
    return Study.objects.filter(Q(pk__in=open_reads_of(user).values("task__study_id"))
                                | Q(pk__in=claimed_adjudications_of(user).values("task__study_id"))).values("pk")


def protocol_version_served(user, study_id: int) -> int | None:
    """The protocol version number of the read or adjudication under which ``user`` is served the
    study: the audit trail names it on every view and download (who saw what, under which rules)."""
    number = (open_reads_of(user).filter(task__study_id=study_id).order_by("-claimed_at")
              .values_list("task__protocol_version__number", flat=True).first())
    if number is None:
        number = (claimed_adjudications_of(user).filter(task__study_id=study_id)
                  .values_list("task__protocol_version__number", flat=True).first())
    return number


def reader_membership_sql(read_alias: str) -> str:
    """``holder_is_member(Perm.READ)`` as a plain-SQL condition on a read aliased ``read_alias``."""
    roles = ", ".join(f"'{role}'" for role in roles_with(Perm.READ))  # code constants, never input
    return (f"EXISTS (SELECT 1 FROM core_membership m WHERE m.user_id = {read_alias}.reader_id"
            f" AND m.project_id = {read_alias}.project_id AND m.is_active AND m.role IN ({roles}))")
