"""Memberships: the one way to give or take a role on a project.

A membership change and the object permissions it implies change in one transaction: the
permissions a user holds on a project are always exactly the union of their active roles'.
"""

from collections.abc import Callable

from django.db import transaction
from django.db.models import QuerySet
from guardian.shortcuts import assign_perm, get_perms, remove_perm

from core.errors import Conflict, DomainError, Forbidden
from core.models import Membership, Organization, Project, User
from core.roles import (
    OVERSIGHT_ROLES,
    READER_ROLES,
    ROLE_PERMISSIONS,
    Perm,
    Role,
    permissions_for_roles,
    roles_excluded_by,
)
from core.selectors import is_vendor_admin, user_has_perm

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


def grant_refusal(by: User | None, role: str, grantee: User, project: Project) -> str | None:
    """Why ``by`` may not give ``grantee`` ``role`` on ``project`` (None: they may): who grants what.

    - auditor and privacy officer: a superuser, or an administrator of the project's vendor
      organisation who does not manage the project; never to oneself, whoever one is;
    - every other role: the project's managers, its vendor's administrators and superusers; nobody
      but a superuser grants themselves a role, except a vendor administrator taking the manager role
      (what opening a project does).
    ``by`` None is code acting for nobody (seeds, fixtures); the API and the admin always name the person.
    """
    if by is None:
        return None
    label = Role(role).label.lower()
    if role in OVERSIGHT_ROLES:
        if grantee.pk == by.pk:
            return f"Nobody grants themselves the {label} role."
        if by.is_superuser:
            return None
        if not is_vendor_admin(by, project):
            return f"Only an administrator of the project's vendor organisation grants the {label} role."
        if _holds(by, project, {Role.MANAGER}):
            return (f"The project's managers do not grant the {label} role: another administrator of the "
                    "organisation does.")
        return None
    if by.is_superuser:
        return None
    if not (is_vendor_admin(by, project) or user_has_perm(by, Perm.MANAGE, project)):
        return "Only the project's managers and its vendor organisation's administrators grant roles."
    if grantee.pk == by.pk and not (role == Role.MANAGER and is_vendor_admin(by, project)):
        return "Nobody grants themselves a role on a project."
    return None


def may_grant(by: User | None, role: str, grantee: User, project: Project) -> bool:
    return grant_refusal(by, role, grantee, project) is None


def grantable_people(project: Project, by: User | None) -> QuerySet[User]:
    """The people ``by`` may name for a role: active people of the project's vendor and client organisations
    (superusers and code acting for nobody: every active person)."""
    people = User.objects.filter(is_active=True)
    if by is None or by.is_superuser:
        return people
    return people.filter(organization_id__in=[project.vendor_id, project.client_id])


def _unknown_person() -> DomainError:
    # One answer for ids that do not exist and people out of reach: a manager learns nothing of either.
    message = "No such person in this project's organisations."
    return DomainError(message, code="unknown_user", errors={"user": [message]})


def find_grantee(project: Project, user_id, *, by: User | None) -> User:
    """The person with ``user_id`` if ``by`` may name them on ``project``; else the unknown-person error."""
    try:
        return grantable_people(project, by).get(pk=user_id)
    except (User.DoesNotExist, ValueError, TypeError):
        raise _unknown_person() from None


def _holds(user: User, project: Project, roles) -> set[str]:
    return set(Membership.objects.filter(user=user, project=project, is_active=True, role__in=roles)
               .values_list("role", flat=True))


def _check_conflicts(user: User, project: Project, role: str) -> None:
    """Reader roles and the roles that see or oversee reads never meet in one person on one project."""
    held = _holds(user, project, roles_excluded_by(role))
    if not held:
        return
    names = ", ".join(sorted(Role(r).label.lower() for r in held))
    if role in READER_ROLES:
        reason = (f"A reader may not also be QA, manager, client, auditor or privacy officer on the same project; "
                  f"this person is {names} here.")
    else:
        reason = (f"This person reads on this project ({names}); a reader may not also be "
                  f"{Role(role).label.lower()} on it.")
    raise DomainError(reason, code="role_conflict", errors={"role": [reason]})


def check_grant(*, project: Project, user: User, role: str, by: User | None) -> None:
    """Every rule a new or reactivated role must meet; raises the DomainError a caller shows."""
    if role not in Role.values:
        raise DomainError(f"Unknown role {role!r}.", errors={"role": [f"Choose one of {', '.join(Role.values)}."]})
    if by is not None and not grantable_people(project, by).filter(pk=user.pk).exists():
        raise _unknown_person()
    reason = grant_refusal(by, role, user, project)
    if reason:
        raise Forbidden(reason, code="grant_not_allowed", errors={"role": [reason]})
    _check_organisation(user, project, role)
    _check_conflicts(user, project, role)


def _lock_person(user_id: int) -> None:
    # One person's role changes queue on their row, so two grants cannot each miss the other's
    # conflicting role. NO KEY: rows that merely reference the person (reads, events) do not wait.
    list(User.objects.select_for_update(no_key=True).filter(pk=user_id).values_list("pk", flat=True))


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
    """Give ``user`` ``role`` on ``project`` (reactivating a past one) and the permissions it carries,
    if ``by`` may (grant_refusal) and no role of the person's there excludes it (roles_excluded_by)."""
    _lock_person(user.pk)
    check_grant(project=project, user=user, role=role, by=by)
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
    """Change sub-specialties, (de)activate, suspend or reinstate a membership, keeping permissions in step;
    (de)activations follow check_change."""
    _lock_person(membership.user_id)  # before the membership: grant_membership's lock order
    membership = Membership.objects.select_for_update().get(pk=membership.pk)
    was_active = membership.is_active
    check_change(membership, is_active=is_active, by=by)
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


def check_change(membership: Membership, *, is_active: bool | None, by: User | None) -> None:
    """The rules a (de)activation must meet: reactivating is granting again (check_grant); whoever may
    not appoint an auditor or privacy officer may not end the role either (one may step down)."""
    if is_active and not membership.is_active:
        check_grant(project=membership.project, user=membership.user, role=membership.role, by=by)
    elif is_active is False and membership.is_active and membership.role in OVERSIGHT_ROLES:
        _check_oversight_revocation(membership, by)
    elif is_active is False and membership.is_active and membership.role == Role.MANAGER:
        _check_not_last_manager(membership, by)


def _check_not_last_manager(membership: Membership, by: User | None) -> None:
    """A project keeps at least one active manager: ending the last one (one's own included) would leave
    nobody to run the queue, its people or its deliveries. A superuser may (retiring a project)."""
    if by is not None and by.is_superuser:
        return
    # Locking every manager row of the project serialises two managers ending each other at once.
    managers = list(Membership.objects.select_for_update().filter(
        project_id=membership.project_id, role=Role.MANAGER, is_active=True,
    ).order_by("pk").values_list("pk", flat=True))
    if managers == [membership.pk]:
        reason = ("This is the project's last active manager: appoint another manager first; a project is "
                  "never left without one.")
        raise Conflict(reason, code="last_manager", errors={"role": [reason]})


def _check_oversight_revocation(membership: Membership, by: User | None) -> None:
    if by is None or by.is_superuser or by.pk == membership.user_id:
        return
    project = membership.project
    if not is_vendor_admin(by, project) or _holds(by, project, {Role.MANAGER}):
        label = Role(membership.role).label.lower()
        reason = (f"Only an administrator of the vendor organisation who does not manage the project ends the "
                  f"{label} role.")
        raise Forbidden(reason, code="grant_not_allowed", errors={"role": [reason]})


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
