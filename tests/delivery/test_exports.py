"""Delivery exports read back with pydicom / highdicom / nibabel; every UID resolves to an ingested instance."""

import csv
import hashlib
import io
import json

import highdicom as hd
import numpy as np
import pydicom
import pytest

from core.dicom.models import Instance, Series, Study
from core.dicom.storage import get_store
from tasks.batches import create_batch, deliver_batch
from tasks.exports.nifti import read_nifti
from tasks.findings.loading import study_geometry
from tasks.findings.masks import rle_decode
from tasks.models import Batch

pytestmark = pytest.mark.django_db


def _file(batch, name) -> bytes:
    entry = next(e for e in batch.exports if e["name"] == name)
    return get_store().read_bytes(entry["object"])


@pytest.fixture
def delivered(cast, rich_tasks, django_capture_on_commit_callbacks):
    batch = create_batch(cast.project, name="first delivery", by=cast.manager, task_ids=[t.pk for t in rich_tasks],
                         pricing={"currency": "EUR", "per_study": 3})
    with django_capture_on_commit_callbacks(execute=True):
        deliver_batch(batch, by=cast.manager)
    batch = Batch.objects.get(pk=batch.pk)
    assert batch.export_state == Batch.ExportState.READY, batch.export_error
    return batch


def test_every_file_is_stored_with_its_checksum_in_the_manifest(delivered):
    manifest = json.loads(_file(delivered, "manifest.json"))
    listed = {f["name"]: f for f in manifest["files"]}
    assert set(listed) == {e["name"] for e in delivered.exports} - {"manifest.json"}
    formats = {e["format"] for e in delivered.exports}
    assert formats == {"json", "csv", "dicom-seg", "dicom-sr", "nifti", "manifest"}
    for name, entry in listed.items():
        data = _file(delivered, name)
        assert hashlib.sha256(data).hexdigest() == entry["sha256"] and len(data) == entry["size"]


def test_manifest_carries_provenance_with_pseudonymous_readers(cast, delivered, rich_tasks):
    manifest = json.loads(_file(delivered, "manifest.json"))
    assert manifest["schema_version"] == "1.0" and manifest["software_version"].startswith("radqueue")
    assert manifest["protocol_versions"] == [1]
    first = manifest["tasks"][0]
    assert first["reads"] == 2 and first["consensus_method"] == "agreed" and first["adjudicator_tier"] is None
    assert {r["reader"] for r in first["readers"]} == {cast.annotator.pseudonym, cast.second_annotator.pseudonym}
    assert {r["tier"] for r in first["readers"]} == {"Annotator"}
    assert first["model_version"] is None
    assert first["deidentification"][0]["profile"].startswith("radqueue-deid/")
    assert "retain_modified_dates" in manifest["deidentification"]["project_options"]
    text = _file(delivered, "manifest.json").decode()
    assert "annotator" not in text.replace("Annotator", "")  # no usernames


def test_json_export_links_findings_to_ingested_uids(delivered, rich_tasks):
    document = json.loads(_file(delivered, "findings.json"))
    assert document["schema"] == "radqueue.delivery.findings" and document["schema_version"] == "1.0"
    assert [t["task"] for t in document["tasks"]] == [t.pk for t in rich_tasks]
    uids = set(Instance.objects.values_list("sop_instance_uid", flat=True))
    findings = document["tasks"][0]["consensus"]["findings"]
    assert Study.objects.filter(study_uid=document["tasks"][0]["study_uid"]).exists()
    referenced = [g["sop_instance_uid"] for f in findings for g in f.values()
                  if isinstance(g, dict) and "sop_instance_uid" in g]
    assert len(referenced) >= 3 and set(referenced) <= uids
    assert {f["label"] for f in findings} >= {"pneumothorax", "fracture", "nodule", "mass", "carina"}


def test_csv_has_one_row_per_classification(delivered, rich_tasks):
    rows = list(csv.DictReader(io.StringIO(_file(delivered, "classifications.csv").decode())))
    assert [(int(r["task"]), r["label"], r["value"]) for r in rows] == [
        (rich_tasks[0].pk, "finding_laterality", "left"), (rich_tasks[1].pk, "finding_laterality", "right")]
    assert all(Study.objects.filter(study_uid=r["study_uid"]).exists() for r in rows)
    assert rows[0]["concept_code"] == "272741003" and rows[0]["consensus_method"] == "agreed"


def test_seg_reads_back_with_the_mask_on_the_source_instances(delivered, rich_tasks):
    task = rich_tasks[0]
    seg_entry = next(e for e in delivered.exports if e["format"] == "dicom-seg")
    assert seg_entry["task"] == task.pk
    seg = hd.seg.segread(io.BytesIO(_file(delivered, seg_entry["name"])))
    assert seg.get_segment_description(1).segment_label == "pneumothorax"
    series = Series.objects.get(series_uid=seg_entry["series_uid"])
    ingested = set(series.instances.values_list("sop_instance_uid", flat=True))
    source_uids = {uid for _, _, uid in seg.get_source_image_uids()}
    assert source_uids and source_uids <= ingested
    assert seg.StudyInstanceUID == task.study.study_uid
    ordered = [g.sop_instance_uid for g in study_geometry(task.study).series[series.series_uid].instances]
    pixels = seg.get_pixels_by_source_instance(source_sop_instance_uids=ordered, segment_numbers=[1],
                                               assert_missing_frames_are_empty=True)
    consensus = next(f for f in task.consensus.findings if f["label"] == "pneumothorax")
    expected = rle_decode(consensus["mask"]["rle"], consensus["mask"]["shape"])
    assert np.array_equal(pixels[..., 0].astype(bool), expected)


def _image_of(region) -> str | None:
    """The SOP Instance UID an SCOORD region is drawn on (its IMAGE content item)."""
    items = getattr(region, "ContentSequence", [])
    return items[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID if items else None


def test_sr_is_a_tid1500_report_referencing_ingested_instances(delivered, rich_tasks):
    entry = next(e for e in delivered.exports if e["format"] == "dicom-sr")
    ds = pydicom.dcmread(io.BytesIO(_file(delivered, entry["name"])))
    assert ds.ContentTemplateSequence[0].TemplateIdentifier == "1500"
    ingested = set(Instance.objects.values_list("sop_instance_uid", flat=True))
    evidence = {i.ReferencedSOPInstanceUID for s in ds.CurrentRequestedProcedureEvidenceSequence
                for series in s.ReferencedSeriesSequence for i in series.ReferencedSOPSequence}
    assert evidence and evidence <= ingested
    groups = hd.sr.MeasurementReport.from_sequence([ds]).get_planar_roi_measurement_groups()
    findings = rich_tasks[0].consensus.findings
    # One group per 2D finding (box, polygon, point, measured polygon) and one per slice of the 3D box.
    nodule = next(f for f in findings if f["label"] == "nodule")["bbox3d"]
    assert len(groups) == 4 + nodule["max"][2] - nodule["min"][2]
    assert {g.finding_type.value for g in groups} >= {"125605004", "27925004", "4147007", "28700002"}
    regions = [(g.roi, _image_of(g.roi)) for g in groups]
    assert all(uid in ingested for _, uid in regions)
    bbox = next(f for f in findings if f["label"] == "fracture")["bbox"]
    rectangles = [region.value for region, uid in regions if uid == bbox["sop_instance_uid"]]
    assert any(len(p) == 5 and np.allclose(p[0], [bbox["x0"], bbox["y0"]])
               and np.allclose(p[2], [bbox["x1"], bbox["y1"]]) for p in rectangles)
    measured = next(g for g in groups if g.finding_type.value == "112181")
    value = next(f for f in findings if f["label"] == "mean_attenuation")["value"]
    assert measured.get_measurements()[0].value == pytest.approx(value)


def test_nifti_mask_has_the_ras_affine_of_the_dicom_geometry(delivered, rich_tasks):
    task = rich_tasks[0]
    entry = next(e for e in delivered.exports if e["format"] == "nifti")
    image = read_nifti(_file(delivered, entry["name"]))
    consensus = next(f for f in task.consensus.findings if f["label"] == "pneumothorax")
    expected = rle_decode(consensus["mask"]["rle"], consensus["mask"]["shape"])  # (slice, row, column)
    assert np.array_equal(np.asarray(image.dataobj).astype(bool), expected.transpose(2, 1, 0))
    ordered = study_geometry(task.study).series[entry["series_uid"]].instances
    ingested = {i.sop_instance_uid: i for i in Instance.objects.filter(series__series_uid=entry["series_uid"])}
    for k, geometry in enumerate(ordered):
        lps = np.array(ingested[geometry.sop_instance_uid].position)  # the centre of voxel (0, 0, k)
        ras = image.affine @ np.array([0, 0, k, 1])
        assert np.allclose(ras[:3], [-lps[0], -lps[1], lps[2]])
    spacing = ingested[ordered[0].sop_instance_uid].pixel_spacing  # (row, column) spacing
    assert np.allclose(np.linalg.norm(image.affine[:3, 0]), spacing[1])
    assert image.header.get_sform(coded=True)[1] == 1


def test_manifest_names_the_model_version_whose_scores_ordered_each_task(cast, rich_tasks,
                                                                        django_capture_on_commit_callbacks):
    from learning.models import LearningJob, ModelVersion, TaskScore

    scored, unscored = rich_tasks[0], rich_tasks[1]
    for number, state in ((1, LearningJob.State.SUCCEEDED), (2, LearningJob.State.SUCCEEDED),
                          (3, LearningJob.State.FAILED)):
        job = LearningJob.objects.create(project=cast.project, kind=LearningJob.Kind.SCORE, state=state)
        version = ModelVersion.objects.create(project=cast.project, number=number, architecture="densenet",
                                              label_key="finding", weights_object=f"w{number}", weights_sha256="0",
                                              decision_reason="test")
        TaskScore.objects.create(task=scored, model_version=version, job=job, uncertainty=0.5, strategy="entropy",
                                 probabilities=[0.5, 0.5], priority_before=0, priority_after=1)
    batch = create_batch(cast.project, name="scored", by=cast.manager, task_ids=[t.pk for t in rich_tasks])
    with django_capture_on_commit_callbacks(execute=True):
        deliver_batch(batch, by=cast.manager)
    manifest = json.loads(_file(Batch.objects.get(pk=batch.pk), "manifest.json"))
    by_task = {t["task"]: t["model_version"] for t in manifest["tasks"]}
    # v3's scoring job failed, so its scores never set a priority: v2 is the last that did.
    assert by_task[scored.pk] == 2 and by_task[unscored.pk] is None
