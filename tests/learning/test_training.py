import pytest

from learning import runs
from learning.models import LearningJob, ModelVersion
from learning.registry import current_version, load_weights
from tests.learning.standin import StandInPredictor

pytestmark = pytest.mark.django_db


def _train(project, predictor, accuracy):
    StandInPredictor.accuracies = [accuracy]
    job = runs.start_job(project, LearningJob.Kind.TRAIN, by=None, enqueue=False)
    return runs.run_job(job.pk, predictor)


def test_first_model_trains_on_consensus_evaluates_on_gold_and_becomes_current(learning_project, predictor):
    project = learning_project["project"]
    job = _train(project, predictor, 0.8)
    assert job.state == "succeeded", job.error
    version = current_version(project.pk)
    assert version.number == 1 and version.created_by_job_id == job.pk
    assert sorted(version.trained_on_task_ids) == sorted(t.pk for t in learning_project["labelled"])
    assert version.gold_task_ids == [learning_project["gold"].pk]
    assert version.gold_metrics["accuracy"] == 0.8
    assert version.classes == ["right", "left", "bilateral"]
    assert load_weights(version)  # decrypts from the store


def test_a_worse_model_is_recorded_but_never_replaces_the_better_current_one(learning_project, predictor):
    project = learning_project["project"]
    _train(project, predictor, 0.9)
    # v2 scores 0.6 on gold; the current v1, re-evaluated on the same gold set, scores 0.9.
    StandInPredictor.accuracies = [0.6]
    job = runs.run_job(runs.start_job(project, LearningJob.Kind.TRAIN, by=None, enqueue=False).pk, predictor)
    assert job.state == "succeeded"
    worse = ModelVersion.objects.get(project=project, number=2)
    assert not worse.is_current and not worse.is_promoted
    assert "worse on gold" in worse.decision_reason and "0.6000 < 0.9000" in worse.decision_reason
    assert current_version(project.pk).number == 1
    assert job.result["promoted"] is False

    better = _train(project, predictor, 0.95)
    assert better.result["promoted"] is True
    assert current_version(project.pk).number == 3
    assert ModelVersion.objects.filter(project=project, is_current=True).count() == 1


def test_training_without_gold_fails_with_the_reason(learning_project, predictor):
    project = learning_project["project"]
    learning_project["gold"].consensus.delete()
    job = _train(project, predictor, 0.9)
    assert job.state == "failed" and "gold" in job.error
    assert not ModelVersion.objects.filter(project=project).exists()


def test_retraining_is_queued_after_n_new_consensus_labels(learning_project, django_capture_on_commit_callbacks):
    from learning.models import LearningConfig
    from learning.triggers import on_consensus_stored

    project = learning_project["project"]
    LearningConfig.objects.filter(project=project).update(retrain_after_consensus=4)
    assert on_consensus_stored(project.pk) is None  # 3 labels so far
    LearningConfig.objects.filter(project=project).update(retrain_after_consensus=3)
    StandInPredictor.accuracies = [0.7]
    with django_capture_on_commit_callbacks(execute=True):
        job = on_consensus_stored(project.pk)
    job.refresh_from_db()
    assert job.trigger == "consensus" and job.state == "succeeded", job.error
    assert on_consensus_stored(project.pk) is None  # no new labels since
