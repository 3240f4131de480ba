import pytest

from core.dicom import synthetic
from core.models import ProtocolVersion
from core.protocols import create_protocol_version
from tasks.creation import create_tasks
from tasks.models import QueueSlot, Task
from tasks.states import TaskState
from tests.tasks.conftest import add_ct_studies, ingest_series

pytestmark = pytest.mark.django_db


def test_tasks_per_study_with_k_slots_and_the_protocol_locked(cast, api):
    add_ct_studies(cast.project, 2)
    response = api(cast.manager).post(f"/api/projects/{cast.project.pk}/tasks/create/", {}, format="json")
    assert response.status_code == 201 and response.json() == {"created": 2, "queued": 2, "flagged": 0}
    assert QueueSlot.objects.filter(project=cast.project).count() == 4
    assert ProtocolVersion.objects.get(project=cast.project, number=1).is_locked
    again = api(cast.manager).post(f"/api/projects/{cast.project.pk}/tasks/create/", {}, format="json")
    assert again.json()["created"] == 0  # idempotent


def test_tasks_per_series_when_the_protocol_says_so(cast):
    create_protocol_version(project=cast.project, name="per series", rules={"unit": "series"})
    ingest_series(cast.project, synthetic.make_mr_study(sequences=("FLAIR", "T1"), n_slices=2, rows=8, cols=8))
    tasks = create_tasks(cast.project, by=cast.manager)
    assert len(tasks) == 2 and all(t.series_id for t in tasks)


def test_mr_study_missing_a_required_sequence_is_flagged_not_queued(cast):
    create_protocol_version(project=cast.project, name="needs flair+t1c",
                            rules={"required_sequences": ["FLAIR", "T1_POST"]})
    ingest_series(cast.project, synthetic.make_mr_study(sequences=("FLAIR", "T2"), n_slices=2, rows=8, cols=8,
                                                        seed=3))
    ingest_series(cast.project, synthetic.make_mr_study(sequences=("FLAIR", "T1_POST"), n_slices=2, rows=8, cols=8,
                                                        seed=4, patient={"id": "OTHER-1"}))
    tasks = create_tasks(cast.project, by=cast.manager)
    states = sorted(t.state for t in tasks)
    assert states == [TaskState.FLAGGED, TaskState.QUEUED]
    flagged = next(t for t in tasks if t.state == TaskState.FLAGGED)
    assert "T1_POST" in flagged.flag_reason
    assert not QueueSlot.objects.filter(task=flagged).exists()


def test_mammography_tasks_route_adjudication_to_breast(cast):
    ingest_series(cast.project, synthetic.make_ct_series(n_slices=1, rows=8, cols=8, modality="MG",
                                                         body_part="BREAST", seed=8))
    [task] = create_tasks(cast.project, by=cast.manager)
    assert task.adjudication_subspecialty == "breast" and task.first_read_subspecialty == ""


def test_no_protocol_version_is_a_clear_400(cast, api):
    cast.project.protocol_versions.all().delete()
    response = api(cast.manager).post(f"/api/projects/{cast.project.pk}/tasks/create/", {}, format="json")
    assert response.status_code == 400 and response.json()["code"] == "no_protocol"


def test_studies_of_another_project_are_404(cast, api):
    response = api(cast.manager).post(f"/api/projects/{cast.project.pk}/tasks/create/", {"studies": [999999]},
                                      format="json")
    assert response.status_code == 404
    assert not Task.objects.exists()
