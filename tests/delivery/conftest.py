"""Consensus tasks with every kind of finding, read through the API by two annotators who agree."""

import pytest

from core.dicom.models import Instance
from tasks.creation import create_tasks
from tasks.models import Task
from tasks.states import TaskState
from tests.tasks.conftest import add_ct_studies


def all_kinds(body, instances) -> list[dict]:
    """One finding of every kind the generic protocol has, on the claimed study."""
    series_uid = body["dicomweb"]["series"][0]["series_uid"]
    first = instances[0]
    rows, columns, slices = first.rows, first.columns, len(instances)
    total = slices * rows * columns
    # Voxels 20..49 of slice 0 and 0..9 of slice 1 (C-order slice, row, column).
    rle = [20, 30, rows * columns - 50, 10, total - rows * columns - 10]
    sop = [i.sop_instance_uid for i in instances]
    return [
        {"label": "pneumothorax", "mask": {"series_uid": series_uid, "shape": [slices, rows, columns], "rle": rle}},
        {"label": "fracture", "bbox": {"sop_instance_uid": sop[1], "x0": 2, "y0": 3, "x1": 8, "y1": 9}},
        {"label": "nodule", "bbox3d": {"series_uid": series_uid, "min": [1, 1, 0], "max": [5, 6, 2]}},
        {"label": "mass", "polygon": {"sop_instance_uid": sop[0], "points": [[2, 2], [10, 2], [6, 9]]}},
        {"label": "carina", "point": {"sop_instance_uid": sop[0], "x": 5.5, "y": 6.5}},
        {"label": "mean_attenuation", "polygon": {"sop_instance_uid": sop[1], "points": [[1, 1], [12, 1], [12, 12]]}},
        {"label": "finding_laterality", "value": "left"},
    ]


def laterality(value):
    return lambda body, instances: [{"label": "finding_laterality", "value": value}]


def read_task(api, user, findings_for) -> dict:
    client = api(user)
    body = client.post("/api/queue/next/", {}, format="json").json()
    instances = list(Instance.objects.filter(series__study__study_uid=body["study_uid"]).order_by("instance_number"))
    response = client.post(f"/api/reads/{body['read']}/submit/", {"findings": findings_for(body, instances)},
                           format="json")
    assert response.status_code == 200, response.json()
    return body


def consensus_tasks(cast, api, findings_fors) -> list[Task]:
    """One CT study per entry, read twice with the same findings: tasks in state consensus."""
    add_ct_studies(cast.project, len(findings_fors), seed=300)
    tasks = create_tasks(cast.project, by=cast.manager)
    for findings_for in findings_fors:
        read_task(api, cast.annotator, findings_for)
        read_task(api, cast.second_annotator, findings_for)
    tasks = list(Task.objects.filter(pk__in=[t.pk for t in tasks]).order_by("id"))
    assert all(t.state == TaskState.CONSENSUS for t in tasks)
    return tasks


@pytest.fixture
def rich_tasks(cast, api):
    """Two consensus tasks: one with every kind of finding, one with a classification only."""
    return consensus_tasks(cast, api, [all_kinds, laterality("right")])
