"""Memberships: the one way to give or take a role on a project.

A membership change and the object permissions it implies change in one transaction: the
permissions a user holds on a project are always exactly the union of their active roles'.
"""

from collections.abc import Callable

from django.db import transaction
from guardian.shortcuts import assign_perm, get_perms, remove_perm

from core.errors import DomainError
from core.models import Membership, Organization, Project, User
from core.roles import ROLE_PERMISSIONS, Role, permissions_for_roles


# What other apps must do when a person's last active role on a project ends (tasks releases their
# open reads and adjudications). core may not import tasks, so tasks registers here at start-up
# (TasksConfig.ready); each hook runs inside the membership change's transaction, so the revocation
# and the release commit or fail together.
_membership_ended_hooks: list[Callable[..., None]] = []


def on_membership_ended(hook: Callable[..., None]) -> Callable[..., None]:
    """Register ``hook(user=, project=, roles=, by=)``, called when roles end on a project."""
    if hook not in _membership_ended_hooks:
        _membership_ended_hooks.append(hook)
    return hook


def _run_membership_ended(user: User, project: Project, roles: list[str], by: User | None) -> None:
    for hook in _membership_ended_hooks:
        hook(user=user, project=project, roles=roles, by=by)


def _check_organisation(user: User, project: Project, role: str) -> None:
    org = user.organization
    if role == Role.CLIENT:
        if org is None or org.pk != project.client_id:
            raise DomainError(
                "The client role is only for people of the project's client organisation.",
                code="wrong_organization", errors={"role": ["Client users must belong to the project's client."]},
            )
    elif role not in (Role.AUDITOR, Role.PRIVACY_OFFICER) and org is not None and org.kind == Organization.Kind.CLIENT:
        raise DomainError(
            "People of a client organisation can only hold the client, auditor or privacy officer role.",
            code="wrong_organization", errors={"role": [f"{role} is a vendor role."]},
        )


def _sync_permissions(user: User, project: Project) -> tuple[set[str], set[str]]:
    """Make the user's object permissions on the project match their active roles."""
    roles = Membership.objects.filter(user=user, project=project, is_active=True).values_list("role", flat=True)
    wanted = set(permissions_for_roles(roles))
    managed = set().union(*ROLE_PERMISSIONS.values())
    held = set(get_perms(user, project)) & managed
    for perm in wanted - held:
        assign_perm(f"core.{perm}", user, project)
    for perm in held - wanted:
        remove_perm(f"core.{perm}", user, project)
    # Django caches object permissions per user instance; drop it so the caller sees the change.
    for attr in ("_perm_cache", "_user_perm_cache", "_group_perm_cache"):
        user.__dict__.pop(attr, None)
    return wanted - held, held - wanted


@transaction.atomic
def grant_membership(*, project: Project, user: User, role: str, subspecialties=(), by: User | None = None
                     ) -> Membership:
    """Give ``user`` ``role`` on ``project`` (reactivating a past one) and the permissions it carries."""
    if role not in Role.values:
        raise DomainError(f"Unknown role {role!r}.", errors={"role": [f"Choose one of {', '.join(Role.values)}."]})
    _check_organisation(user, project, role)
    membership, _ = Membership.objects.select_for_update().get_or_create(
        user=user, project=project, role=role, defaults={"subspecialties": list(subspecialties)}
    )
    membership.subspecialties = sorted(set(subspecialties))
    membership.is_active = True
    membership.full_clean()
    membership.save()
    granted, revoked = _sync_permissions(user, project)
    _record_change(membership, by, granted, revoked)
    return membership


@transaction.atomic
def change_membership(membership: Membership, *, subspecialties=None, is_active: bool | None = None,
                      is_suspended: bool | None = None, by: User | None = None) -> Membership:
    """Change sub-specialties, (de)activate, suspend or reinstate a membership, keeping permissions in step."""
    membership = Membership.objects.select_for_update().get(pk=membership.pk)
    was_active = membership.is_active
    if is_suspended is not None and is_suspended != membership.is_suspended:
        from audit.trail import record_event

        membership.is_suspended = is_suspended
        membership.suspension_reason = "suspended by a manager" if is_suspended else ""
        record_event("suspend" if is_suspended else "reinstate", actor=by, project=membership.project, obj=membership,
                     extra={"reader": membership.user.pseudonym})
    if subspecialties is not None:
        membership.subspecialties = sorted(set(subspecialties))
    if is_active is not None:
        membership.is_active = is_active
    membership.full_clean()
    membership.save()
    granted, revoked = _sync_permissions(membership.user, membership.project)
    _record_change(membership, by, granted, revoked)
    if was_active and not membership.is_active:
        _run_membership_ended(membership.user, membership.project, [membership.role], by)
    return membership


def revoke_membership(membership: Membership, *, by: User | None = None) -> Membership:
    """Deactivate a membership (kept for the record) and withdraw what it granted."""
    return change_membership(membership, is_active=False, by=by)


def _record_change(membership: Membership, by, granted: set[str], revoked: set[str]) -> None:
    from audit.trail import record_event

    for action, perms in (("permission_granted", granted), ("permission_revoked", revoked)):
        if perms:
            record_event(
                action, actor=by, project=membership.project, obj=membership,
                extra={"user": membership.user.pseudonym, "role": membership.role, "permissions": sorted(perms)},
            )
