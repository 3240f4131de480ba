"""Training on consensus labels and evaluating on the gold set.

Training data: the project's production tasks with a consensus (agreed or adjudicated), and its
gold references too when ``include_gold_in_training`` (then the gold figures are optimistic, and
the version records that it saw them). Evaluation: every gold task with a reference. The new
version is compared with the current one on the same gold set; learning.registry decides.
"""

from django.db.models import Q

from core.errors import DomainError
from learning import job_state, labels, registry
from learning.models import LearningJob
from learning.volumes import volume_of
from tasks.models import Consensus, Task

DEFAULT_SPEC = {"task": "classification", "architecture": "densenet121", "spatial_dims": 3,
                "grid": [32, 32, 32], "modality": "CT", "dropout": 0.2}
MIN_TRAINING_LABELS = 2


def _labelled(project_id: int, label_key: str, kinds: list[str], kind: str, classes: list[str], modality: str):
    consensus = (Consensus.objects.filter(task__project_id=project_id, task__kind__in=kinds)
                 .select_related("task__study", "task__series").order_by("task_id"))
    tasks, volumes, ys = [], [], []
    for c in consensus:
        y = labels.class_index(c.findings, label_key, kind, classes)
        if y is None:
            continue
        try:
            volumes.append(volume_of(c.task, modality))
        except ValueError:
            continue
        tasks.append(c.task_id)
        ys.append(y)
    return tasks, volumes, ys


def train_model(job: LearningJob, predictor) -> None:
    """Train, evaluate on gold, record the version (current only if not worse than the current one)."""
    config = registry.config_for(job.project_id)
    if not config.label_key:
        raise DomainError("Set the label the model learns (label_key) first.", code="no_label")
    any_task = Task.objects.filter(project_id=job.project_id).order_by("-id").first()
    if any_task is None:
        raise DomainError("The project has no tasks.", code="no_tasks")
    kind, classes = labels.classes_for(any_task, config.label_key)
    spec = {**DEFAULT_SPEC, **(config.model_spec or {}), "num_classes": len(classes)}
    modality = spec.get("modality", "")
    train_kinds = [Task.Kind.PRODUCTION] + ([Task.Kind.GOLD] if config.include_gold_in_training else [])
    train_ids, train_volumes, train_ys = _labelled(job.project_id, config.label_key, train_kinds, kind, classes,
                                                   modality)
    gold_ids, gold_volumes, gold_ys = _labelled(job.project_id, config.label_key, [Task.Kind.GOLD], kind, classes,
                                                modality)
    if len(train_ids) < MIN_TRAINING_LABELS:
        raise DomainError(f"Only {len(train_ids)} consensus labels with a readable series; need at least "
                          f"{MIN_TRAINING_LABELS}.", code="too_few_labels")
    if not gold_ids:
        raise DomainError("No gold task with a reference to evaluate on.", code="no_gold")
    job_state.report_progress(job, 0.05, f"training on {len(train_ids)} labels")

    def progress(fraction: float) -> None:
        job_state.report_progress(job, 0.05 + 0.75 * float(fraction), "training")

    weights = predictor.train(spec, train_volumes, train_ys, epochs=config.epochs, seed=job.pk, progress=progress)
    job_state.report_progress(job, 0.85, f"evaluating on {len(gold_ids)} gold tasks")
    metrics = predictor.evaluate(spec, weights, gold_volumes, gold_ys)
    current = registry.current_version(job.project_id)
    current_on_gold = None
    if current is not None:
        current_on_gold = predictor.evaluate(current.input_spec, registry.load_weights(current), gold_volumes,
                                             gold_ys)
    version = registry.record_version(
        job, weights=weights, architecture=spec["architecture"], task_kind=spec["task"],
        label_key=config.label_key, classes=classes, input_spec=spec, trained_on=train_ids, gold_ids=gold_ids,
        gold_metrics=metrics, current_on_gold=current_on_gold)
    job_state.succeed(job, f"model v{version.number} {'promoted' if version.is_current else 'kept back'}: "
                      f"{version.decision_reason}",
                 {"model_version": version.number, "promoted": version.is_current, "reason": version.decision_reason,
                  "trained_on": len(train_ids), "gold": len(gold_ids)})


def consensus_since_last_training(project_id: int) -> int:
    last = (LearningJob.objects.filter(project_id=project_id, kind=LearningJob.Kind.TRAIN)
            .exclude(state=LearningJob.State.FAILED).order_by("-created_at").first())
    qs = Consensus.objects.filter(task__project_id=project_id)
    return qs.filter(Q(created_at__gt=last.created_at)).count() if last else qs.count()
