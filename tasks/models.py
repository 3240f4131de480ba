"""Tasks, reads and the compact queue of outstanding read slots.

Change them only through the services in tasks.queue and tasks.creation: they keep the slot
table, the read rows and the task state in step, and record the audit events.
"""

from django.db import models
from django.db.models import Q

from core.dicom.models import Instance, Series, Study
from core.models import Project, ProtocolVersion, User
from core.roles import Tier
from tasks.states import LIVE_READ_STATES, ReadState, TaskState


class TaskQuerySet(models.QuerySet):
    def open(self):
        return self.exclude(state__in=[TaskState.CANCELLED, TaskState.DELIVERED, TaskState.CONSENSUS])


class Batch(models.Model):
    """A delivery batch: consensus tasks grouped to be delivered together with their reports and exports.

    Change it only through tasks.batches (create / add tasks / deliver), which records the audit
    events and broadcasts ``batch.delivered``.
    """

    class State(models.TextChoices):
        OPEN = "open", "Open"
        DELIVERED = "delivered", "Delivered"

    class ExportState(models.TextChoices):
        NONE = "none", "Not built"
        BUILDING = "building", "Building"
        READY = "ready", "Ready"
        FAILED = "failed", "Failed"

    project = models.ForeignKey(Project, on_delete=models.PROTECT, related_name="batches")
    name = models.CharField(max_length=200)
    state = models.CharField(max_length=10, choices=State.choices, default=State.OPEN)
    pricing = models.JSONField(default=dict, blank=True,
                               help_text="Pricing snapshot for the cost report (see tasks.costs).")
    report = models.JSONField(null=True, blank=True, help_text="Stored concordance report (tasks.reports).")
    report_computed_at = models.DateTimeField(null=True, blank=True)
    export_state = models.CharField(
        max_length=10, choices=ExportState.choices, default=ExportState.NONE,
        help_text="The delivery build (report and export files): building until its job records ready or failed; "
                  "a build that does not finish within BATCH_BUILD_TIMEOUT seconds is marked failed. A failed "
                  "build is rebuilt with POST .../exports/.")
    exports = models.JSONField(default=list, blank=True,
                               help_text="The built export files: format, name, object name, size, SHA-256.")
    export_error = models.CharField(max_length=500, blank=True,
                                    help_text="Why the last build failed: a short reason (the server log has the "
                                              "details); empty unless export_state is failed.")
    export_started_at = models.DateTimeField(
        null=True, blank=True,
        help_text="When the current or last build was asked for, or taken by a worker: the timeout counts from it.")
    exports_built_at = models.DateTimeField(null=True, blank=True)
    created_by = models.ForeignKey(User, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)
    delivered_at = models.DateTimeField(null=True, blank=True)
    delivered_by = models.ForeignKey(User, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")

    class Meta:
        ordering = ["-id"]
        verbose_name_plural = "batches"
        constraints = [
            models.UniqueConstraint(fields=["project", "name"], name="batch_unique_name_per_project"),
        ]

    def __str__(self) -> str:
        return f"batch {self.pk} ({self.state})"


class Task(models.Model):
    class Kind(models.TextChoices):
        PRODUCTION = "production", "Production"
        GOLD = "gold", "Gold"
        CALIBRATION = "calibration", "Calibration"

    project = models.ForeignKey(Project, on_delete=models.PROTECT, related_name="tasks")
    protocol_version = models.ForeignKey(ProtocolVersion, on_delete=models.PROTECT, related_name="tasks")
    study = models.ForeignKey(Study, on_delete=models.PROTECT, related_name="tasks")
    series = models.ForeignKey(Series, null=True, blank=True, on_delete=models.PROTECT, related_name="tasks",
                               help_text="Set when the protocol reads per series.")
    kind = models.CharField(max_length=12, choices=Kind.choices, default=Kind.PRODUCTION)
    state = models.CharField(max_length=24, choices=TaskState.choices, default=TaskState.QUEUED)
    flag_reason = models.CharField(max_length=300, blank=True)
    reads_required = models.PositiveSmallIntegerField()
    reads_submitted = models.PositiveSmallIntegerField(default=0)
    first_read_tier = models.PositiveSmallIntegerField(choices=Tier.choices, default=Tier.ANNOTATOR)
    first_read_subspecialty = models.CharField(max_length=20, blank=True)
    adjudication_tier = models.PositiveSmallIntegerField(choices=Tier.choices, default=Tier.RADIOLOGIST)
    adjudication_subspecialty = models.CharField(max_length=20, blank=True)
    priority = models.FloatField(default=0.0, help_text="Higher is served first (tasks.priority).")
    client_priority = models.SmallIntegerField(default=0)
    created_by = models.ForeignKey(User, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    completed_at = models.DateTimeField(null=True, blank=True)
    panel_decision = models.JSONField(
        null=True, blank=True,
        help_text="Set when the protocol's panel policy changed this task's panel (tasks.panels): reason, action, "
                  "uncertainty, threshold, the protocol's own reads and tier; null: the panel is the protocol's.")
    batch = models.ForeignKey(Batch, null=True, blank=True, on_delete=models.PROTECT, related_name="tasks")

    objects = TaskQuerySet.as_manager()

    class Meta:
        ordering = ["id"]
        constraints = [
            models.CheckConstraint(condition=Q(reads_required__gte=1) & Q(reads_required__lte=3),
                                   name="task_reads_required_1_3"),
            models.CheckConstraint(condition=Q(reads_submitted__lte=models.F("reads_required")),
                                   name="task_reads_submitted_le_required"),
            # One production task per study (or series) per protocol version.
            models.UniqueConstraint(fields=["protocol_version", "study", "series", "kind"], name="task_unique_unit",
                                    nulls_distinct=False),
        ]
        indexes = [models.Index(fields=["project", "state"]), models.Index(fields=["project", "kind", "state"])]

    def __str__(self) -> str:
        return f"task {self.pk} ({self.state})"


class ReadQuerySet(models.QuerySet):
    def live(self):
        return self.filter(state__in=LIVE_READ_STATES)

    def open(self):
        return self.filter(state=ReadState.CLAIMED)


class Read(models.Model):
    """One reader's independent work on a task."""

    project = models.ForeignKey(Project, on_delete=models.PROTECT, related_name="+")
    # No single-column indexes on task and reader: the composite indexes below lead with each, and
    # every claim inserts a read, so each spare index is write work on the hottest path.
    task = models.ForeignKey(Task, on_delete=models.PROTECT, related_name="reads", db_index=False)
    reader = models.ForeignKey(User, on_delete=models.PROTECT, related_name="reads", db_index=False)
    state = models.CharField(max_length=12, choices=ReadState.choices, default=ReadState.CLAIMED)
    tier = models.PositiveSmallIntegerField(choices=Tier.choices, help_text="The reader's tier when claiming.")
    claimed_at = models.DateTimeField()
    lease_expires_at = models.DateTimeField()
    last_heartbeat_at = models.DateTimeField(null=True, blank=True)
    active_seconds = models.FloatField(default=0.0, help_text="Time with the read open, from heartbeats.")
    submitted_at = models.DateTimeField(null=True, blank=True)
    ended_at = models.DateTimeField(null=True, blank=True)
    draft = models.JSONField(null=True, blank=True)
    findings = models.JSONField(null=True, blank=True, help_text="Validated, normalised findings.")
    findings_count = models.PositiveIntegerField(default=0)
    slices_touched = models.PositiveIntegerField(default=0)
    idempotency_key = models.CharField(max_length=100, blank=True)
    is_check = models.BooleanField(default=False, help_text="A gold or calibration check, scored against the "
                                                            "reference (never shown to the reader).")
    score = models.FloatField(null=True, blank=True, help_text="Check reads: agreement with the reference, 0-1.")

    objects = ReadQuerySet.as_manager()

    class Meta:
        ordering = ["id"]
        constraints = [
            # No reader reads the same task twice: the database says so, not only Python.
            models.UniqueConstraint(fields=["task", "reader"], condition=Q(state__in=LIVE_READ_STATES),
                                    name="read_one_live_per_reader_per_task"),
        ]
        indexes = [
            models.Index(fields=["reader", "state", "project"]), models.Index(fields=["task", "state"]),
            # The claim's open-read limit counts these under the reader's lock: a tiny index that
            # matches the count exactly, so no planner (stale statistics included) walks all live reads.
            models.Index(fields=["reader", "project"], condition=Q(state="claimed"), name="read_open_per_reader"),
            # Check reads hold no queue slot, so the sweep finds their lapsed leases here; production
            # reads never enter this index (no write on the claim path).
            models.Index(fields=["lease_expires_at"], condition=Q(state="claimed", is_check=True),
                         name="read_check_leased"),
        ]

    def __str__(self) -> str:
        return f"read {self.pk} of task {self.task_id} ({self.state})"

    @property
    def claim_to_submit_seconds(self) -> float | None:
        if self.submitted_at is None:
            return None
        return (self.submitted_at - self.claimed_at).total_seconds()


class ReadObject(models.Model):
    """A DICOM object (SEG or SR) a reader saved into their read through its DICOMweb root
    (tasks.read_objects), and the findings it gave. Saving another of the same kind supersedes it:
    kept, never served again, its findings replaced by the new one's."""

    class Kind(models.TextChoices):
        SEG = "SEG", "segmentation"
        SR = "SR", "structured report"

    read = models.ForeignKey(Read, on_delete=models.PROTECT, related_name="saved_objects")
    instance = models.OneToOneField(Instance, on_delete=models.PROTECT, related_name="+")
    kind = models.CharField(max_length=3, choices=Kind.choices)
    findings = models.JSONField(default=list, help_text="The findings this object gave, as they went into the draft.")
    created_at = models.DateTimeField(auto_now_add=True)
    superseded_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["id"]
        constraints = [
            # One current object per kind and read: the draft's findings from it are the ones replaced.
            models.UniqueConstraint(fields=["read", "kind"], condition=Q(superseded_at__isnull=True),
                                    name="read_object_one_current_per_kind"),
        ]

    def __str__(self) -> str:
        return f"{self.kind} of read {self.read_id}" + (" (superseded)" if self.superseded_at else "")


class QueueSlot(models.Model):
    """One outstanding read of a task: the compact queue claims are taken from.

    A task with k reads starts with k slots; a claim takes a slot (``read`` set, leased); a
    submit deletes it; a release or an expired lease frees it. Only outstanding work lives here,
    so claims never scan the task table.
    """

    # Every claim updates an indexed column of its slot (no HOT update), so each index is written
    # on every claim: project and task are covered by slot_claim_order and slot_task, and nothing
    # looks slots up by reader (users are deactivated, never deleted: reads PROTECT them).
    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="+", db_index=False)
    task = models.ForeignKey(Task, on_delete=models.CASCADE, related_name="slots", db_index=False)
    priority = models.FloatField(default=0.0)
    tier = models.PositiveSmallIntegerField(choices=Tier.choices)
    subspecialty = models.CharField(max_length=20, blank=True)
    read = models.OneToOneField(Read, null=True, blank=True, on_delete=models.SET_NULL, related_name="slot")
    reader = models.ForeignKey(User, null=True, blank=True, on_delete=models.SET_NULL, related_name="+",
                               db_index=False)
    lease_expires_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-priority", "id"]
        indexes = [
            # Claims walk this from the head (tier and sub-specialty are filters on the way).
            models.Index(fields=["project", "-priority", "id"], name="slot_claim_order"),
            models.Index(fields=["lease_expires_at"], condition=Q(reader__isnull=False), name="slot_leased"),
            models.Index(fields=["task"], name="slot_task"),
        ]

    def __str__(self) -> str:
        return f"slot {self.pk} of task {self.task_id}"


class Adjudication(models.Model):
    """A disagreement between a task's reads, for a senior reader to resolve with a rationale."""

    class State(models.TextChoices):
        OPEN = "open", "Open"
        CLAIMED = "claimed", "Claimed"
        RESOLVED = "resolved", "Resolved"
        CANCELLED = "cancelled", "Cancelled"

    project = models.ForeignKey(Project, on_delete=models.PROTECT, related_name="+")
    task = models.OneToOneField(Task, on_delete=models.PROTECT, related_name="adjudication")
    state = models.CharField(max_length=10, choices=State.choices, default=State.OPEN)
    tier = models.PositiveSmallIntegerField(choices=Tier.choices)
    subspecialty = models.CharField(max_length=20, blank=True)
    priority = models.FloatField(default=0.0)
    agreement = models.JSONField(default=dict, help_text="Per-label agreement figures that failed the protocol.")
    adjudicator = models.ForeignKey(User, null=True, blank=True, on_delete=models.PROTECT, related_name="+")
    adjudicator_tier = models.PositiveSmallIntegerField(choices=Tier.choices, null=True, blank=True)
    claimed_at = models.DateTimeField(null=True, blank=True)
    lease_expires_at = models.DateTimeField(null=True, blank=True)
    resolution = models.CharField(max_length=10, blank=True, help_text="read | edit | new")
    chosen_read = models.ForeignKey(Read, null=True, blank=True, on_delete=models.PROTECT, related_name="+")
    rationale = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    resolved_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-priority", "id"]
        indexes = [models.Index(fields=["project", "state", "tier"])]

    def __str__(self) -> str:
        return f"adjudication {self.pk} of task {self.task_id} ({self.state})"


class Consensus(models.Model):
    """The final label of a task: auto-agreed, adjudicated, or a gold reference."""

    class Method(models.TextChoices):
        AGREED = "agreed", "Readers agreed (majority / median / vote)"
        ADJUDICATED = "adjudicated", "Adjudicated"
        GOLD_REFERENCE = "gold_reference", "Imported gold reference"

    task = models.OneToOneField(Task, on_delete=models.PROTECT, related_name="consensus")
    method = models.CharField(max_length=16, choices=Method.choices)
    findings = models.JSONField()
    agreement = models.JSONField(default=dict)
    adjudication = models.OneToOneField(Adjudication, null=True, blank=True, on_delete=models.PROTECT,
                                        related_name="consensus")
    imported_by = models.ForeignKey(User, null=True, blank=True, on_delete=models.PROTECT, related_name="+",
                                    help_text="Who imported a gold reference: never served it as a check.")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        verbose_name_plural = "consensus labels"

    def __str__(self) -> str:
        return f"consensus of task {self.task_id} ({self.method})"


# --- progress tallies (tasks.progress) ------------------------------------------------------------
# Kept by database triggers (migration 0007_progress_tallies), never by Python: every path that
# changes a task or a read, raw SQL claims included, keeps them exact. Writers only append delta
# rows (no row is updated, so concurrent claims never wait on each other here); readers fold the
# deltas into the tallies (tasks.progress.fold_deltas). ``recount_progress`` rebuilds them.

class _TaskCounts(models.Model):
    """The key and counts a task tally row and its delta rows share."""

    project = models.ForeignKey(Project, on_delete=models.DO_NOTHING, db_constraint=False, related_name="+")
    batch_key = models.BigIntegerField(default=0)
    modality = models.CharField(max_length=64, blank=True)
    state = models.CharField(max_length=24)
    tasks = models.BigIntegerField(default=0)
    reads_left = models.BigIntegerField(default=0)

    class Meta:
        abstract = True


class TaskTally(_TaskCounts):
    """Production tasks of a project per batch (0: none), modality and state, and their reads left."""

    class Meta:
        constraints = [models.UniqueConstraint(fields=["project", "batch_key", "modality", "state"],
                                               name="task_tally_key")]

    def __str__(self) -> str:
        return f"{self.tasks} {self.state} tasks of project {self.project_id}"


class TaskTallyDelta(_TaskCounts):
    def __str__(self) -> str:
        return f"{self.tasks:+d} {self.state} tasks of project {self.project_id}"


class _ReadDayCounts(models.Model):
    """The key and counts a read-day tally row and its delta rows share."""

    project = models.ForeignKey(Project, on_delete=models.DO_NOTHING, db_constraint=False, related_name="+")
    day = models.DateField()
    tier = models.PositiveSmallIntegerField(choices=Tier.choices)
    reads = models.BigIntegerField(default=0)
    check_reads = models.BigIntegerField(default=0)
    adjudications = models.BigIntegerField(default=0)
    active_seconds = models.FloatField(default=0.0)

    class Meta:
        abstract = True


class ReadDayTally(_ReadDayCounts):
    """Per project, UTC day and tier: production and check reads submitted, adjudications resolved,
    and the active seconds of those reads (reader hours)."""

    class Meta:
        constraints = [models.UniqueConstraint(fields=["project", "day", "tier"], name="read_day_tally_key")]

    def __str__(self) -> str:
        return f"tally of project {self.project_id} on {self.day}, tier {self.tier}"


class ReadDayDelta(_ReadDayCounts):
    def __str__(self) -> str:
        return f"{self.reads:+d} reads of project {self.project_id} on {self.day}"


class FindingTally(models.Model):
    """Production tasks with a consensus per finding class (label); '' counts those with no finding."""

    project = models.ForeignKey(Project, on_delete=models.DO_NOTHING, db_constraint=False, related_name="+")
    finding_class = models.CharField(max_length=200, blank=True)
    tasks = models.BigIntegerField(default=0)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["project", "finding_class"], name="finding_tally_key")]

    def __str__(self) -> str:
        return f"{self.tasks} tasks with {self.finding_class or 'no finding'} in project {self.project_id}"


class UncountedConsensus(models.Model):
    """A production consensus whose finding classes are not in FindingTally yet (a trigger adds it)."""

    project = models.ForeignKey(Project, on_delete=models.DO_NOTHING, db_constraint=False, related_name="+")
    consensus_id = models.BigIntegerField(unique=True)

    def __str__(self) -> str:
        return f"consensus {self.consensus_id} not counted yet"
