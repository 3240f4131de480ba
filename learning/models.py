"""Active learning: per-project settings, the model registry, jobs, and what the models said.

Change them only through learning.registry, learning.jobs_service and learning.scoring: they keep
the registry's one current version per project, the jobs' states and the queue priorities in step,
and record the audit events.
"""

from django.db import models
from django.db.models import Q

from core.models import Project, User
from tasks.models import Task


class LearningConfig(models.Model):
    """How a project uses models. Blind-to-model by default: readers see nothing a model said."""

    project = models.OneToOneField(Project, on_delete=models.CASCADE, related_name="learning_config")
    is_blind_to_model = models.BooleanField(
        default=True, help_text="Readers never see model scores or suggestions (production reads).")
    suggestions_enabled = models.BooleanField(
        default=False, help_text="Offer the current model's pre-annotations to readers (never when blind).")
    include_gold_in_training = models.BooleanField(default=False)
    retrain_after_consensus = models.PositiveIntegerField(
        default=0, help_text="Train again after this many new consensus labels (0 = off).")
    retrain_every_hours = models.PositiveIntegerField(default=0, help_text="Scheduled training (0 = off).")
    label_key = models.CharField(max_length=100, blank=True,
                                 help_text="The protocol label the classifier learns (classification, ordinal "
                                           "or presence of any other kind).")
    model_spec = models.JSONField(default=dict, blank=True, help_text="learning.ml ModelSpec fields.")
    strategy = models.CharField(max_length=20, default="entropy",
                                help_text="Uncertainty strategy: entropy | margin | least_confidence | mc_dropout.")
    priority_weights = models.JSONField(default=dict, blank=True,
                                        help_text="Overrides of learning.priority.DEFAULT_WEIGHTS.")
    epochs = models.PositiveSmallIntegerField(default=5)
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"learning settings of project {self.project_id}"

    @property
    def readers_may_see_model(self) -> bool:
        return not self.is_blind_to_model and self.suggestions_enabled


class LearningJob(models.Model):
    class Kind(models.TextChoices):
        TRAIN = "train", "Train"
        SCORE = "score", "Score the queue"
        PREANNOTATE = "preannotate", "Pre-annotate"

    class State(models.TextChoices):
        QUEUED = "queued", "Queued"
        RUNNING = "running", "Running"
        APPLYING = "applying", "Applying priorities"
        SUCCEEDED = "succeeded", "Succeeded"
        FAILED = "failed", "Failed"

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="learning_jobs")
    kind = models.CharField(max_length=12, choices=Kind.choices)
    state = models.CharField(max_length=10, choices=State.choices, default=State.QUEUED)
    progress = models.FloatField(default=0.0)
    message = models.CharField(max_length=300, blank=True)
    error = models.TextField(blank=True)
    trigger = models.CharField(max_length=20, default="manual", help_text="manual | schedule | consensus | command")
    celery_task_id = models.CharField(max_length=64, blank=True)
    requested_by = models.ForeignKey(User, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    result = models.JSONField(default=dict, blank=True)

    class Meta:
        ordering = ["-id"]
        constraints = [
            models.CheckConstraint(condition=Q(progress__gte=0) & Q(progress__lte=1), name="learningjob_progress_0_1"),
            # One live job of a kind per project: two scoring runs must never interleave their batches.
            models.UniqueConstraint(fields=["project", "kind"], condition=Q(state__in=["queued", "running",
                                                                                      "applying"]),
                                    name="learningjob_one_live_per_kind"),
        ]

    def __str__(self) -> str:
        return f"{self.kind} job {self.pk} ({self.state})"

    @property
    def is_live(self) -> bool:
        return self.state in (self.State.QUEUED, self.State.RUNNING, self.State.APPLYING)


class ModelVersion(models.Model):
    project = models.ForeignKey(Project, on_delete=models.PROTECT, related_name="model_versions")
    number = models.PositiveIntegerField()
    architecture = models.CharField(max_length=50)
    task_kind = models.CharField(max_length=30, default="classification")
    label_key = models.CharField(max_length=100)
    classes = models.JSONField(default=list)
    input_spec = models.JSONField(default=dict)
    weights_object = models.CharField(max_length=300, help_text="Name in the encrypted store.")
    weights_sha256 = models.CharField(max_length=64)
    trained_on_task_ids = models.JSONField(default=list)
    gold_task_ids = models.JSONField(default=list)
    gold_metrics = models.JSONField(default=dict)
    is_current = models.BooleanField(default=False)
    is_promoted = models.BooleanField(default=False)
    decision_reason = models.CharField(max_length=300)
    created_by_job = models.ForeignKey(LearningJob, null=True, blank=True, on_delete=models.SET_NULL,
                                       related_name="model_versions")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-number"]
        constraints = [
            models.UniqueConstraint(fields=["project", "number"], name="modelversion_unique_number"),
            models.UniqueConstraint(fields=["project"], condition=Q(is_current=True),
                                    name="modelversion_one_current_per_project"),
        ]

    def __str__(self) -> str:
        return f"model v{self.number} of project {self.project_id}"


class TaskScore(models.Model):
    """One scoring run's verdict on one task: the model version, the uncertainty, the priority change."""

    task = models.ForeignKey(Task, on_delete=models.CASCADE, related_name="scores")
    model_version = models.ForeignKey(ModelVersion, on_delete=models.PROTECT, related_name="scores")
    job = models.ForeignKey(LearningJob, on_delete=models.CASCADE, related_name="scores")
    uncertainty = models.FloatField()
    strategy = models.CharField(max_length=20)
    probabilities = models.JSONField()
    priority_before = models.FloatField()
    priority_after = models.FloatField()
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        indexes = [models.Index(fields=["task", "-created_at"], name="taskscore_latest"),
                   models.Index(fields=["job", "id"], name="taskscore_job")]

    def __str__(self) -> str:
        return f"score of task {self.task_id} by v{self.model_version_id}"


class Suggestion(models.Model):
    """A model's pre-annotation of a task, offered to readers only where the project allows it."""

    task = models.ForeignKey(Task, on_delete=models.CASCADE, related_name="suggestions")
    model_version = models.ForeignKey(ModelVersion, on_delete=models.PROTECT, related_name="suggestions")
    job = models.ForeignKey(LearningJob, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    findings = models.JSONField()
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        indexes = [models.Index(fields=["task", "-created_at"], name="suggestion_latest")]

    def __str__(self) -> str:
        return f"suggestion for task {self.task_id} by v{self.model_version_id}"
