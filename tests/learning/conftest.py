import pytest

from learning import runs
from learning.models import LearningConfig
from tasks.creation import create_tasks
from tasks.models import Consensus, Task
from tests.learning.standin import StandInPredictor
from tests.tasks.conftest import add_ct_studies


@pytest.fixture(autouse=True)
def _standin(settings):
    settings.LEARNING_PREDICTOR = "tests.learning.standin.StandInPredictor"
    StandInPredictor.probabilities, StandInPredictor.accuracies = [], []
    yield
    StandInPredictor.probabilities, StandInPredictor.accuracies = [], []


@pytest.fixture
def predictor():
    return StandInPredictor()


@pytest.fixture
def learning_project(cast):
    """Three queued CT tasks (k = 2), two labelled production tasks, one gold task with a reference."""
    project = cast.project
    add_ct_studies(project, 6)
    studies = list(project.studies.order_by("id"))
    labelled = create_tasks(project, by=cast.manager,
                            studies=project.studies.filter(pk__in=[s.pk for s in studies[:2]]))
    for task, value in zip(labelled, ["left", "right"], strict=True):
        Task.objects.filter(pk=task.pk).update(state="consensus")
        task.slots.all().delete()
        Consensus.objects.create(task=task, method=Consensus.Method.AGREED,
                                 findings=[{"label": "finding_laterality", "value": value}])
    from tasks.gold import import_reference

    gold = create_tasks(project, by=cast.manager, kind=Task.Kind.GOLD,
                        studies=project.studies.filter(pk=studies[2].pk))[0]
    import_reference(gold, [{"label": "finding_laterality", "value": "left"}], by=cast.manager)
    queued = create_tasks(project, by=cast.manager, studies=project.studies.filter(pk__in=[s.pk for s in studies[3:]]))
    LearningConfig.objects.update_or_create(project=project, defaults={
        "label_key": "finding_laterality", "epochs": 2})
    return {"project": project, "queued": sorted(queued, key=lambda t: t.pk), "gold": gold, "labelled": labelled}


@pytest.fixture
def trained(learning_project, predictor):
    """The learning project with a succeeded training job, so a scoring job has a model to use."""
    StandInPredictor.accuracies = [0.9]
    job = runs.run_job(runs.start_job(learning_project["project"], "train", by=None, enqueue=False).pk, predictor)
    assert job.state == "succeeded", job.error
    return learning_project
