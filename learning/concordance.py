"""Model-vs-consensus rows for the concordance report (tasks.reports): the current model's stored
predictions (its latest TaskScore of each task) against the consensus label, per modality."""

from collections import defaultdict

from django.db.models import Max

from learning import labels
from learning.models import ModelVersion, TaskScore


def model_samples(project, consensus) -> tuple[ModelVersion | None, dict]:
    """(current version, {(modality, label): (kind, categories, [(model class, consensus class)])})."""
    version = ModelVersion.objects.filter(project=project, is_current=True).first()
    if version is None:
        return None, {}
    scores = {}
    for score in (TaskScore.objects.filter(model_version=version, job__state="succeeded",
                                           task_id__in=consensus.values("task_id")).order_by("task_id", "created_at")):
        scores[score.task_id] = score.probabilities  # the latest of each task wins
    samples: dict = defaultdict(list)
    kind = "classification" if version.classes != labels.PRESENCE else "presence"
    for item in consensus.filter(task_id__in=list(scores)).select_related("task__study"):
        probabilities = scores[item.task_id]
        if len(probabilities) != len(version.classes):
            continue
        truth = labels.class_index(item.findings, version.label_key,
                                   "classification" if kind == "classification" else "presence", version.classes)
        if truth is None:
            continue
        predicted = max(range(len(probabilities)), key=lambda i: probabilities[i])
        modality = "/".join(item.task.study.modalities) or "?"
        samples[(modality, version.label_key)].append((version.classes[predicted], version.classes[truth],
                                                       list(version.classes)))
    return version, samples


def scores_marker(project) -> int | None:
    """Changes whenever a scoring run of the project stores scores (the report's cache key uses it)."""
    return TaskScore.objects.filter(task__project=project).aggregate(m=Max("id"))["m"]
