import pytest

from learning import runs
from learning.models import LearningConfig, LearningJob
from tasks.models import Adjudication, Task
from tests.learning.standin import StandInPredictor

pytestmark = pytest.mark.django_db


@pytest.fixture
def scored(learning_project, predictor):
    project = learning_project["project"]
    StandInPredictor.accuracies = [0.9]
    runs.run_job(runs.start_job(project, "train", by=None, enqueue=False).pk, predictor)
    StandInPredictor.probabilities = [[0.98, 0.01, 0.01], [0.34, 0.33, 0.33], [0.7, 0.2, 0.1]]
    assert runs.run_job(runs.start_job(project, "score", by=None, enqueue=False).pk, predictor).state == "succeeded"
    StandInPredictor.probabilities = [[0.1, 0.8, 0.1]] * 3
    assert runs.run_job(runs.start_job(project, "preannotate", by=None, enqueue=False).pk,
                        predictor).state == "succeeded"
    return learning_project


def _claim(api, user):
    response = api(user).post("/api/queue/next/", {}, format="json")
    assert response.status_code == 200
    return response.json()


def test_blind_projects_show_readers_neither_scores_nor_suggestions(scored, api, cast):
    assert LearningConfig.objects.get(project=scored["project"]).is_blind_to_model  # the default
    LearningConfig.objects.filter(project=scored["project"]).update(suggestions_enabled=True)
    claim = _claim(api, cast.annotator)
    assert "model" not in claim and "uncertainty" not in str(claim) and "priority" not in claim
    read = api(cast.annotator).get(f"/api/reads/{claim['read']}/").json()
    assert "model" not in read and "uncertainty" not in str(read)


def test_unblinded_projects_with_suggestions_show_readers_the_model_block(scored, api, cast):
    LearningConfig.objects.filter(project=scored["project"]).update(is_blind_to_model=False, suggestions_enabled=True)
    claim = _claim(api, cast.annotator)
    assert claim["task"] == scored["queued"][1].pk  # the most uncertain first
    assert claim["model"]["version"] == 1
    assert claim["model"]["uncertainty"] == pytest.approx(1.0, abs=1e-3)
    assert claim["model"]["suggestions"] == [{"label": "finding_laterality", "value": "left", "confidence": 0.8}]
    LearningConfig.objects.filter(project=scored["project"]).update(suggestions_enabled=False)
    assert "model" not in _claim(api, cast.annotator)


def test_adjudicators_see_the_model_output_only_when_not_blind(scored, api, cast):
    task = scored["queued"][0]
    Task.objects.filter(pk=task.pk).update(state="awaiting_adjudication")
    Adjudication.objects.create(project=task.project, task=task, tier=2)
    held = api(cast.radiologist).post("/api/adjudications/next/").json()
    assert held["model_output"] is None
    LearningConfig.objects.filter(project=task.project).update(is_blind_to_model=False)
    shown = api(cast.radiologist).get(f"/api/adjudications/{held['id']}/").json()["model_output"]
    assert shown["version"] == 1 and len(shown["probabilities"]) == 3 and shown["suggestions"]


def test_managers_change_settings_and_bad_values_are_refused_whole(learning_project, api, cast):
    url = f"/api/projects/{learning_project['project'].pk}/learning/"
    ok = api(cast.manager).patch(url, {"is_blind_to_model": False, "retrain_after_consensus": 50}, format="json")
    assert ok.status_code == 200 and ok.json()["retrain_after_consensus"] == 50
    bad = api(cast.manager).patch(url, {"suggestions_enabled": True, "label_key": "no_such_label",
                                        "priority_weights": {"age": 0.1}}, format="json")
    assert bad.status_code == 400
    assert set(bad.json()["errors"]) >= {"label_key", "priority_weights"}
    assert LearningConfig.objects.get(project=learning_project["project"]).suggestions_enabled is False


def test_mc_dropout_is_a_strategy_only_for_a_model_with_dropout(learning_project, api, cast):
    url = f"/api/projects/{learning_project['project'].pk}/learning/"
    no_dropout = api(cast.manager).patch(url, {"strategy": "mc_dropout", "model_spec": {"dropout": 0.0}},
                                         format="json")
    assert no_dropout.status_code == 400 and "dropout" in str(no_dropout.json()["errors"]["strategy"])
    unknown = api(cast.manager).patch(url, {"strategy": "vibes"}, format="json")
    assert unknown.status_code == 400 and "mc_dropout" in str(unknown.json()["errors"]["strategy"])
    ok = api(cast.manager).patch(url, {"strategy": "mc_dropout"}, format="json")  # the default spec: dropout 0.2
    assert ok.status_code == 200 and ok.json()["strategy"] == "mc_dropout"
    # With mc_dropout in force, a spec without dropout is refused too.
    assert api(cast.manager).patch(url, {"model_spec": {"dropout": 0}}, format="json").status_code == 400
    assert LearningConfig.objects.get(project=learning_project["project"]).strategy == "mc_dropout"


def test_a_manager_starts_a_job_and_follows_its_state(learning_project, api, cast, django_capture_on_commit_callbacks):
    base = f"/api/projects/{learning_project['project'].pk}/learning/jobs/"
    StandInPredictor.accuracies = [0.75]
    with django_capture_on_commit_callbacks(execute=True):
        started = api(cast.manager).post(base, {"kind": "train"}, format="json")
    assert started.status_code == 202 and started.json()["state"] == "queued"
    job = api(cast.qa).get(f"{base}{started.json()['id']}/").json()
    assert job["state"] == "succeeded" and job["progress"] == 1.0 and job["result"]["promoted"] is True
    models = api(cast.client_viewer).get(f"/api/projects/{learning_project['project'].pk}/models/").json()
    assert models["results"][0]["gold_metrics"]["accuracy"] == 0.75
    assert api(cast.manager).post(base, {"kind": "dance"}, format="json").status_code == 400


def test_a_second_live_job_of_the_same_kind_is_refused(learning_project, api, cast):
    base = f"/api/projects/{learning_project['project'].pk}/learning/jobs/"
    runs.start_job(learning_project["project"], "score", by=None, enqueue=False)
    response = api(cast.manager).post(base, {"kind": "score"}, format="json")
    assert response.status_code == 409 and response.json()["code"] == "job_running"
    assert LearningJob.objects.filter(kind="score").count() == 1


def test_job_progress_goes_to_the_live_feed_without_phi(learning_project, predictor, monkeypatch,
                                                        django_capture_on_commit_callbacks):
    sent = []
    monkeypatch.setattr("core.broadcast._send", lambda group, message: sent.append((group, message)))
    StandInPredictor.accuracies = [0.8]
    with django_capture_on_commit_callbacks(execute=True):
        runs.run_job(runs.start_job(learning_project["project"], "train", by=None, enqueue=False).pk, predictor)
    events = [m["event"] for _, m in sent]
    assert "job.progress" in events and "model.promoted" in events
    assert all(g == f"project.{learning_project['project'].pk}" for g, _ in sent)
    assert "PAT^" not in str(sent)
    progress = [m["data"]["progress"] for _, m in sent if m["event"] == "job.progress"]
    assert progress == sorted(progress) and progress[-1] == 1.0
