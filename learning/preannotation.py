"""Pre-annotations: the current model's answer for each open task and each gold or calibration
check (learning.scoring.served_tasks), offered to readers as a suggestion where the project allows
it (never when blind-to-model; see learning.exposure)."""

from core.errors import DomainError
from learning import job_state, registry
from learning.models import LearningJob, Suggestion
from learning.scoring import PREDICT_CHUNK, _chunks, served_tasks
from learning.volumes import volume_of


def suggestion_findings(version, proba) -> list[dict]:
    """The most probable class of the version's label, with its probability."""
    best = int(max(range(len(proba)), key=lambda i: proba[i]))
    value = version.classes[best] if best < len(version.classes) else str(best)
    return [{"label": version.label_key, "value": value, "confidence": round(float(proba[best]), 4)}]


def preannotate(job: LearningJob, predictor) -> None:
    version = registry.current_version(job.project_id)
    if version is None:
        raise DomainError("This project has no current model: train one first.", code="no_model")
    weights = registry.load_weights(version)
    tasks = served_tasks(job.project_id)
    created = 0
    for done, chunk in enumerate(_chunks(tasks, PREDICT_CHUNK), start=1):
        readable, volumes = [], []
        for task in chunk:
            try:
                volumes.append(volume_of(task, version.input_spec.get("modality", "")))
                readable.append(task)
            except ValueError:
                continue
        if readable:
            proba = predictor.predict_proba(version.input_spec, weights, volumes)
            Suggestion.objects.bulk_create([Suggestion(task=t, model_version=version, job=job,
                                                       findings=suggestion_findings(version, list(p)))
                                            for t, p in zip(readable, proba, strict=True)])
            created += len(readable)
        job_state.report_progress(job, done * PREDICT_CHUNK / max(len(tasks), 1), f"pre-annotated {created}")
    job_state.succeed(job, f"{created} suggestions from model v{version.number}", {"suggestions": created,
                                                                               "model_version": version.number})
