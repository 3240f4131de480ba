"""Organisations, users and projects: creation and edits, each recorded in the audit trail."""

from django.contrib.auth.password_validation import validate_password
from django.core.exceptions import ValidationError
from django.db import transaction

from audit.trail import record_event
from core.errors import DomainError, Forbidden
from core.memberships import grant_membership
from core.models import Organization, Project, User
from core.roles import Role
from core.selectors import client_organizations_served_by, is_vendor_admin


@transaction.atomic
def create_organization(*, name: str, kind: str, by: User) -> Organization:
    org = Organization.objects.create(name=name, kind=kind)
    record_event("create", actor=by, obj=org)
    return org


def may_add_people(by: User, organization: Organization | None) -> bool:
    """Superusers add people anywhere; an organisation administrator to their own organisation and, for
    a vendor's, to the client organisations it runs projects for (how a client's people are onboarded)."""
    if by.is_superuser:
        return True
    if not (by.is_org_admin and by.organization_id) or organization is None:
        return False
    if organization.pk == by.organization_id:
        return True
    return (by.organization.kind == Organization.Kind.VENDOR
            and client_organizations_served_by(by.organization_id).filter(pk=organization.pk).exists())


@transaction.atomic
def create_user(*, username: str, password: str, by: User, organization: Organization | None = None,
                is_org_admin: bool = False, **fields) -> User:
    """An organisation admin adds a person to their own organisation, or to a client it serves (may_add_people).

    A client's administrators are the client's or a superuser's to appoint, never a vendor's.
    """
    organization = organization or by.organization
    if not may_add_people(by, organization):
        raise Forbidden("Only administrators of the organisation, or of a vendor serving it, add its people.")
    if is_org_admin and not by.is_superuser and organization.pk != by.organization_id:
        raise Forbidden("Only the organisation itself or a platform administrator appoints its administrators.",
                        errors={"is_org_admin": ["Not for another organisation's people."]})
    if User.objects.filter(username__iexact=username).exists():
        raise DomainError("That username is taken.", code="username_taken", errors={"username": ["Already taken."]})
    user = User(username=username, organization=organization, is_org_admin=is_org_admin, **fields)
    try:
        validate_password(password, user)
    except ValidationError as exc:
        raise DomainError("The password is too weak.", errors={"password": exc.messages}) from None
    user.set_password(password)
    user.save()
    record_event("create", actor=by, obj=user, extra={
        "pseudonym": user.pseudonym, "organization": organization.pk if organization else None,
        "is_org_admin": is_org_admin})
    return user


@transaction.atomic
def create_project(*, name: str, client: Organization, modalities: list[str], by: User, vendor=None,
                   reads_per_task: int = 2, description: str = "") -> Project:
    """A vendor organisation admin opens a project for a client; they become its manager."""
    if by.is_superuser:
        vendor = vendor or by.organization
        if vendor is None:
            raise DomainError("Name the vendor organisation.", errors={"vendor": ["Required."]})
    elif by.is_org_admin and by.organization and by.organization.kind == Organization.Kind.VENDOR:
        vendor = by.organization
    else:
        raise Forbidden("Only administrators of a vendor organisation create projects.")
    if Project.objects.filter(client=client, name=name).exists():
        raise DomainError("The client already has a project of that name.", code="duplicate",
                          errors={"name": ["Already used for this client."]})
    project = Project.objects.create(
        name=name, client=client, vendor=vendor, modalities=sorted(set(modalities)), reads_per_task=reads_per_task,
        description=description,
    )
    record_event("create", actor=by, obj=project, project=project)
    if by.organization_id == vendor.pk:
        grant_membership(project=project, user=by, role=Role.MANAGER, by=by)
    return project


@transaction.atomic
def update_project(project: Project, *, by: User, **changes) -> Project:
    project = Project.objects.select_for_update().get(pk=project.pk)
    if "name" in changes and Project.objects.filter(client=project.client, name=changes["name"]).exclude(
            pk=project.pk).exists():
        raise DomainError("The client already has a project of that name.", code="duplicate",
                          errors={"name": ["Already used for this client."]})
    if "modalities" in changes:
        changes["modalities"] = sorted(set(changes["modalities"]))
    for field, value in changes.items():
        setattr(project, field, value)
    project.save()
    record_event("update", actor=by, obj=project, project=project, extra={"fields": sorted(changes)})
    return project
