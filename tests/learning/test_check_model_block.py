"""With suggestions on, a gold check's claim shows the model's view exactly as a production claim
does: the checks are scored and pre-annotated with the queue (issue 17, item 6)."""

import pytest

from core.memberships import grant_membership
from learning import runs
from learning.models import LearningConfig
from tasks.models import Read
from tests.factories import UserFactory
from tests.learning.standin import StandInPredictor

pytestmark = pytest.mark.django_db


def _claim(api, user):
    response = api(user).post("/api/queue/next/", {}, format="json")
    assert response.status_code == 200
    return response.json()


def _set_gold_rate(project, rate):
    project.gold_rate = rate
    project.save(update_fields=["gold_rate"])


def _shape(block) -> dict:
    """The model block with each value reduced to its type (and a suggestion to its keys)."""
    return {key: ([sorted(s) for s in value] if key == "suggestions" else type(value).__name__)
            for key, value in block.items()}


def _annotator(cast, username):
    user = UserFactory(username=username, organization=cast.vendor)
    grant_membership(project=cast.project, user=user, role="annotator", by=cast.manager)
    return user


def _production_and_check(api, project, production_reader, check_reader, gold):
    _set_gold_rate(project, 0.0)
    production = _claim(api, production_reader)
    _set_gold_rate(project, 1.0)
    check = _claim(api, check_reader)
    assert check["task"] == gold.pk and Read.objects.get(pk=check["read"]).is_check
    assert production["task"] != gold.pk
    return production, check


def test_a_check_claim_shows_the_model_block_a_production_claim_shows(learning_project, predictor, api, cast):
    project, gold = learning_project["project"], learning_project["gold"]
    LearningConfig.objects.filter(project=project).update(is_blind_to_model=False, suggestions_enabled=True)

    # No model output yet: production and check blocks are the same empty view.
    production, check = _production_and_check(api, project, cast.annotator, cast.second_annotator, gold)
    assert set(production) == set(check)
    assert production["model"] == check["model"] == {"version": None, "uncertainty": None, "suggestions": []}

    StandInPredictor.accuracies = [0.9]
    runs.run_job(runs.start_job(project, "train", by=None, enqueue=False).pk, predictor)
    assert runs.run_job(runs.start_job(project, "score", by=None, enqueue=False).pk, predictor).state == "succeeded"
    assert runs.run_job(runs.start_job(project, "preannotate", by=None, enqueue=False).pk,
                        predictor).state == "succeeded"

    production, check = _production_and_check(api, project, _annotator(cast, "third_annotator"),
                                              _annotator(cast, "fourth_annotator"), gold)
    assert set(production) == set(check)
    assert _shape(production["model"]) == _shape(check["model"])
    assert check["model"]["version"] == production["model"]["version"] == 1
    assert check["model"]["uncertainty"] is not None and check["model"]["suggestions"]
