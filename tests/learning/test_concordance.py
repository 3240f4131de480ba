import pytest

from learning import runs
from tasks.models import Consensus, Task
from tasks.reports import concordance_report
from tests.learning.standin import StandInPredictor

pytestmark = pytest.mark.django_db

RIGHT, LEFT = [0.9, 0.05, 0.05], [0.1, 0.8, 0.1]


def test_the_concordance_report_compares_the_current_models_predictions_with_consensus(learning_project,
                                                                                        predictor):
    project = learning_project["project"]
    StandInPredictor.accuracies = [0.9]
    runs.run_job(runs.start_job(project, "train", by=None, enqueue=False).pk, predictor)
    before = concordance_report(project)
    assert not [r for r in before["rows"] if r["comparison"] == "model_vs_consensus"]
    StandInPredictor.probabilities = [RIGHT, LEFT, RIGHT]  # the model's answers for the three queued tasks
    assert runs.run_job(runs.start_job(project, "score", by=None, enqueue=False).pk, predictor).state == "succeeded"
    for task, value in zip(learning_project["queued"], ["right", "left", "left"], strict=True):
        Task.objects.filter(pk=task.pk).update(state="consensus")
        Consensus.objects.create(task=task, method="agreed", findings=[{"label": "finding_laterality",
                                                                        "value": value}])
    rows = [r for r in concordance_report(project)["rows"] if r["comparison"] == "model_vs_consensus"]
    assert len(rows) == 1
    row = rows[0]
    assert row["finding_class"] == "finding_laterality" and row["n"] == 3 and row["model_version"] == 1
    # Agreement 2/3, chance agreement 2/3*1/3 + 1/3*2/3 = 4/9: kappa = (6/9 - 4/9) / (5/9) = 0.4.
    assert row["value"] == pytest.approx(0.4)
