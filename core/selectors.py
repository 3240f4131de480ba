"""Who may see which project: the querysets and lookups every view goes through.

Somebody without access to an object gets 404, never 403, so existence does not leak; a caller
who may see a project but not do the thing asked gets 403.
"""

from django.db.models import QuerySet
from guardian.shortcuts import get_objects_for_user

from core.errors import Forbidden, NotFound
from core.models import Membership, Organization, Project, ProtocolVersion
from core.roles import Perm


def projects_visible_to(user, perm: str = Perm.VIEW) -> QuerySet[Project]:
    """Projects on which ``user`` holds ``perm`` (superusers: all)."""
    if not user.is_authenticated:
        return Project.objects.none()
    return get_objects_for_user(user, f"core.{perm}", klass=Project, accept_global_perms=False)


def get_project_for(user, pk, perm: str = Perm.VIEW) -> Project:
    """The project if ``user`` may see it and holds ``perm`` on it; 404 if unseen, 403 if not allowed."""
    try:
        project = projects_visible_to(user).get(pk=pk)
    except (Project.DoesNotExist, ValueError, TypeError):
        raise NotFound("No such project.") from None
    if perm != Perm.VIEW and not user_has_perm(user, perm, project):
        raise Forbidden("Your role on this project does not allow this.")
    return project


def user_has_perm(user, perm: str, project: Project) -> bool:
    return user.has_perm(f"core.{perm}", project)


def organizations_visible_to(user) -> QuerySet[Organization]:
    """A user's own organisation and the organisations of the projects they can see."""
    if user.is_superuser:
        return Organization.objects.all()
    projects = projects_visible_to(user)
    ids = set(projects.values_list("client_id", flat=True)) | set(projects.values_list("vendor_id", flat=True))
    if user.organization_id:
        ids.add(user.organization_id)
    return Organization.objects.filter(pk__in=ids)


def memberships_visible_to(user, project: Project) -> QuerySet[Membership]:
    """Managers (and superusers) see every membership of the project; others only their own."""
    qs = Membership.objects.filter(project=project).select_related("user")
    if user_has_perm(user, Perm.VIEW_MEMBERS, project):
        return qs
    return qs.filter(user=user)


def protocol_versions_of(project: Project) -> QuerySet[ProtocolVersion]:
    return project.protocol_versions.prefetch_related("entries")
