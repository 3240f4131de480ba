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


# The reading queue's and quality checks' settings; the de-identification options; the pseudonym map.
QUEUE_SETTINGS = ("lease_seconds", "max_open_reads", "higher_tiers_take_lower_work", "requires_calibration",
                  "gold_rate", "gold_threshold", "gold_window", "calibration_threshold")
DEID_SETTINGS = ("deid_retain_modified_dates", "deid_retain_patient_characteristics", "deid_clean_descriptors",
                 "deid_retain_device_identity", "deid_private_creator_allowlist")
SETTINGS = (*QUEUE_SETTINGS, *DEID_SETTINGS, "keep_pseudonym_map")


def is_deid_frozen(project: Project) -> bool:
    """Whether studies were ingested: their UIDs, dates and kept attributes came from the options then in force,
    so changing them would mix two de-identifications in one project (and one delivery)."""
    return project.studies.exists()


@transaction.atomic
def update_project_settings(project: Project, *, by: User, **changes) -> Project:
    """Change queue, quality and de-identification settings (ranges checked by the caller); audited old -> new.

    De-identification options are frozen once a study is ingested; ``keep_pseudonym_map`` decides
    whether re-identification is possible at all, so only the vendor's administrators change it.
    """
    unknown = set(changes) - set(SETTINGS)
    if unknown:
        raise DomainError("Not a project setting.", errors={name: ["Not a setting."] for name in sorted(unknown)})
    # The row lock waits for an ingest that has written studies (it holds a key-share lock on this row).
    project = Project.objects.select_for_update().get(pk=project.pk)
    if "deid_private_creator_allowlist" in changes:
        allowlist = changes["deid_private_creator_allowlist"]
        changes["deid_private_creator_allowlist"] = sorted({creator.strip() for creator in allowlist})
    changed = {name: (getattr(project, name), value) for name, value in changes.items()
               if getattr(project, name) != value}
    if "keep_pseudonym_map" in changed and not is_vendor_admin(by, project):
        raise Forbidden("Only an administrator of the project's vendor organisation decides whether the pseudonym "
                        "map is kept.", code="org_admin_only",
                        errors={"keep_pseudonym_map": ["Organisation administrators only."]})
    frozen = sorted(name for name in changed if name in DEID_SETTINGS)
    if frozen and is_deid_frozen(project):
        raise DomainError("Studies were already de-identified with the current options; they cannot change now.",
                          code="deid_frozen", errors={name: ["Frozen once a study is ingested."] for name in frozen})
    if not changed:
        return project
    for name, (_, value) in changed.items():
        setattr(project, name, value)
    project.save(update_fields=[*changed, "updated_at"])
    record_event("update", actor=by, obj=project, project=project, extra={
        "settings": {name: {"from": old, "to": new} for name, (old, new) in sorted(changed.items())}})
    return project
