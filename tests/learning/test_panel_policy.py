"""The protocol's panel policy (tasks.panels): after a scoring job, uncertain queued tasks get one more
read or radiologist first readers; confident, claimed, gold and calibration tasks keep their panel."""

import pytest

from audit.models import AuditEvent
from core.roles import Tier
from learning import runs, scoring
from learning.models import LearningJob
from tasks.models import QueueSlot, Task
from tasks.queue import claim_next_read
from tests.learning.standin import StandInPredictor

pytestmark = pytest.mark.django_db

LOW, HIGH = [0.98, 0.01, 0.01], [0.34, 0.33, 0.33]  # normalised entropy about 0.1 and 1.0
THRESHOLD = 0.95


@pytest.fixture
def with_policy(request, cast, api):
    """A new current protocol version (through the API) carrying the policy, before any task exists."""
    action = getattr(request, "param", "extra_read")
    rules = {"panel_policy": {"enabled": True, "uncertainty_threshold": THRESHOLD, "action": action}}
    response = api(cast.manager).post(f"/api/projects/{cast.project.pk}/protocol-versions/",
                                      {"name": "v2 adaptive panel", "rules": rules}, format="json")
    assert response.status_code == 201, response.content
    return response.json()


def _score(project, predictor, probabilities):
    StandInPredictor.probabilities = [list(p) for p in probabilities]
    job = runs.start_job(project, LearningJob.Kind.SCORE, by=None, enqueue=False)
    LearningJob.objects.filter(pk=job.pk).update(state="running")
    job.refresh_from_db()
    scoring.score_queue(job, predictor)
    job.refresh_from_db()
    assert job.state == "succeeded", job.error
    return job


def _manager_tasks(api, cast):
    response = api(cast.manager).get(f"/api/projects/{cast.project.pk}/tasks/", {"page_size": 100})
    assert response.status_code == 200
    body = response.json()
    return {t["id"]: t for t in (body["results"] if isinstance(body, dict) else body)}


def _panel(task_id):
    task = Task.objects.get(pk=task_id)
    return task.reads_required, task.first_read_tier, sorted(QueueSlot.objects.filter(task=task)
                                                             .values_list("tier", flat=True))


def test_without_a_policy_scoring_changes_no_panel(trained, predictor, api, cast):
    queued = trained["queued"]
    job = _score(trained["project"], predictor, [LOW, HIGH, HIGH, HIGH])
    assert job.result["panels_changed"] == 0
    for task in queued:
        assert _panel(task.pk) == (2, Tier.ANNOTATOR, [Tier.ANNOTATOR] * 2)
    shown = _manager_tasks(api, cast)
    assert all(not shown[t.pk]["panel_set_by_policy"] and shown[t.pk]["panel_decision"] is None for t in queued)
    assert not AuditEvent.objects.filter(action="panel_policy").exists()


def test_the_policy_is_shown_on_its_protocol_version(with_policy, api, cast):
    response = api(cast.manager).get(f"/api/projects/{cast.project.pk}/protocol-versions/{with_policy['number']}/")
    assert response.status_code == 200
    assert response.json()["rules"]["panel_policy"] == {"enabled": True, "uncertainty_threshold": THRESHOLD,
                                                        "action": "extra_read"}


def test_a_bad_policy_is_refused(cast, api):
    response = api(cast.manager).post(f"/api/projects/{cast.project.pk}/protocol-versions/", {
        "name": "bad", "rules": {"panel_policy": {"enabled": True, "uncertainty_threshold": -1, "action": "x"}}},
        format="json")
    assert response.status_code == 400
    assert "rules.panel_policy" in response.json()["errors"]


def test_an_uncertain_task_gets_one_more_read_and_a_confident_one_keeps_k(with_policy, trained, predictor, api,
                                                                          cast, sent,
                                                                          django_capture_on_commit_callbacks):
    queued, gold = trained["queued"], trained["gold"]
    gold_before = _panel(gold.pk)
    with django_capture_on_commit_callbacks(execute=True):
        job = _score(trained["project"], predictor, [LOW, HIGH, LOW, HIGH])
    assert job.result["panels_changed"] == 1
    assert _panel(queued[1].pk) == (3, Tier.ANNOTATOR, [Tier.ANNOTATOR] * 3)
    assert _panel(queued[0].pk) == _panel(queued[2].pk) == (2, Tier.ANNOTATOR, [Tier.ANNOTATOR] * 2)
    assert _panel(gold.pk) == gold_before  # the gold task was scored as unsure too, and left alone
    shown = _manager_tasks(api, cast)
    assert shown[queued[1].pk]["reads_required"] == 3 and shown[queued[1].pk]["panel_set_by_policy"] is True
    decision = shown[queued[1].pk]["panel_decision"]
    assert decision["action"] == "extra_read" and decision["base_reads_required"] == 2
    assert decision["uncertainty"] >= THRESHOLD and "uncertainty" in decision["reason"]
    assert shown[queued[0].pk]["panel_set_by_policy"] is False
    event = AuditEvent.objects.get(action="panel_policy")
    assert event.extra["changed"] == 1 and event.extra["tasks"][0]["task"] == queued[1].pk
    assert any(e == "tasks.panels_changed" and d["tasks"] == [queued[1].pk] for _, e, d in sent)
    # Readers see none of it: the manager views are closed to them.
    assert api(cast.annotator).get(f"/api/projects/{cast.project.pk}/tasks/").status_code in (403, 404)
    # Three annotators can now each take a read of the unsure task.
    assert claim_next_read(cast.annotator).task.pk == queued[1].pk


@pytest.mark.parametrize("with_policy", ["radiologist_first_read"], indirect=True)
def test_an_uncertain_task_can_go_to_radiologists_first(with_policy, trained, predictor, api, cast):
    queued = trained["queued"]
    _score(trained["project"], predictor, [HIGH, LOW, LOW, HIGH])
    assert _panel(queued[0].pk) == (2, Tier.RADIOLOGIST, [Tier.RADIOLOGIST] * 2)
    assert _panel(queued[1].pk) == (2, Tier.ANNOTATOR, [Tier.ANNOTATOR] * 2)
    assert claim_next_read(cast.annotator).task.pk != queued[0].pk
    assert claim_next_read(cast.radiologist).task.pk == queued[0].pk
    assert _manager_tasks(api, cast)[queued[0].pk]["panel_decision"]["action"] == "radiologist_first_read"


def test_a_task_with_a_read_taken_keeps_its_panel(with_policy, trained, predictor, cast):
    queued = trained["queued"]
    taken = claim_next_read(cast.annotator).task
    _score(trained["project"], predictor, [HIGH, HIGH, HIGH, HIGH])
    assert Task.objects.get(pk=taken.pk).reads_required == 2
    assert {Task.objects.get(pk=t.pk).reads_required for t in queued if t.pk != taken.pk} == {3}


def test_a_task_the_model_becomes_sure_of_goes_back_to_the_protocols_panel(with_policy, trained, predictor):
    queued = trained["queued"]
    _score(trained["project"], predictor, [LOW, HIGH, LOW, LOW])
    assert _panel(queued[1].pk)[0] == 3
    job = _score(trained["project"], predictor, [LOW, LOW, LOW, LOW])
    assert job.result["panels_changed"] == 1
    assert _panel(queued[1].pk) == (2, Tier.ANNOTATOR, [Tier.ANNOTATOR] * 2)
    assert Task.objects.get(pk=queued[1].pk).panel_decision is None
