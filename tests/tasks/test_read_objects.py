"""What a reader saves in the viewer (STOW-RS of a SEG into the read's DICOMweb root) becomes the
read's findings: stored encrypted, merged into the draft, served back only under that read's root,
replaced by the next save, refused whole with a reason when it cannot be mapped."""

import io

import highdicom as hd
import numpy as np
import pydicom
import pytest
from dicomweb_client.api import DICOMwebClient
from knox.models import AuthToken
from pydicom.sr.codedict import codes
from pydicom.uid import RLELossless

from core.dicom.models import Instance
from core.dicom.storage import get_store
from tasks.models import Read, ReadObject

NEXT = "/api/queue/next/"
TISSUE = hd.sr.CodedConcept("85756007", "SCT", "Tissue")  # OHIF's placeholder category and type


def _claim(client) -> dict:
    response = client.post(NEXT, {}, format="json")
    assert response.status_code == 200, response.content
    return response.json()


def _sources(study_uid: str) -> list[pydicom.Dataset]:
    """The study's images as the viewer got them (de-identified, from the store), in slice order."""
    instances = Instance.objects.filter(series__study__study_uid=study_uid, is_reader_object=False)
    datasets = [pydicom.dcmread(io.BytesIO(get_store().read_bytes(i.storage_name))) for i in instances]
    return sorted(datasets, key=lambda ds: float(ds.ImagePositionPatient[2]))


def ohif_label_map(sources, label: str, *, voxels: list[tuple[int, int, int]], series_number=100):
    """A Label Map Segmentation as OHIF 3.13 writes it: RLE Lossless, one segment coded with the
    placeholder Tissue concept and named by the label the reader typed."""
    mask = np.zeros((len(sources), sources[0].Rows, sources[0].Columns), dtype=np.uint8)
    for z, y, x in voxels:
        mask[z, y, x] = 1
    segment = hd.seg.SegmentDescription(
        segment_number=1, segment_label=label, segmented_property_category=TISSUE,
        segmented_property_type=TISSUE, algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL)
    return hd.seg.Segmentation(
        source_images=sources, pixel_array=mask, segmentation_type=hd.seg.SegmentationTypeValues.LABELMAP,
        segment_descriptions=[segment], series_instance_uid=hd.UID(), series_number=series_number,
        sop_instance_uid=hd.UID(), instance_number=1, manufacturer="OHIF", manufacturer_model_name="OHIF Viewer",
        software_versions="3.13.2", device_serial_number="1", transfer_syntax_uid=RLELossless)


def _stow(client, read_id: int, *datasets):
    boundary = "readobjects"
    body = b""
    for ds in datasets:
        out = io.BytesIO()
        ds.save_as(out, enforce_file_format=True)
        body += f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + out.getvalue() + b"\r\n"
    body += f"--{boundary}--\r\n".encode()
    # OHIF sends the type parameter unquoted (omitQuotationForMultipartRequest).
    return client.generic("POST", f"/dicomweb/reads/{read_id}/studies", body,
                          content_type=f"multipart/related; type=application/dicom; boundary={boundary}")


@pytest.mark.django_db(transaction=True)
def test_a_label_map_seg_stored_by_dicomweb_client_becomes_the_reads_findings(cast, queued, live_server, settings, api):
    settings.PUBLIC_BASE_URL = live_server.url
    client = api(cast.annotator)
    body = _claim(client)
    _, token = AuthToken.objects.create(cast.annotator)
    viewer = DICOMwebClient(url=body["dicomweb"]["root"], headers={"Authorization": f"Bearer {token}"})
    sources = _sources(body["study_uid"])
    seg = ohif_label_map(sources, "Pneumothorax", voxels=[(0, 3, 4), (0, 3, 5), (1, 3, 4)])
    stored = viewer.store_instances([seg])
    assert [item.ReferencedSOPInstanceUID for item in stored.ReferencedSOPSequence] == [seg.SOPInstanceUID]
    assert stored.ReferencedSOPSequence[0].RetrieveURL.startswith(body["dicomweb"]["root"])
    # The read's draft now holds the segment as a pneumothorax mask.
    read = Read.objects.get(pk=body["read"])
    [finding] = read.draft
    assert finding["label"] == "pneumothorax" and "mask" in finding
    # OHIF reloads the study after a save: the SEG is there, in a series of its own, and retrievable whole.
    series = {s["0020000E"]["Value"][0]: s for s in viewer.search_for_series(body["study_uid"])}
    assert seg.SeriesInstanceUID in series and series[seg.SeriesInstanceUID]["00080060"]["Value"] == ["SEG"]
    back = viewer.retrieve_instance(body["study_uid"], seg.SeriesInstanceUID, seg.SOPInstanceUID)
    assert "Pneumothorax" in {s.SegmentLabel for s in back.SegmentSequence} and back.PatientID == sources[0].PatientID
    # Stored encrypted, as every instance is.
    instance = Instance.objects.get(sop_instance_uid=seg.SOPInstanceUID)
    ciphertext = get_store().storage.open(instance.storage_name).read()
    assert instance.is_reader_object and b"Pneumothorax" not in ciphertext
    # The project-wide root serves the study's originals only: the saved object is the read's.
    manager = api(cast.manager)
    project_series = manager.get(f"/dicomweb/studies/{body['study_uid']}/series").json()
    assert seg.SeriesInstanceUID not in {s["0020000E"]["Value"][0] for s in project_series}
    # Submitting without findings submits what was saved.
    submitted = client.post(f"/api/reads/{body['read']}/submit/", {}, format="json")
    assert submitted.status_code == 200, submitted.content
    [final] = submitted.json()["findings"]
    assert final["label"] == "pneumothorax" and final["mask"]["voxels"] == 3


@pytest.mark.django_db
def test_saving_again_supersedes_the_earlier_object_and_keeps_the_drafts_other_findings(cast, queued, api):
    client = api(cast.annotator)
    body = _claim(client)
    laterality = {"label": "finding_laterality", "value": "left"}
    client.put(f"/api/reads/{body['read']}/draft/", {"draft": [laterality]}, format="json")
    sources = _sources(body["study_uid"])
    first = ohif_label_map(sources, "Pneumothorax", voxels=[(0, 1, 1)])
    second = ohif_label_map(sources, "pleural effusion", voxels=[(1, 2, 2), (1, 2, 3)], series_number=101)
    assert _stow(client, body["read"], first).status_code == 200
    assert _stow(client, body["read"], second).status_code == 200
    draft = Read.objects.get(pk=body["read"]).draft
    assert laterality in draft and [f["label"] for f in draft if "mask" in f] == ["pleural_effusion"]
    objects = ReadObject.objects.filter(read_id=body["read"]).order_by("id")
    assert [o.superseded_at is not None for o in objects] == [True, False]  # kept, not deleted
    served = {s["0020000E"]["Value"][0] for s in client.get(
        f"/dicomweb/reads/{body['read']}/studies/{body['study_uid']}/series").json()}
    assert second.SeriesInstanceUID in served and first.SeriesInstanceUID not in served


@pytest.mark.django_db
def test_an_unknown_label_is_refused_with_the_labels_the_protocol_allows_and_nothing_is_stored(cast, queued, api):
    client = api(cast.annotator)
    body = _claim(client)
    before = Instance.objects.count()
    seg = ohif_label_map(_sources(body["study_uid"]), "Spleen", voxels=[(0, 1, 1)])
    response = _stow(client, body["read"], seg)
    assert response.status_code == 422
    [failed] = response.json()["00081198"]["Value"]
    reason = failed["00091001"]["Value"][0]
    assert "Spleen" in reason and "pneumothorax" in reason and "intracranial_haemorrhage" in reason
    assert failed["00081155"]["Value"] == [seg.SOPInstanceUID]
    assert Instance.objects.count() == before and not ReadObject.objects.exists()
    assert Read.objects.get(pk=body["read"]).draft is None


@pytest.mark.django_db
def test_an_object_of_another_study_or_a_read_that_is_not_live_stores_nothing(cast, queued, api):
    client = api(cast.annotator)
    body = _claim(client)
    other = next(t.study.study_uid for t in queued if t.study.study_uid != body["study_uid"])
    seg = ohif_label_map(_sources(other), "Pneumothorax", voxels=[(0, 1, 1)])
    response = _stow(client, body["read"], seg)
    assert response.status_code == 400 and other in response.json()["00081198"]["Value"][0]["00091001"]["Value"][0]
    client.post(f"/api/reads/{body['read']}/release/", {}, format="json")
    mine = ohif_label_map(_sources(body["study_uid"]), "Pneumothorax", voxels=[(0, 1, 1)])
    assert _stow(client, body["read"], mine).status_code == 404
    assert not Instance.objects.filter(is_reader_object=True).exists() and not ReadObject.objects.exists()


@pytest.mark.django_db
def test_two_readers_of_one_task_never_see_each_others_objects(cast, queued, api):
    first, second = api(cast.annotator), api(cast.second_annotator)
    a = _claim(first)
    b = _claim(second)
    assert b["task"] == a["task"]  # two reads a task: both are handed the head of the queue
    seg = ohif_label_map(_sources(a["study_uid"]), "Pneumothorax", voxels=[(0, 1, 1)])
    assert _stow(first, a["read"], seg).status_code == 200

    def seen_by(reader, body) -> set:
        """Every series a reader's root shows, through each path, and "direct" if any URL naming the first
        reader's object answers anything but 404."""
        second, root = reader, f"/dicomweb/reads/{body['read']}/studies/{body['study_uid']}"
        series = {s["0020000E"]["Value"][0] for s in second.get(f"{root}/series").json()}
        metadata = {m["0020000E"]["Value"][0] for m in second.get(f"{root}/metadata").json()}
        retrieved = second.get(root, HTTP_ACCEPT="multipart/related; type=application/dicom; transfer-syntax=*")
        parts = b"".join(retrieved.streaming_content)
        whole = {str(seg.SeriesInstanceUID)} if str(seg.SOPInstanceUID).encode() in parts else set()
        seg_root = f"{root}/series/{seg.SeriesInstanceUID}"
        urls = [seg_root, f"{seg_root}/metadata", f"{seg_root}/instances", f"{seg_root}/thumbnail",
                f"{seg_root}/instances/{seg.SOPInstanceUID}", f"{seg_root}/instances/{seg.SOPInstanceUID}/metadata",
                f"{seg_root}/instances/{seg.SOPInstanceUID}/frames/1"]
        direct = {"direct"} if any(second.get(url).status_code != 404 for url in urls) else set()
        return series | metadata | whole | direct

    assert {seg.SeriesInstanceUID, "direct"} <= seen_by(first, a)  # the paths do show it to its reader
    assert not {seg.SeriesInstanceUID, "direct"} & seen_by(second, b)
    assert first.post(f"/api/reads/{a['read']}/submit/", {}, format="json").status_code == 200
    assert not {seg.SeriesInstanceUID, "direct"} & seen_by(second, b)


@pytest.mark.django_db
def test_a_measurement_report_saved_into_a_read_submits_the_findings_a_json_submit_of_the_same_gives(cast, queued, api):
    from tasks.models import Consensus
    from tests.tasks.test_findings_from_dicom import G, free_text, num, ohif_group, planar, report

    first, second = api(cast.annotator), api(cast.second_annotator)
    a, b = _claim(first), _claim(second)
    assert a["task"] == b["task"]
    one, two = _sources(a["study_uid"])
    box, outline = [[2, 2], [10, 2], [10, 8], [2, 8], [2, 2]], [[3, 3], [12, 4], [11, 12], [4, 11], [3, 3]]
    sr = report([ohif_group("RectangleROI", "Nodule", [num(codes.SCT.Area, 48.0, "mm2", G.POLYLINE, box, one)]),
                 ohif_group("PlanarFreehandROI", "mass", [num(codes.SCT.Area, 60.0, "mm2", G.POLYLINE, outline, two)]),
                 planar("Cornerstone3DTools@^0.1.0:Probe", G.POINT, [[7.5, 6.25]], one, finding=free_text("Carina"))],
                [one, two])
    assert _stow(first, a["read"], sr).status_code == 200
    by_viewer = first.post(f"/api/reads/{a['read']}/submit/", {}, format="json")
    as_json = [{"label": "nodule", "bbox": {"sop_instance_uid": one.SOPInstanceUID,
                                            "x0": 2, "y0": 2, "x1": 10, "y1": 8}},
               {"label": "mass", "polygon": {"sop_instance_uid": two.SOPInstanceUID, "points": outline[:4]}},
               {"label": "carina", "point": {"sop_instance_uid": one.SOPInstanceUID, "x": 7.5, "y": 6.25}}]
    by_json = second.post(f"/api/reads/{b['read']}/submit/", {"findings": as_json}, format="json")
    assert by_viewer.status_code == by_json.status_code == 200, (by_viewer.content, by_json.content)
    assert by_viewer.json()["findings"] == by_json.json()["findings"]
    assert Consensus.objects.filter(task_id=a["task"]).exists()  # the two reads agree, as two JSON submits would


@pytest.mark.django_db
def test_an_adjudicator_sees_each_reads_segmentation_labelled_by_its_readers_pseudonym(cast, queued, api):
    first, second = api(cast.annotator), api(cast.second_annotator)
    a, b = _claim(first), _claim(second)
    sources = _sources(a["study_uid"])
    segs = [ohif_label_map(sources, "Pneumothorax", voxels=[(0, 1, 1), (0, 1, 2)]),
            ohif_label_map(sources, "Pneumothorax", voxels=[(1, 12, 12), (1, 12, 13)], series_number=101)]
    for client, body, seg in ((first, a, segs[0]), (second, b, segs[1])):
        assert _stow(client, body["read"], seg).status_code == 200
        assert client.post(f"/api/reads/{body['read']}/submit/", {}, format="json").status_code == 200
    claimed = api(cast.radiologist).post("/api/adjudications/next/", {}, format="json")
    assert claimed.status_code == 200, claimed.content  # the masks do not overlap: the reads disagree
    adjudication = claimed.json()
    root = adjudication["dicomweb"]["root"].split("testserver", 1)[1]
    assert root == f"/dicomweb/adjudications/{adjudication['id']}"
    listed = api(cast.radiologist).get(f"{root}/studies/{a['study_uid']}/series").json()
    described = {s["0020000E"]["Value"][0]: s.get("0008103E", {}).get("Value", [""])[0] for s in listed}
    assert described[segs[0].SeriesInstanceUID].startswith(cast.annotator.pseudonym)
    assert described[segs[1].SeriesInstanceUID].startswith(cast.second_annotator.pseudonym)
    metadata = api(cast.radiologist).get(f"{root}/studies/{a['study_uid']}/series/{segs[0].SeriesInstanceUID}/metadata")
    assert metadata.json()[0]["0008103E"]["Value"][0].startswith(cast.annotator.pseudonym)
    # Readers' roots are gone once they submitted; the project-wide root never had them.
    assert first.get(f"/dicomweb/reads/{a['read']}/studies").status_code == 404
    assert segs[0].SeriesInstanceUID not in {s["0020000E"]["Value"][0] for s in api(cast.manager).get(
        f"/dicomweb/studies/{a['study_uid']}/series").json()}
