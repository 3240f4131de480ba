"""Agreement, automatic consensus and radiologist adjudication, end to end through the API."""

import pytest

from audit.models import AuditEvent
from core.dicom import synthetic
from core.dicom.models import Instance
from core.protocols import create_protocol_version
from tasks.creation import create_tasks
from tasks.models import Adjudication, Consensus, Task
from tasks.states import TaskState
from tests.tasks.conftest import add_ct_studies, ingest_series

pytestmark = pytest.mark.django_db


def _read_task(api, user, findings_for):
    """Claim the next read as ``user`` and submit what ``findings_for(claim, instances)`` returns."""
    client = api(user)
    body = client.post("/api/queue/next/", {}, format="json").json()
    instances = list(Instance.objects.filter(series__study__study_uid=body["study_uid"]).order_by("instance_number"))
    response = client.post(f"/api/reads/{body['read']}/submit/", {"findings": findings_for(body, instances)},
                           format="json")
    assert response.status_code == 200, response.json()
    return body


def _laterality(value):
    return lambda body, instances: [{"label": "finding_laterality", "value": value}]


def _mask(voxels):
    def build(body, instances):
        first = instances[0]
        total = len(instances) * first.rows * first.columns
        return [{"label": "pneumothorax", "mask": {"series_uid": body["dicomweb"]["series"][0]["series_uid"],
                                                   "shape": [len(instances), first.rows, first.columns],
                                                   "rle": [voxels[0], voxels[1], total - sum(voxels)]}}]
    return build


@pytest.fixture
def one_task(cast):
    add_ct_studies(cast.project, 1)
    return create_tasks(cast.project, by=cast.manager)[0]


def test_agreeing_reads_reach_consensus_at_once(cast, api, one_task):
    _read_task(api, cast.annotator, _laterality("left"))
    _read_task(api, cast.second_annotator, _laterality("left"))
    task = Task.objects.get(pk=one_task.pk)
    assert task.state == TaskState.CONSENSUS
    consensus = Consensus.objects.get(task=task)
    assert consensus.method == "agreed" and consensus.findings[0]["value"] == "left"
    assert consensus.agreement["labels"]["finding_laterality"]["agree"] is True
    assert AuditEvent.objects.filter(action="consensus", object_id=str(consensus.pk)).exists()


def test_masks_agree_by_dice_and_vote(cast, api, one_task):
    _read_task(api, cast.annotator, _mask((10, 40)))
    _read_task(api, cast.second_annotator, _mask((12, 40)))  # 38 of 40 voxels shared: Dice 0.95
    consensus = Consensus.objects.get(task=one_task)
    assert consensus.agreement["labels"]["pneumothorax"]["figures"] == [0.95]
    assert consensus.findings[0]["mask"]["voxels"] == 38  # both readers' voxels (k = 2)


def test_disagreement_opens_an_adjudication_that_a_radiologist_resolves(cast, api, one_task):
    first = _read_task(api, cast.annotator, _laterality("left"))
    _read_task(api, cast.second_annotator, _laterality("right"))
    task = Task.objects.get(pk=one_task.pk)
    assert task.state == TaskState.AWAITING_ADJUDICATION
    adjudication = Adjudication.objects.get(task=task)
    assert adjudication.tier == 2 and adjudication.agreement["labels"]["finding_laterality"]["agree"] is False

    assert api(cast.annotator).post("/api/adjudications/next/").status_code == 204  # a reader of the task
    radiologist = api(cast.radiologist)
    claimed = radiologist.post("/api/adjudications/next/")
    assert claimed.status_code == 200
    body = claimed.json()
    assert [r["tier"] for r in body["reads"]] == ["Annotator", "Annotator"]
    assert {r["reader"] for r in body["reads"]} == {cast.annotator.pseudonym, cast.second_annotator.pseudonym}
    assert "annotator" not in str(body["reads"])  # pseudonyms, not names

    url = f"/api/adjudications/{body['id']}/resolve/"
    assert radiologist.post(url, {"resolution": "read", "read": first["read"], "rationale": " "},
                            format="json").status_code == 400
    assert api(cast.neuro_subspecialist).post(url, {"resolution": "read", "read": first["read"],
                                                    "rationale": "x"}, format="json").status_code == 404
    resolved = radiologist.post(url, {"resolution": "read", "read": first["read"],
                                      "rationale": "Left-sided pleural line on the apical slices."}, format="json")
    assert resolved.status_code == 200 and resolved.json()["state"] == "resolved"
    consensus = Consensus.objects.get(task=task)
    assert consensus.method == "adjudicated" and consensus.findings[0]["value"] == "left"
    assert Task.objects.get(pk=task.pk).state == TaskState.CONSENSUS
    assert AuditEvent.objects.filter(action="adjudicate", actor_id=cast.radiologist.pk).exists()


def test_an_adjudicator_can_write_a_new_answer_validated_like_a_read(cast, api, one_task):
    _read_task(api, cast.annotator, _laterality("left"))
    _read_task(api, cast.second_annotator, _laterality("right"))
    client = api(cast.radiologist)
    body = client.post("/api/adjudications/next/").json()
    url = f"/api/adjudications/{body['id']}/resolve/"
    bad = client.post(url, {"resolution": "new", "findings": [{"label": "finding_laterality", "value": "middle"}],
                            "rationale": "neither"}, format="json")
    assert bad.status_code == 400 and "findings[0].value" in bad.json()["errors"]
    good = client.post(url, {"resolution": "new", "findings": [{"label": "finding_laterality",
                                                                 "value": "bilateral"}],
                             "rationale": "Both sides on review."}, format="json")
    assert good.status_code == 200
    assert Consensus.objects.get(task=one_task).findings[0]["value"] == "bilateral"


def test_mammography_disagreements_go_to_breast_radiologists(cast, api):
    ingest_series(cast.project, synthetic.make_ct_series(n_slices=1, rows=8, cols=8, modality="MG",
                                                         body_part="BREAST", seed=77))
    create_tasks(cast.project, by=cast.manager)
    _read_task(api, cast.annotator, _laterality("left"))
    _read_task(api, cast.second_annotator, _laterality("right"))
    assert Adjudication.objects.get().subspecialty == "breast"
    assert api(cast.radiologist).post("/api/adjudications/next/").status_code == 204  # chest, not breast
    assert api(cast.breast_subspecialist).post("/api/adjudications/next/").status_code == 200


def test_ordinal_grades_agree_within_the_protocol_tolerance(cast, api):
    create_protocol_version(project=cast.project, name="birads", template="birads",
                            rules={"agreement": {"grade_within": 1}})
    add_ct_studies(cast.project, 1, seed=300)
    create_tasks(cast.project, by=cast.manager)
    key = next(e.key for e in cast.project.current_protocol_version().entries.all() if e.kind == "ordinal")
    _read_task(api, cast.annotator, lambda b, i: [{"label": key, "value": "3"}])
    _read_task(api, cast.second_annotator, lambda b, i: [{"label": key, "value": "4"}])
    consensus = Consensus.objects.get()
    assert consensus.findings[0]["value"] == "3"  # the lower median of two grades
