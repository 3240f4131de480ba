"""Roles, reader tiers and sub-specialties, and the one map from a role to its object permissions.

Every project permission radqueue checks is a guardian object permission on ``Project`` named
here; ``grant_membership`` / ``revoke_membership`` (core.memberships) are the only code that
assigns or removes them.
"""

from django.db import models


class Role(models.TextChoices):
    MANAGER = "manager", "Manager"
    ANNOTATOR = "annotator", "Annotator"
    RADIOLOGIST = "radiologist", "Radiologist"
    SUBSPECIALIST = "subspecialist", "Sub-specialist"
    QA = "qa", "Quality assurance"
    CLIENT = "client", "Client"
    AUDITOR = "auditor", "Auditor"
    PRIVACY_OFFICER = "privacy_officer", "Privacy officer"


class Subspecialty(models.TextChoices):
    NEURO = "neuro", "Neuroradiology"
    BREAST = "breast", "Breast imaging"
    MSK = "msk", "Musculoskeletal"
    PAEDIATRIC = "paediatric", "Paediatric"
    CHEST = "chest", "Chest"
    ABDOMINAL = "abdominal", "Abdominal"
    CARDIAC = "cardiac", "Cardiac"
    NUCLEAR = "nuclear", "Nuclear medicine"


class Tier(models.IntegerChoices):
    """Reader tiers rank annotator < radiologist < sub-specialist."""

    ANNOTATOR = 1, "Annotator"
    RADIOLOGIST = 2, "Radiologist"
    SUBSPECIALIST = 3, "Sub-specialist"


READER_ROLE_TIERS = {
    Role.ANNOTATOR: Tier.ANNOTATOR,
    Role.RADIOLOGIST: Tier.RADIOLOGIST,
    Role.SUBSPECIALIST: Tier.SUBSPECIALIST,
}
ROLES_WITH_SUBSPECIALTIES = {Role.RADIOLOGIST, Role.SUBSPECIALIST}

# Separation of duties on one project (core.memberships enforces both).
# A reader may hold no role that sees other readers' open work (QA, managers), judges the project from
# outside (the client) or oversees it (auditor, privacy officer): reads must stay independent.
READER_ROLES = frozenset(READER_ROLE_TIERS)
EXCLUDED_FROM_READERS = frozenset({Role.QA, Role.MANAGER, Role.CLIENT, Role.AUDITOR, Role.PRIVACY_OFFICER})
# The oversight roles check the people who run the project (the audit trail) or can re-identify its
# patients (the pseudonym map): an organisation administrator appoints them, never its manager.
OVERSIGHT_ROLES = frozenset({Role.AUDITOR, Role.PRIVACY_OFFICER})


def roles_excluded_by(role: str) -> frozenset[str]:
    """The roles a person holding ``role`` may not also hold on the same project."""
    if role in READER_ROLES:
        return EXCLUDED_FROM_READERS
    if role in EXCLUDED_FROM_READERS:
        return READER_ROLES
    return frozenset()


class Perm:
    """Object permissions on a Project (codenames declared in Project.Meta.permissions)."""

    VIEW = "view_project"  # see the project itself: name, modalities, protocol
    MANAGE = "manage_project"  # edit the project, its protocol and its memberships
    VIEW_MEMBERS = "view_members"  # list memberships with identities
    READ = "read_studies"  # claim and submit reads (subject to routing)
    ADJUDICATE = "adjudicate"  # resolve disagreements
    VIEW_PROGRESS = "view_progress"  # aggregate progress and quality
    VIEW_READS = "view_reads"  # see submitted reads of others (QA, managers)
    INGEST = "ingest_studies"  # upload studies
    VIEW_AUDIT = "view_audit"  # query the audit trail
    VIEW_PHI_MAP = "view_phi_mapping"  # read the encrypted pseudonym -> original map


# view_project is Django's built-in permission; the rest are declared on Project.Meta.
ALL_PERMS = [
    (Perm.MANAGE, "Can administer the project"),
    (Perm.VIEW_MEMBERS, "Can see the project's members"),
    (Perm.READ, "Can read studies of the project"),
    (Perm.ADJUDICATE, "Can adjudicate disagreements"),
    (Perm.VIEW_PROGRESS, "Can see progress and quality"),
    (Perm.VIEW_READS, "Can see submitted reads"),
    (Perm.INGEST, "Can ingest studies"),
    (Perm.VIEW_AUDIT, "Can query the audit trail"),
    (Perm.VIEW_PHI_MAP, "Can read the pseudonym mapping"),
]

ROLE_PERMISSIONS: dict[str, frozenset[str]] = {
    Role.MANAGER: frozenset(
        {Perm.VIEW, Perm.MANAGE, Perm.VIEW_MEMBERS, Perm.VIEW_PROGRESS, Perm.VIEW_READS, Perm.INGEST,
         Perm.VIEW_AUDIT}
    ),
    Role.ANNOTATOR: frozenset({Perm.VIEW, Perm.READ}),
    Role.RADIOLOGIST: frozenset({Perm.VIEW, Perm.READ, Perm.ADJUDICATE}),
    Role.SUBSPECIALIST: frozenset({Perm.VIEW, Perm.READ, Perm.ADJUDICATE}),
    Role.QA: frozenset({Perm.VIEW, Perm.VIEW_PROGRESS, Perm.VIEW_READS}),
    Role.CLIENT: frozenset({Perm.VIEW, Perm.VIEW_PROGRESS}),
    Role.AUDITOR: frozenset({Perm.VIEW, Perm.VIEW_AUDIT}),
    Role.PRIVACY_OFFICER: frozenset({Perm.VIEW, Perm.VIEW_PHI_MAP}),
}


def permissions_for_roles(roles) -> frozenset[str]:
    """The union of object permissions the given roles carry."""
    perms: set[str] = set()
    for role in roles:
        perms |= ROLE_PERMISSIONS[role]
    return frozenset(perms)
