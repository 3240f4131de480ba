"""Submitting real findings through the API: normalised with their coded concepts, computed
server-side from DICOM geometry and pixels, refused whole (400 naming the field) when invalid."""

import pytest

from core.dicom.models import Instance
from tasks.models import Read
from tasks.states import ReadState

pytestmark = pytest.mark.django_db


@pytest.fixture
def held(cast, api, queued):
    client = api(cast.annotator)
    body = client.post("/api/queue/next/", {}, format="json").json()
    instances = Instance.objects.filter(series__study__study_uid=body["study_uid"]).order_by("instance_number")
    return client, body, list(instances)


def test_valid_findings_are_stored_normalised_with_codes_and_effort(held):
    client, body, instances = held
    first = instances[0]
    findings = [
        {"label": "finding_laterality", "value": "left"},
        {"label": "fracture", "bbox": {"sop_instance_uid": first.sop_instance_uid, "frame": 1,
                                       "x0": 2, "y0": 3, "x1": 10, "y1": 12}},
        {"label": "mean_attenuation", "polygon": {"sop_instance_uid": first.sop_instance_uid, "frame": 1,
                                                  "points": [[2, 2], [12, 2], [12, 12], [2, 12]]}},
        {"label": "pneumothorax", "mask": {"series_uid": body["dicomweb"]["series"][0]["series_uid"],
                                           "shape": [len(instances), first.rows, first.columns],
                                           "rle": [5, 7, len(instances) * first.rows * first.columns - 12]}},
    ]
    response = client.post(f"/api/reads/{body['read']}/submit/", {"findings": findings}, format="json")
    assert response.status_code == 200, response.json()
    read = Read.objects.get(pk=body["read"])
    assert read.state == ReadState.SUBMITTED and read.findings_count == 4 and read.slices_touched >= 1
    stored = {f["label"]: f for f in read.findings}
    assert stored["fracture"]["concept"]["scheme"] == "SCT" and stored["fracture"]["concept"]["code"]
    hu = stored["mean_attenuation"]
    assert hu["computed"] is True and isinstance(hu["value"], float) and hu["unit"] == "[hnsf'U]"
    assert stored["pneumothorax"]["mask"]["voxels"] == 7


def _fill(value, uids: dict):
    """The finding with placeholder UIDs replaced by the study's real ones."""
    if isinstance(value, dict):
        return {k: _fill(v, uids) for k, v in value.items()}
    return uids.get(value, value) if isinstance(value, str) else value


@pytest.mark.parametrize("finding,path", [
    ({"label": "no_such_label", "value": "x"}, "findings[0].label"),
    ({"label": "finding_laterality", "value": "upside-down"}, "findings[0].value"),
    ({"label": "fracture", "bbox": {"sop_instance_uid": "FIRST", "frame": 1, "x0": 2, "y0": 3, "x1": 99, "y1": 12}},
     "findings[0].bbox.x1"),
    ({"label": "fracture", "bbox": {"sop_instance_uid": "1.2.3.4", "frame": 1, "x0": 2, "y0": 3, "x1": 9,
                                    "y1": 12}}, "findings[0].bbox.sop_instance_uid"),
    ({"label": "pneumothorax", "mask": {"series_uid": "SERIES", "shape": [1, 2, 3], "rle": [6]}},
     "findings[0].mask.shape"),
])
def test_invalid_findings_are_refused_whole_naming_the_field(held, finding, path):
    client, body, instances = held
    uids = {"FIRST": instances[0].sop_instance_uid, "SERIES": body["dicomweb"]["series"][0]["series_uid"]}
    good = {"label": "finding_laterality", "value": "left"}
    response = client.post(f"/api/reads/{body['read']}/submit/", {"findings": [_fill(finding, uids), good]},
                           format="json")
    assert response.status_code == 400
    assert path in response.json()["errors"], response.json()
    read = Read.objects.get(pk=body["read"])
    assert read.state == ReadState.CLAIMED and read.findings is None  # nothing partial stored


def test_findings_must_be_a_list(held):
    client, body, _ = held
    response = client.post(f"/api/reads/{body['read']}/submit/", {"findings": {"label": "x"}}, format="json")
    assert response.status_code == 400 and "findings" in response.json()["errors"]
