"""Organisations, people, projects, memberships and the versioned label schema (the protocol)."""

import secrets

from django.contrib.auth.models import AbstractUser
from django.core.exceptions import ValidationError
from django.db import models
from django.db.models import Q

from core.roles import ALL_PERMS, READER_ROLE_TIERS, ROLES_WITH_SUBSPECIALTIES, Role, Subspecialty


class Organization(models.Model):
    class Kind(models.TextChoices):
        VENDOR = "vendor", "Annotation vendor"
        CLIENT = "client", "Client"

    name = models.CharField(max_length=200, unique=True)
    kind = models.CharField(max_length=10, choices=Kind.choices)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


def _new_pseudonym() -> str:
    return "R-" + secrets.token_hex(4).upper()


class User(AbstractUser):
    """A person. ``pseudonym`` is what clients and exports see instead of the name."""

    organization = models.ForeignKey(
        Organization, null=True, blank=True, on_delete=models.PROTECT, related_name="users"
    )
    is_org_admin = models.BooleanField(
        default=False, help_text="May create projects for (vendor) or view all projects of the organisation."
    )
    pseudonym = models.CharField(max_length=20, unique=True, default=_new_pseudonym, editable=False)

    class Meta:
        ordering = ["username"]


class Project(models.Model):
    """One client contract, owned by the client organisation and run by the vendor."""

    name = models.CharField(max_length=200)
    client = models.ForeignKey(Organization, on_delete=models.PROTECT, related_name="client_projects")
    vendor = models.ForeignKey(Organization, on_delete=models.PROTECT, related_name="vendor_projects")
    description = models.TextField(blank=True)
    modalities = models.JSONField(default=list, help_text="DICOM modality codes, e.g. ['CT', 'MR'].")
    reads_per_task = models.PositiveSmallIntegerField(default=2)
    is_active = models.BooleanField(default=True)
    # De-identification (PS3.15 Annex E options; core.dicom.deid). The secret keys the UID and
    # pseudonym HMACs and the per-patient date offsets; it is stored encrypted with the storage key.
    deid_secret_encrypted = models.BinaryField(editable=False, null=True)
    deid_retain_modified_dates = models.BooleanField(default=False)
    deid_retain_patient_characteristics = models.BooleanField(default=False)
    deid_clean_descriptors = models.BooleanField(default=False)
    deid_retain_device_identity = models.BooleanField(default=False)
    deid_private_creator_allowlist = models.JSONField(default=list, blank=True)
    keep_pseudonym_map = models.BooleanField(
        default=False, help_text="Keep an encrypted pseudonym -> original map, readable by privacy officers only."
    )
    # The reading queue (tasks.queue).
    lease_seconds = models.PositiveIntegerField(default=30 * 60,
                                                help_text="How long a claimed read stays with its reader.")
    max_open_reads = models.PositiveSmallIntegerField(default=3, help_text="Open (claimed) reads one reader may hold.")
    higher_tiers_take_lower_work = models.BooleanField(
        default=False, help_text="Let radiologists and sub-specialists claim reads routed to a lower tier."
    )
    requires_calibration = models.BooleanField(default=False, help_text="Readers must pass calibration first.")
    # Gold checks and calibration (tasks.gold).
    gold_rate = models.FloatField(default=0.0, help_text="Share of claims served as hidden gold checks (0-1).")
    gold_threshold = models.FloatField(default=0.8, help_text="Rolling gold score below which a reader is suspended.")
    gold_window = models.PositiveSmallIntegerField(default=10, help_text="Gold checks in the rolling score.")
    calibration_threshold = models.FloatField(default=0.8, help_text="Mean score a reader needs on calibration.")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["id"]
        permissions = ALL_PERMS
        constraints = [
            models.CheckConstraint(
                condition=Q(reads_per_task__gte=1) & Q(reads_per_task__lte=3), name="project_reads_per_task_1_3"
            ),
            models.CheckConstraint(condition=Q(gold_rate__gte=0) & Q(gold_rate__lte=1), name="project_gold_rate_0_1"),
            models.UniqueConstraint(fields=["client", "name"], name="project_unique_name_per_client"),
        ]

    def __str__(self) -> str:
        return self.name

    def current_protocol_version(self) -> "ProtocolVersion | None":
        return self.protocol_versions.order_by("-number").first()


class Membership(models.Model):
    """A person's role on a project. Change it only through core.memberships."""

    user = models.ForeignKey(User, on_delete=models.CASCADE, related_name="memberships")
    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="memberships")
    role = models.CharField(max_length=20, choices=Role.choices)
    subspecialties = models.JSONField(default=list, blank=True)
    is_active = models.BooleanField(default=True)
    is_suspended = models.BooleanField(default=False, help_text="Suspended readers get no new claims.")
    suspension_reason = models.CharField(max_length=300, blank=True)
    calibrated_at = models.DateTimeField(null=True, blank=True, help_text="When the reader passed calibration.")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["id"]
        constraints = [
            models.UniqueConstraint(fields=["user", "project", "role"], name="membership_unique_role"),
        ]
        indexes = [models.Index(fields=["project", "role", "is_active"])]

    def __str__(self) -> str:
        return f"{self.user} as {self.role} on {self.project}"

    @property
    def tier(self):
        return READER_ROLE_TIERS.get(self.role)

    def clean(self) -> None:
        allowed = set(Subspecialty.values)
        unknown = [s for s in self.subspecialties if s not in allowed]
        if unknown:
            raise ValidationError({"subspecialties": f"Unknown sub-specialties: {', '.join(unknown)}."})
        if self.subspecialties and self.role not in ROLES_WITH_SUBSPECIALTIES:
            raise ValidationError({"subspecialties": "Only radiologists and sub-specialists have sub-specialties."})
        if self.role == Role.SUBSPECIALIST and not self.subspecialties:
            raise ValidationError({"subspecialties": "A sub-specialist needs at least one sub-specialty."})


class ProtocolVersion(models.Model):
    """One version of a project's label schema and reading protocol; immutable once used."""

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="protocol_versions")
    number = models.PositiveIntegerField()
    name = models.CharField(max_length=200)
    notes = models.TextField(blank=True)
    rules = models.JSONField(default=dict, blank=True, help_text="Protocol rules (routing, agreement, ...).")
    created_by = models.ForeignKey(User, null=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)
    used_at = models.DateTimeField(null=True, blank=True, help_text="Set when a task first used it.")

    class Meta:
        ordering = ["project", "number"]
        constraints = [models.UniqueConstraint(fields=["project", "number"], name="protocol_version_unique")]

    def __str__(self) -> str:
        return f"{self.project} v{self.number}"

    @property
    def is_locked(self) -> bool:
        return self.used_at is not None


class LabelEntry(models.Model):
    class Kind(models.TextChoices):
        CLASSIFICATION = "classification", "Classification"
        ORDINAL = "ordinal", "Ordinal grade"
        BBOX = "bbox", "Bounding box"
        POLYGON = "polygon", "Polygon"
        MASK = "mask", "Mask"
        LANDMARK = "landmark", "Landmark"
        MEASUREMENT = "measurement", "Measurement"

    class CodingScheme(models.TextChoices):
        RADLEX = "RADLEX", "RadLex"
        SNOMED = "SCT", "SNOMED CT"
        ICD10 = "I10", "ICD-10"
        DCM = "DCM", "DICOM"
        LOINC = "LN", "LOINC"

    version = models.ForeignKey(ProtocolVersion, on_delete=models.CASCADE, related_name="entries")
    key = models.SlugField(max_length=64)
    display_name = models.CharField(max_length=200)
    kind = models.CharField(max_length=20, choices=Kind.choices)
    categories = models.JSONField(
        default=list, blank=True, help_text="Ordered categories for classification and ordinal grades."
    )
    unit = models.CharField(max_length=20, blank=True, help_text="UCUM unit for measurements (mm, mm2, ml, [hnsf'U]).")
    coding_scheme = models.CharField(max_length=10, choices=CodingScheme.choices)
    code_value = models.CharField(max_length=64)
    code_meaning = models.CharField(max_length=200)
    position = models.PositiveIntegerField(default=0)

    class Meta:
        ordering = ["version", "position", "id"]
        constraints = [models.UniqueConstraint(fields=["version", "key"], name="label_entry_unique_key")]

    def __str__(self) -> str:
        return f"{self.key} ({self.kind})"


# Guardian's direct-foreign-key permission tables: one indexed join instead of generic lookups.
from guardian.models import GroupObjectPermissionBase, UserObjectPermissionBase  # noqa: E402


class ProjectUserObjectPermission(UserObjectPermissionBase):
    content_object = models.ForeignKey(Project, on_delete=models.CASCADE)


class ProjectGroupObjectPermission(GroupObjectPermissionBase):
    content_object = models.ForeignKey(Project, on_delete=models.CASCADE)


from core.dicom.models import (  # noqa: E402,F401  (the DICOM index belongs to this app)
    DeidRecord,
    IngestBatch,
    Instance,
    PseudonymMapEntry,
    Series,
    Study,
)
