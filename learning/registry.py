"""The model registry: a project's learning settings, its model versions, and which one is current.

A new version becomes current only when it is not worse on the gold set than the current one
(both measured on today's gold set); either way it is recorded, with the reason. Weights live
encrypted in the object store (core.dicom.storage), never in the database.
"""

import hashlib

from django.db import transaction

from audit.trail import record_event
from core.broadcast import broadcast_on_commit
from core.dicom.storage import get_store
from core.models import Project
from learning.models import LearningConfig, LearningJob, ModelVersion

PRIMARY_METRIC = {"classification": "accuracy", "segmentation": "dice"}


def config_for(project: Project | int) -> LearningConfig:
    project_id = project if isinstance(project, int) else project.pk
    config, _ = LearningConfig.objects.get_or_create(project_id=project_id)
    return config


def current_version(project_id: int) -> ModelVersion | None:
    return ModelVersion.objects.filter(project_id=project_id, is_current=True).first()


def load_weights(version: ModelVersion) -> bytes:
    return get_store().read_bytes(version.weights_object)


def decide(new_metrics: dict, current_metrics: dict | None, metric: str) -> tuple[bool, str]:
    """(promote, reason): promote unless the current version is better on the gold set."""
    new = new_metrics.get(metric)
    if new is None:
        return False, f"no {metric} on the gold set"
    if current_metrics is None:
        return True, f"first model: gold {metric} {new:.4f}"
    old = current_metrics.get(metric)
    if old is not None and new < old:
        return False, f"worse on gold than the current version: {metric} {new:.4f} < {old:.4f}"
    shown = "n/a" if old is None else f"{old:.4f}"
    return True, f"not worse on gold: {metric} {new:.4f} >= {shown}"


def record_version(job: LearningJob, *, weights: bytes, architecture: str, task_kind: str, label_key: str,
                   classes: list[str], input_spec: dict, trained_on: list[int], gold_ids: list[int],
                   gold_metrics: dict, current_on_gold: dict | None) -> ModelVersion:
    """Store the weights and the version; make it current when the gold set says so."""
    metric = PRIMARY_METRIC.get(task_kind, "accuracy")
    promote, reason = decide(gold_metrics, current_on_gold, metric)
    with transaction.atomic():
        # Numbering and the one-current rule are decided under the project's row lock.
        Project.objects.select_for_update().get(pk=job.project_id)
        last = ModelVersion.objects.filter(project_id=job.project_id).order_by("-number").first()
        number = (last.number if last else 0) + 1
        name = f"models/project-{job.project_id}/v{number}-job{job.pk}.weights"
        get_store().put_bytes(name, weights)
        current = current_version(job.project_id)
        if promote and current is not None:
            ModelVersion.objects.filter(pk=current.pk).update(is_current=False)
        version = ModelVersion.objects.create(
            project_id=job.project_id, number=number, architecture=architecture, task_kind=task_kind,
            label_key=label_key, classes=classes, input_spec=input_spec, weights_object=name,
            weights_sha256=hashlib.sha256(weights).hexdigest(), trained_on_task_ids=trained_on, gold_task_ids=gold_ids,
            gold_metrics={**gold_metrics, "current_version_on_gold": current_on_gold}, is_current=promote,
            is_promoted=promote, decision_reason=reason[:300], created_by_job=job)
        record_event("promote" if promote else "create", actor=job.requested_by, project_id=job.project_id,
                     obj=version, extra={"version": number, "promoted": promote, "reason": reason,
                                         "job": job.pk, "replaced": current.number if promote and current else None})
        if promote:
            broadcast_on_commit(job.project_id, "model.promoted",
                                {"version": number, "job": job.pk, "metric": metric,
                                 "value": gold_metrics.get(metric),
                                 "replaced": current.number if current else None})
    return version


def update_config(config: LearningConfig, changes: dict, *, by) -> LearningConfig:
    """Change a project's learning settings (validated by the caller's serializer); audited."""
    with transaction.atomic():
        for name, value in changes.items():
            setattr(config, name, value)
        config.save()
        record_event("update", actor=by, project_id=config.project_id, obj=config,
                     extra={"fields": sorted(changes)})
    return config
