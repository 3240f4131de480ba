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


def is_vendor_admin(user, project: Project) -> bool:
    """Whether ``user`` administers the organisation that runs ``project`` (superusers count)."""
    if not user.is_authenticated:
        return False
    return user.is_superuser or (user.is_org_admin and user.organization_id is not None
                                 and user.organization_id == project.vendor_id)


def get_project_administered_by(user, pk, perm: str = Perm.MANAGE) -> Project:
    """As get_project_for, and the project's vendor administrators may also reach it, member or not:
    they appoint its oversight roles and decide whether its pseudonym map is kept."""
    if user.is_authenticated and user.is_org_admin and user.organization_id:
        try:
            return Project.objects.get(pk=pk, vendor_id=user.organization_id)
        except (Project.DoesNotExist, ValueError, TypeError):
            pass
    return get_project_for(user, pk, perm)


def client_organizations_served_by(org_id) -> QuerySet[Organization]:
    """The client organisations for which ``org_id`` runs (or ran) a project."""
    return Organization.objects.filter(kind=Organization.Kind.CLIENT, client_projects__vendor_id=org_id).distinct()


def organizations_visible_to(user) -> QuerySet[Organization]:
    """A user's own organisation and the organisations of the projects they can see."""
    if user.is_superuser:
        return Organization.objects.all()
    projects = projects_visible_to(user)
    ids = set(projects.values_list("client_id", flat=True)) | set(projects.values_list("vendor_id", flat=True))
    if user.organization_id:
        ids.add(user.organization_id)
        if user.is_org_admin:
            ids |= set(client_organizations_served_by(user.organization_id).values_list("pk", flat=True))
    return Organization.objects.filter(pk__in=ids)


def memberships_visible_to(user, project: Project) -> QuerySet[Membership]:
    """Managers, the vendor's administrators (and superusers) see every membership; others only their own."""
    qs = Membership.objects.filter(project=project).select_related("user")
    if is_vendor_admin(user, project) or user_has_perm(user, Perm.VIEW_MEMBERS, project):
        return qs
    return qs.filter(user=user)


def protocol_versions_of(project: Project) -> QuerySet[ProtocolVersion]:
    return project.protocol_versions.prefetch_related("entries")
