"""The DICOM index: studies, series and instances by their de-identified UIDs.

Nothing here holds PHI: UIDs are the per-project HMAC replacements, the patient is a pseudonym,
and the bytes live encrypted in the object store under ``Instance.storage_name``.
"""

from django.db import models

from core.dicom.sequences import LABELS
from core.models import Project, User

# The sequence types core.dicom.sequences derives (that module has no Django imports).
MR_SEQUENCE_CHOICES = [(value.value, label) for value, label in LABELS.items()]


class Study(models.Model):
    project = models.ForeignKey(Project, on_delete=models.PROTECT, related_name="studies")
    study_uid = models.CharField(max_length=64)
    patient_pseudonym = models.CharField(max_length=64, db_index=True)
    patient_age_years = models.PositiveSmallIntegerField(
        null=True, blank=True, help_text="Derived before de-identification, capped at 90 (Safe Harbor)."
    )
    study_date = models.CharField(max_length=8, blank=True, help_text="As stored after de-identification.")
    description = models.CharField(max_length=200, blank=True)
    modalities = models.JSONField(default=list)
    body_parts = models.JSONField(default=list)
    series_count = models.PositiveIntegerField(default=0)
    instance_count = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["id"]
        verbose_name_plural = "studies"
        constraints = [models.UniqueConstraint(fields=["project", "study_uid"], name="study_unique_uid")]
        indexes = [models.Index(fields=["study_uid"]), models.Index(fields=["project", "study_date"])]

    def __str__(self) -> str:
        return self.study_uid


class Series(models.Model):
    study = models.ForeignKey(Study, on_delete=models.PROTECT, related_name="series")
    series_uid = models.CharField(max_length=64)
    modality = models.CharField(max_length=16)
    body_part = models.CharField(max_length=64, blank=True)
    description = models.CharField(max_length=200, blank=True)
    number = models.IntegerField(null=True, blank=True)
    mr_sequence = models.CharField(max_length=10, choices=MR_SEQUENCE_CHOICES, blank=True)
    frame_of_reference_uid = models.CharField(max_length=64, blank=True)
    instance_count = models.PositiveIntegerField(default=0)
    is_reader_object = models.BooleanField(default=False, help_text=(
        "A series of objects a reader saved under a read (SEG, SR): served only through that read's "
        "DICOMweb root and its adjudication's, never by project-wide DICOMweb."))
    geometry_issues = models.JSONField(default=list, blank=True,
                                       help_text="Volume checks: missing/duplicate slices, spacing, orientation ...")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["id"]
        verbose_name_plural = "series"
        constraints = [models.UniqueConstraint(fields=["study", "series_uid"], name="series_unique_uid")]
        indexes = [models.Index(fields=["series_uid"])]

    def __str__(self) -> str:
        return self.series_uid

    @property
    def is_volume_ok(self) -> bool:
        return not self.geometry_issues


class Instance(models.Model):
    project = models.ForeignKey(Project, on_delete=models.PROTECT, related_name="+")
    series = models.ForeignKey(Series, on_delete=models.PROTECT, related_name="instances")
    sop_instance_uid = models.CharField(max_length=64)
    sop_class_uid = models.CharField(max_length=64)
    instance_number = models.IntegerField(null=True, blank=True)
    transfer_syntax_uid = models.CharField(max_length=64)
    rows = models.PositiveIntegerField(null=True, blank=True)
    columns = models.PositiveIntegerField(null=True, blank=True)
    frames = models.PositiveIntegerField(default=1)
    position = models.JSONField(null=True, blank=True, help_text="ImagePositionPatient (mm).")
    orientation = models.JSONField(null=True, blank=True, help_text="ImageOrientationPatient.")
    pixel_spacing = models.JSONField(null=True, blank=True)
    slice_thickness = models.FloatField(null=True, blank=True)
    image_type = models.JSONField(default=list, blank=True)
    size_bytes = models.PositiveBigIntegerField()
    sha256 = models.CharField(max_length=64, help_text="Of the stored (de-identified) DICOM bytes.")
    storage_name = models.CharField(max_length=300)
    is_reader_object = models.BooleanField(default=False, help_text=(
        "Saved by a reader under a read (tasks.read_objects links it): served only through that "
        "read's root and its adjudication's."))
    is_quarantined = models.BooleanField(default=False)
    quarantine_reason = models.CharField(max_length=200, blank=True)
    quarantine_cleared_by = models.ForeignKey(User, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    quarantine_cleared_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["id"]
        constraints = [models.UniqueConstraint(fields=["project", "sop_instance_uid"], name="instance_unique_uid")]
        indexes = [models.Index(fields=["sop_instance_uid"]), models.Index(fields=["project", "is_quarantined"])]

    def __str__(self) -> str:
        return self.sop_instance_uid


class DeidRecord(models.Model):
    """How one instance was de-identified: profile version, options and counts of each action."""

    instance = models.OneToOneField(Instance, on_delete=models.PROTECT, related_name="deid_record")
    profile_version = models.CharField(max_length=100)
    options = models.JSONField(default=dict)
    actions = models.JSONField(default=dict)
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"de-identification of {self.instance_id}"


class PseudonymMapEntry(models.Model):
    """Pseudonym -> original identifier, kept only when the project opts in; the original is encrypted."""

    class Kind(models.TextChoices):
        PATIENT = "patient"
        STUDY = "study"
        SERIES = "series"
        INSTANCE = "instance"

    project = models.ForeignKey(Project, on_delete=models.PROTECT, related_name="+")
    kind = models.CharField(max_length=10, choices=Kind.choices)
    pseudonym = models.CharField(max_length=64)
    original_encrypted = models.BinaryField()
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["project", "kind", "pseudonym"], name="pseudonym_unique")]

    def __str__(self) -> str:
        return f"{self.kind} {self.pseudonym}"


class IngestBatch(models.Model):
    """One call of the ingest service (an upload, a STOW-RS request, a folder, a PACS import)."""

    class Source(models.TextChoices):
        UPLOAD = "upload"
        STOW = "stow"
        FOLDER = "folder"
        DICOMWEB = "dicomweb"
        DEMO = "demo"

    project = models.ForeignKey(Project, on_delete=models.PROTECT, related_name="ingest_batches")
    source = models.CharField(max_length=10, choices=Source.choices)
    created_by = models.ForeignKey(User, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    accepted = models.PositiveIntegerField(default=0)
    duplicate = models.PositiveIntegerField(default=0)
    rejected = models.PositiveIntegerField(default=0)
    quarantined = models.PositiveIntegerField(default=0)
    bytes_in = models.PositiveBigIntegerField(default=0)
    started_at = models.DateTimeField(auto_now_add=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-id"]

    def __str__(self) -> str:
        return f"ingest {self.pk} ({self.source})"


class InstanceMetadata(models.Model):
    """What WADO-RS serves of an instance without opening its object (core.dicom.metadata): its DICOM
    JSON, encrypted like the object, and where its frames lie in the object."""

    instance = models.OneToOneField(Instance, on_delete=models.CASCADE, primary_key=True,
                                    related_name="served_metadata")
    json_encrypted = models.BinaryField(help_text=(
        "RQE1 (core.dicom.crypto) of the DICOM JSON with marks for the instance's URL, bound to its object name."))
    frame_layout = models.JSONField(null=True, blank=True, help_text=(
        "Byte positions of each frame in the stored object ({native: [start, size, count]} or "
        "{fragments: [[[position, length], ...], ...]}); null: frames are parsed per request."))
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"metadata of {self.instance_id}"
