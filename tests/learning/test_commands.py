import io

import pytest
from django.core.management import CommandError, call_command

from learning.models import LearningJob, ModelVersion
from tests.learning.standin import StandInPredictor

pytestmark = pytest.mark.django_db


def test_train_then_score_from_the_command_line_with_a_progress_bar(learning_project):
    project = learning_project["project"]
    StandInPredictor.accuracies = [0.8]
    out, err = io.StringIO(), io.StringIO()
    call_command("train_model", project=project.pk, stdout=out, stderr=err)
    assert "promoted" in out.getvalue() and "100%" in err.getvalue()
    assert ModelVersion.objects.get(project=project).is_current
    call_command("score_queue", project=project.pk, stdout=out, stderr=err)
    job = LearningJob.objects.get(kind="score")
    assert job.trigger == "command" and job.state == "succeeded" and job.result["scored"] == 4  # with the gold check


def test_a_failing_command_says_why(learning_project):
    with pytest.raises(CommandError, match="no current model"):
        call_command("score_queue", project=learning_project["project"].pk, stdout=io.StringIO(),
                     stderr=io.StringIO())
    with pytest.raises(CommandError, match="No project"):
        call_command("score_queue", project=999999, stdout=io.StringIO(), stderr=io.StringIO())
