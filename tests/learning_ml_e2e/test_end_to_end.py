"""The real path: learning.ml (torch / MONAI) behind the seam, on synthetic CT from the ingest pipeline."""

import pytest

pytest.importorskip("torch", reason="learning.ml needs torch; the Django side is tested without it")
pytest.importorskip("monai", reason="learning.ml needs MONAI")

from learning import runs  # noqa: E402
from learning.models import LearningConfig, TaskScore  # noqa: E402
from learning.predictors import MonaiPredictor  # noqa: E402
from tasks.models import Task  # noqa: E402

pytestmark = pytest.mark.django_db

TINY = {"architecture": "densenet", "grid": [8, 16, 16], "init_features": 4, "growth_rate": 4,
        "block_config": [1, 1], "dropout": 0.0}


def test_a_real_model_trains_on_consensus_and_reorders_the_queue(learning_project):
    project = learning_project["project"]
    LearningConfig.objects.filter(project=project).update(model_spec=TINY, epochs=1)
    train = runs.run_job(runs.start_job(project, "train", by=None, enqueue=False).pk, MonaiPredictor())
    assert train.state == "succeeded", train.error
    score = runs.run_job(runs.start_job(project, "score", by=None, enqueue=False).pk, MonaiPredictor())
    assert score.state == "succeeded", score.error
    scores = TaskScore.objects.filter(job=score)
    # The queue and the gold check: checks are scored with the queue, so their claim looks the same.
    served = {t.pk for t in learning_project["queued"]} | {learning_project["gold"].pk}
    assert set(scores.values_list("task_id", flat=True)) == served and all(0.0 <= s.uncertainty <= 1.0 for s in scores)
    for s in scores:
        assert Task.objects.get(pk=s.task_id).priority == s.priority_after


def test_a_real_model_scores_the_queue_by_mc_dropout(learning_project):
    project = learning_project["project"]
    LearningConfig.objects.filter(project=project).update(model_spec={**TINY, "dropout": 0.3}, epochs=1,
                                                          strategy="mc_dropout")
    train = runs.run_job(runs.start_job(project, "train", by=None, enqueue=False).pk, MonaiPredictor())
    assert train.state == "succeeded", train.error
    score = runs.run_job(runs.start_job(project, "score", by=None, enqueue=False).pk, MonaiPredictor())
    assert score.state == "succeeded", score.error
    scores = list(TaskScore.objects.filter(job=score))
    served = {t.pk for t in learning_project["queued"]} | {learning_project["gold"].pk}
    assert {s.task_id for s in scores} == served and {s.strategy for s in scores} == {"mc_dropout"}
    assert all(0.0 <= s.uncertainty <= 1.0 for s in scores)
    assert all(abs(sum(s.probabilities) - 1.0) < 1e-3 for s in scores)
