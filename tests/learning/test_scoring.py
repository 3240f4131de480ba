import sys
from datetime import timedelta

import pytest
from django.utils import timezone

from learning import job_state, runs, scoring
from learning.models import LearningJob, TaskScore
from tasks.models import QueueSlot, Task
from tasks.queue import claim_next_read
from tests.learning.standin import StandInPredictor

pytestmark = pytest.mark.django_db

LOW, HIGH, MID = [0.98, 0.01, 0.01], [0.34, 0.33, 0.33], [0.7, 0.2, 0.1]


def _score(project, predictor, probabilities, **kwargs):
    StandInPredictor.probabilities = [list(p) for p in probabilities]
    job = runs.start_job(project, LearningJob.Kind.SCORE, by=None, enqueue=False)
    LearningJob.objects.filter(pk=job.pk).update(state="running")
    job.refresh_from_db()
    try:
        scoring.score_queue(job, predictor, **kwargs)
    except Exception as exc:
        scoring.revert_job(job)
        job_state.fail(job, str(exc))
    job.refresh_from_db()
    return job


def _priorities(tasks):
    ids = [t.pk for t in tasks]
    return (dict(Task.objects.filter(pk__in=ids).values_list("pk", "priority")),
            sorted(QueueSlot.objects.filter(task_id__in=ids).values_list("task_id", "priority")))


def test_scoring_writes_versioned_priorities_and_claims_follow_them(trained, predictor, cast):
    queued = trained["queued"]  # three tasks in id order: the model is sure, unsure, in between
    job = _score(trained["project"], predictor, [LOW, HIGH, MID])
    assert job.state == "succeeded", job.error
    scores = {s.task_id: s for s in TaskScore.objects.filter(job=job)}
    assert {s.model_version.number for s in scores.values()} == {1}
    assert scores[queued[1].pk].uncertainty > scores[queued[2].pk].uncertainty > scores[queued[0].pk].uncertainty
    for task in Task.objects.filter(pk__in=[t.pk for t in queued]):
        assert task.priority == scores[task.pk].priority_after and scores[task.pk].priority_before == 0.0
        assert set(task.slots.values_list("priority", flat=True)) == {task.priority}
    claimed = [claim_next_read(cast.annotator).task.pk for _ in range(3)]
    assert claimed == [queued[1].pk, queued[2].pk, queued[0].pk]


def test_a_failure_mid_apply_leaves_every_priority_as_it_was(trained, predictor, monkeypatch):
    queued = trained["queued"]
    Task.objects.filter(pk=queued[0].pk).update(priority=5.0)
    QueueSlot.objects.filter(task_id=queued[0].pk).update(priority=5.0)
    before = _priorities(queued)
    calls = []
    real = scoring._apply_batch

    def flaky(batch):
        calls.append(len(batch))
        if len(calls) == 2:
            raise RuntimeError("database went away")
        real(batch)

    monkeypatch.setattr(scoring, "_apply_batch", flaky)
    job = _score(trained["project"], predictor, [LOW, HIGH, MID], batch_rows=1)
    assert len(calls) == 2  # the first batch was applied, then reverted
    assert job.state == "failed" and "database went away" in job.error
    assert _priorities(queued) == before


def test_a_job_whose_worker_died_while_applying_is_reverted_and_failed_by_the_sweep(trained, predictor):
    queued = trained["queued"]
    before = _priorities(queued)
    job = _score(trained["project"], predictor, [LOW, HIGH, MID])
    assert _priorities(queued) != before
    # As if the worker was killed after applying: still "applying", heartbeat long gone.
    LearningJob.objects.filter(pk=job.pk).update(state="applying", heartbeat_at=timezone.now() - timedelta(hours=1))
    assert runs.sweep_stale_jobs() == 1
    job.refresh_from_db()
    # The three queued tasks and the gold check (scored too: learning.scoring.served_tasks).
    assert job.state == "failed" and "no heartbeat" in job.error and "4 task priorities restored" in job.error
    assert _priorities(queued) == before
    assert runs.sweep_stale_jobs() == 0


def test_scoring_without_a_current_model_fails_and_says_why(learning_project, predictor):
    job = runs.run_job(runs.start_job(learning_project["project"], "score", by=None, enqueue=False).pk, predictor)
    assert job.state == "failed" and "no current model" in job.error


def test_the_django_side_scores_the_queue_without_importing_torch(trained, monkeypatch):
    # A None entry makes any import of torch, MONAI or learning.ml raise, even if another test loaded them.
    for name in [n for n in sys.modules if n.split(".")[0] in ("torch", "monai") or n.startswith("learning.ml")]:
        monkeypatch.delitem(sys.modules, name)
    for name in ("torch", "monai", "learning.ml"):
        monkeypatch.setitem(sys.modules, name, None)
    job = runs.start_job(trained["project"], "score", by=None, enqueue=False)
    job = runs.run_job(job.pk)  # with the predictor the setting names
    assert job.state == "succeeded", job.error
    assert TaskScore.objects.filter(job=job).count() == 4  # the three queued tasks and the gold check
    assert sys.modules["torch"] is None


def test_a_job_no_worker_ever_started_is_failed_and_frees_its_kind(learning_project):
    job = runs.start_job(learning_project["project"], "score", by=None, enqueue=False)
    assert runs.sweep_stale_jobs() == 0
    LearningJob.objects.filter(pk=job.pk).update(created_at=timezone.now() - timedelta(days=1))
    assert runs.sweep_stale_jobs() == 1
    job.refresh_from_db()
    assert job.state == "failed" and "no worker started it" in job.error
    runs.start_job(learning_project["project"], "score", by=None, enqueue=False)  # no longer blocked


def test_the_heartbeat_timeout_is_a_setting_the_sweep_honours(trained, predictor, settings):
    job = _score(trained["project"], predictor, [LOW, HIGH, MID])
    LearningJob.objects.filter(pk=job.pk).update(state="applying",
                                                 heartbeat_at=timezone.now() - timedelta(minutes=20))
    settings.LEARNING_JOB_HEARTBEAT_TIMEOUT = 3600  # a slow GPU step: 20 minutes of silence is fine
    assert runs.sweep_stale_jobs() == 0
    settings.LEARNING_JOB_HEARTBEAT_TIMEOUT = 600
    assert runs.sweep_stale_jobs() == 1
    job.refresh_from_db()
    assert job.state == "failed" and "no heartbeat" in job.error


def test_mc_dropout_scoring_orders_the_queue_by_epistemic_uncertainty(trained, predictor, cast):
    from learning.models import LearningConfig

    queued = trained["queued"]
    LearningConfig.objects.filter(project=trained["project"]).update(strategy="mc_dropout")
    # The deterministic probabilities say task 0 is the least sure; dropout sampling says task 2 is.
    StandInPredictor.epistemics, StandInPredictor.passes_asked = [0.1, 0.4, 0.9, 0.5], []  # the gold check last
    job = _score(trained["project"], predictor, [HIGH, MID, LOW])
    assert job.state == "succeeded", job.error
    assert StandInPredictor.passes_asked == [scoring.MC_DROPOUT_PASSES]
    scores = {s.task_id: s for s in TaskScore.objects.filter(job=job)}
    assert [scores[t.pk].uncertainty for t in queued] == [0.1, 0.4, 0.9]
    assert {s.strategy for s in scores.values()} == {"mc_dropout"}
    assert scores[queued[0].pk].probabilities == HIGH  # the stored probabilities are the plain pass's
    claimed = [claim_next_read(cast.annotator).task.pk for _ in range(3)]
    assert claimed == [queued[2].pk, queued[1].pk, queued[0].pk]
