"""What readers and adjudicators may see of the models (selectors; never when blind-to-model)."""

from learning.models import LearningConfig, Suggestion, TaskScore


def _config(project_id: int) -> LearningConfig | None:
    return LearningConfig.objects.filter(project_id=project_id).first()


def latest_score(task_id: int) -> TaskScore | None:
    """The newest score of a task from a scoring run that completed."""
    return (TaskScore.objects.filter(task_id=task_id, job__state="succeeded").select_related("model_version")
            .order_by("-created_at", "-id").first())


def _model_block(task) -> dict:
    score = latest_score(task.pk)
    suggestion = Suggestion.objects.filter(task_id=task.pk).select_related("model_version").order_by(
        "-created_at", "-id").first()
    version = (suggestion or score).model_version if (suggestion or score) else None
    return {"version": version.number if version else None,
            "uncertainty": score.uncertainty if score else None,
            "probabilities": score.probabilities if score else None,
            "suggestions": suggestion.findings if suggestion else []}


def model_block_for_reader(task) -> dict | None:
    """The claim response's ``model`` block: only when not blind and suggestions are allowed."""
    config = _config(task.project_id)
    if config is None or not config.readers_may_see_model:
        return None
    block = _model_block(task)
    block.pop("probabilities")
    return block


def model_output_for_adjudicator(task) -> dict | None:
    """The adjudication view's model output: only when the project is not blind-to-model."""
    config = _config(task.project_id)
    if config is None or config.is_blind_to_model:
        return None
    return _model_block(task)
