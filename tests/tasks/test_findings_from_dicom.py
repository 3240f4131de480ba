"""SEG and TID 1500 SR objects, built with highdicom as OHIF 3.13 writes them, become the findings a JSON
submit of the same content gives (tasks.findings.from_dicom): pure, no database."""

import io
import math

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.sr.codedict import codes
from pydicom.uid import RLELossless

from core.dicom.synthetic import make_ct_series
from tasks.findings.from_dicom import ELLIPSE_VERTICES, ObjectRefused, findings_from_object, referenced_instance_uids
from tasks.findings.geometry import InstanceGeom, LabelSpec, SeriesGeom, StudyGeom
from tasks.findings.masks import rle_encode
from tasks.findings.validation import validate_findings

HU = "[hnsf'U]"
SLICES, ROWS, COLS = 6, 32, 40
TISSUE_SRT = hd.sr.CodedConcept("T-D0050", "SRT", "Tissue")  # OHIF's placeholder for every segment
TISSUE = hd.sr.CodedConcept("85756007", "SCT", "Tissue")
FREE_TEXT = "CORNERSTONEJS", "CORNERSTONEFREETEXT"  # where OHIF puts the label a reader typed


def label(key, kind, unit="", meaning=None):
    return LabelSpec(key=key, kind=kind, categories=(), unit=unit, coding_scheme="RADLEX", code_value=f"RID-{key}",
                     code_meaning=meaning or key.title())


LABELS = {spec.key: spec for spec in [
    label("liver", "mask"), label("spleen", "mask", meaning="Splenic parenchyma"), label("volume", "measurement", "ml"),
    label("nodule", "bbox"), label("outline", "polygon"), label("carina", "landmark"),
    label("diameter", "measurement", "mm"), label("area", "measurement", "mm2"), label("density", "measurement", HU),
]}


def geometry_of(datasets) -> StudyGeom:
    """The study geometry tasks.findings.loading builds from the index, built from the datasets themselves."""
    series = {}
    for ds in datasets:
        series.setdefault(ds.SeriesInstanceUID, []).append(ds)
    geoms = {}
    for uid, members in series.items():
        members.sort(key=lambda d: float(d.ImagePositionPatient[2]))
        instances = tuple(InstanceGeom(
            sop_instance_uid=d.SOPInstanceUID, series_uid=uid, rows=d.Rows, columns=d.Columns, frames=1,
            pixel_spacing=tuple(float(v) for v in d.PixelSpacing),
            position=tuple(float(v) for v in d.ImagePositionPatient),
            orientation=tuple(float(v) for v in d.ImageOrientationPatient), instance_number=d.InstanceNumber)
            for d in members)
        spacing = abs(instances[1].position[2] - instances[0].position[2]) if len(instances) > 1 else None
        geoms[uid] = SeriesGeom(series_uid=uid, instances=instances, slice_spacing=spacing)
    return StudyGeom(study_uid=datasets[0].StudyInstanceUID, series=geoms)


@pytest.fixture(scope="module")
def ct():
    return make_ct_series(n_slices=SLICES, rows=ROWS, cols=COLS, spacing=(0.5, 0.8), slice_thickness=2.0)


@pytest.fixture(scope="module")
def study(ct):
    return geometry_of(ct)


def reread(dataset) -> pydicom.Dataset:
    buffer = io.BytesIO()
    dataset.save_as(buffer)
    return pydicom.dcmread(io.BytesIO(buffer.getvalue()))


def convert(ds, study, task_series_uid=None):
    return findings_from_object(reread(ds) if not isinstance(ds, bytes) else pydicom.dcmread(io.BytesIO(ds)),
                                labels=LABELS, study=study, task_series_uid=task_series_uid)


def normalised(findings, study, **kwargs):
    return validate_findings(findings, labels=LABELS, study=study, **kwargs)


def refusal(ds, study, **kwargs) -> ObjectRefused:
    with pytest.raises(ObjectRefused) as raised:
        convert(ds, study, **kwargs)
    return raised.value


# Segmentations


def segmentation(sources, pixels, segments, *, kind="LABELMAP", syntax=RLELossless, omit_empty_frames=False,
                 **kwargs):
    """A SEG as OHIF 3.13 saves one: label map, RLE Lossless, the placeholder code and the typed SegmentLabel."""
    descriptions = [hd.seg.SegmentDescription(
        segment_number=n, segment_label=text, segmented_property_category=TISSUE_SRT,
        segmented_property_type=code or TISSUE_SRT, algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL)
        for n, (text, code) in enumerate(segments, start=1)]
    return hd.seg.Segmentation(
        source_images=sources, pixel_array=pixels, segmentation_type=kind, segment_descriptions=descriptions,
        series_instance_uid=hd.UID(), series_number=300, sop_instance_uid=hd.UID(), instance_number=1,
        manufacturer="OHIF", manufacturer_model_name="OHIF Viewer", software_versions="3.13.2",
        device_serial_number="1", transfer_syntax_uid=syntax, omit_empty_frames=omit_empty_frames, **kwargs)


def label_map():
    pixels = np.zeros((SLICES, ROWS, COLS), np.uint8)
    pixels[1, 3:9, 4:12] = 1
    pixels[2, 2:6, 30:39] = 1
    pixels[2, 20:25, 5:9] = 2
    pixels[4, 0:3, 0:40] = 2
    return pixels


def expected_masks(pixels, series_uid, keys):
    return [{"label": key, "mask": {"series_uid": series_uid, "shape": list(pixels.shape),
                                    "rle": rle_encode(pixels == number)}} for number, key in keys]


def test_an_ohif_label_map_becomes_the_masks_a_json_submit_gives(ct, study):
    pixels = label_map()
    seg = segmentation(ct, pixels, [("Liver", None), ("Splenic parenchyma", None)])
    result = convert(seg, study)
    assert result.sop_class_uid == "1.2.840.10008.5.1.4.1.1.66.7"
    assert (result.sop_instance_uid, result.series_uid, result.study_uid) == (
        seg.SOPInstanceUID, seg.SeriesInstanceUID, study.study_uid)
    series_uid = ct[0].SeriesInstanceUID
    assert normalised(result.findings, study) == normalised(
        expected_masks(pixels, series_uid, [(1, "liver"), (2, "spleen")]), study)
    liver = normalised(result.findings, study)[0]
    assert liver["mask"]["voxels"] == int((pixels == 1).sum()) and liver["mask"]["slices"] == [1, 2]


def test_a_label_map_without_source_references_is_placed_by_image_position(ct, study):
    pixels = label_map()
    ds = reread(segmentation(ct, pixels[::-1].copy()[::-1], [("liver", None), ("SPLEEN", None)]))
    for frame in ds.PerFrameFunctionalGroupsSequence:
        del frame.DerivationImageSequence
    assert referenced_instance_uids(ds) == [d.SOPInstanceUID for d in ct]  # from ReferencedSeriesSequence only
    result = findings_from_object(ds, labels=LABELS, study=study, task_series_uid=None)
    assert normalised(result.findings, study) == normalised(
        expected_masks(pixels, ct[0].SeriesInstanceUID, [(1, "liver"), (2, "spleen")]), study)


def test_a_frame_whose_position_is_on_no_slice_is_refused(ct, study):
    ds = reread(segmentation(ct, label_map(), [("liver", None), ("spleen", None)]))
    for frame in ds.PerFrameFunctionalGroupsSequence:
        del frame.DerivationImageSequence
    ds.PerFrameFunctionalGroupsSequence[2].PlanePositionSequence[0].ImagePositionPatient[2] += 0.9
    with pytest.raises(ObjectRefused) as raised:
        findings_from_object(ds, labels=LABELS, study=study, task_series_uid=None)
    assert (raised.value.status, raised.value.code) == (422, "unplaced_frame")
    assert "frame 3" in raised.value.message


def test_a_segment_carrying_the_schema_code_maps_by_code_whatever_its_label(ct, study):
    pixels = label_map()
    code = hd.sr.CodedConcept("RID-liver", "RADLEX", "Liver")
    seg = segmentation(ct, pixels, [("Segment 1", code), ("spleen", None)], omit_empty_frames=True)
    result = convert(seg, study)
    assert [f["label"] for f in result.findings] == ["liver", "spleen"]


def test_a_binary_segmentation_becomes_the_same_masks(ct, study):
    pixels = label_map()
    stacked = np.stack([pixels == 1, pixels == 2], axis=-1).astype(np.uint8)
    seg = segmentation(ct, stacked, [("liver", None), ("spleen", None)], kind="BINARY",
                       syntax=pydicom.uid.ExplicitVRLittleEndian)
    assert seg.SOPClassUID == "1.2.840.10008.5.1.4.1.1.66.4" and seg.BitsAllocated == 1
    assert normalised(convert(seg, study).findings, study) == normalised(
        expected_masks(pixels, ct[0].SeriesInstanceUID, [(1, "liver"), (2, "spleen")]), study)


def test_a_segment_for_a_volume_measurement_gives_the_volume(ct, study):
    pixels = label_map()
    seg = segmentation(ct, (pixels == 1).astype(np.uint8), [("Volume", None)])
    finding = normalised(convert(seg, study).findings, study)[0]
    assert finding["kind"] == "measurement" and finding["computed"]
    assert finding["value"] == pytest.approx(int((pixels == 1).sum()) * 0.5 * 0.8 * 2.0 / 1000)


def test_an_empty_segment_gives_no_finding_and_says_so(ct, study):
    pixels = label_map()
    pixels[pixels == 2] = 0
    result = convert(segmentation(ct, pixels, [("liver", None), ("spleen", None)]), study)
    assert [f["label"] for f in result.findings] == ["liver"]
    assert result.notes == ["segment 2 (spleen) is empty and gives no finding"]


def test_a_fractional_segmentation_is_refused_with_its_reason(ct, study):
    probabilities = (label_map() == 1).astype(np.float32) * 0.7
    seg = segmentation(ct, probabilities, [("liver", None)], kind="FRACTIONAL",
                       syntax=pydicom.uid.ExplicitVRLittleEndian)
    refused = refusal(seg, study)
    assert (refused.status, refused.code) == (422, "fractional_segmentation")
    assert "fractional" in refused.message


def test_an_unknown_segment_label_is_refused_listing_the_labels_allowed(ct, study):
    seg = segmentation(ct, label_map(), [("liver", None), ("Kidney", None)])
    refused = refusal(seg, study)
    assert (refused.status, refused.code) == (422, "unknown_label")
    assert refused.details["allowed_labels"] == {"mask": ["liver", "spleen"], "measurement": ["density", "volume"]}
    assert refused.details["unmatched"][0]["segment_number"] == 2
    assert "'Kidney'" in refused.message and "mask: liver, spleen" in refused.message


def test_a_segment_naming_a_box_label_is_refused(ct, study):
    refused = refusal(segmentation(ct, label_map(), [("liver", None), ("nodule", None)]), study)
    assert (refused.status, refused.code) == (422, "label_kind_mismatch")
    assert refused.details["mismatched"][0] == {"segment_number": 2, "label": "nodule", "label_kind": "bbox"}


def test_a_segmentation_of_another_series_is_refused_naming_the_reference(ct, study):
    other = make_ct_series(n_slices=SLICES, rows=ROWS, cols=COLS, study_uid=ct[0].StudyInstanceUID, seed=4)
    seg = segmentation(other, label_map(), [("liver", None), ("spleen", None)])
    first = referenced_instance_uids(reread(seg))[0]
    assert first in {ds.SOPInstanceUID for ds in other}
    refused = refusal(seg, study)
    assert (refused.status, refused.code, refused.details) == (400, "reference_outside_read", {"reference": first})
    assert first in refused.message
    refused = refusal(seg, geometry_of([*ct, *other]), task_series_uid=ct[0].SeriesInstanceUID)
    assert (refused.status, refused.details) == (400, {"reference": first})


def test_an_object_of_another_study_or_sop_class_is_refused(ct, study):
    stranger = make_ct_series(n_slices=2, rows=ROWS, cols=COLS)
    refused = refusal(segmentation(stranger, label_map()[:2], [("liver", None), ("spleen", None)]), study)
    assert (refused.status, refused.code) == (400, "reference_outside_read")
    image = refusal(ct[0], study)
    assert (image.status, image.code) == (400, "unsupported_sop_class")


def test_a_malformed_segmentation_is_refused_without_quoting_it(ct, study):
    ds = reread(segmentation(ct, label_map(), [("liver", None), ("spleen", None)]))
    del ds.PerFrameFunctionalGroupsSequence[1]
    with pytest.raises(ObjectRefused) as raised:
        findings_from_object(ds, labels=LABELS, study=study, task_series_uid=None)
    assert (raised.value.status, raised.value.code) == (400, "malformed_object")
    ds = reread(segmentation(ct, label_map(), [("liver", None), ("spleen", None)]))
    ds.PixelData = ds.PixelData[: len(ds.PixelData) // 2]
    with pytest.raises(ObjectRefused) as raised:
        findings_from_object(ds, labels=LABELS, study=study, task_series_uid=None)
    assert (raised.value.status, raised.value.code) == (400, "malformed_object")
    assert "cannot be read" in raised.value.message


# Measurement reports


def source(ds):
    return hd.sr.SourceImageForRegion.from_source_image(ds)


def free_text(text):
    return hd.sr.CodedConcept(FREE_TEXT[1], FREE_TEXT[0], text)


def ohif_group(tool, text, measurements):
    """A TID 1501 group as OHIF's cornerstone adapters write it: the region under each NUM, the label as free text."""
    tracking = hd.sr.TrackingIdentifier(uid=hd.UID(), identifier=f"Cornerstone3DTools@^0.1.0:{tool}")
    return hd.sr.MeasurementsAndQualitativeEvaluations(tracking_identifier=tracking, finding_type=free_text(text),
                                                       measurements=measurements)


def num(name, value, unit, graphic_type, points, image):
    return hd.sr.Measurement(name=name, value=value, unit=hd.sr.CodedConcept(unit, "UCUM", unit),
                             referenced_coordinates=[hd.sr.CoordinatesForMeasurement(
                                 graphic_type=graphic_type, graphic_data=np.asarray(points, float),
                                 source_image=source(image))])


def planar(text, graphic_type, points, image, finding=None):
    """A group as highdicom (and radqueue's own export) writes it: the image region at the group's level."""
    region = hd.sr.ImageRegion(graphic_type=graphic_type, graphic_data=np.asarray(points, float),
                               source_image=source(image))
    return hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(), identifier=text), referenced_region=region,
        finding_type=finding)


def report(groups, evidence):
    observer = hd.sr.ObserverContext(
        observer_type=codes.DCM.Person,
        observer_identifying_attributes=hd.sr.PersonObserverIdentifyingAttributes(name="Reader^One"))
    content = hd.sr.MeasurementReport(observation_context=hd.sr.ObservationContext(observer_person_context=observer),
                                      procedure_reported=codes.LN.CTUnspecifiedBodyRegion, imaging_measurements=groups)
    return hd.sr.Comprehensive3DSR(evidence=evidence, content=content, series_instance_uid=hd.UID(), series_number=400,
                                   sop_instance_uid=hd.UID(), instance_number=1, manufacturer="OHIF")


G = hd.sr.GraphicTypeValues
LINE = [[4.5, 6.0], [20.25, 18.0]]
ELLIPSE = [[10.0, 16.0], [30.0, 16.0], [20.0, 11.0], [20.0, 21.0]]  # major axis ends, then minor axis ends
RECTANGLE = [[5.0, 4.0], [15.0, 4.0], [15.0, 12.0], [5.0, 12.0], [5.0, 4.0]]
FREEHAND = [[22.0, 3.0], [33.0, 5.0], [35.5, 14.0], [25.0, 12.5], [22.0, 3.0]]


def ellipse_points(cx, cy, a, b):
    t = np.linspace(0, 2 * math.pi, ELLIPSE_VERTICES, endpoint=False)
    return [[cx + a * math.cos(s), cy + b * math.sin(s)] for s in t]


def every_tool(ct):
    """OHIF's length, bidirectional, ellipse, circle, rectangle, probe, arrow and freehand, with their JSON twin."""
    a, b, c = ct[1], ct[3], ct[4]
    groups = [
        ohif_group("Length", "Diameter", [num(codes.SCT.Length, 24.1, "mm", G.POLYLINE, LINE, a)]),
        ohif_group("Bidirectional", "diameter", [
            num(codes.SCT.LongAxis, 12.0, "mm", G.POLYLINE, [[10, 10], [30, 10]], b),
            num(codes.SCT.ShortAxis, 6.0, "mm", G.POLYLINE, [[20, 6], [20, 14]], b)]),
        ohif_group("EllipticalROI", "Area", [num(codes.SCT.Area, 31.4, "mm2", G.ELLIPSE, ELLIPSE, c)]),
        ohif_group("CircleROI", "nodule", [num(codes.SCT.Area, 12.0, "mm2", G.CIRCLE, [[8, 20], [8, 23]], a)]),
        ohif_group("RectangleROI", "NODULE", [num(codes.SCT.Area, 32.0, "mm2", G.POLYLINE, RECTANGLE, b)]),
        ohif_group("RectangleROI", "density", [num(codes.SCT.Area, 32.0, "mm2", G.POLYLINE, RECTANGLE, c)]),
        planar("Cornerstone3DTools@^0.1.0:Probe", G.POINT, [[12.5, 7.25]], a, finding=free_text("Carina")),
        planar("Cornerstone3DTools@^0.1.0:ArrowAnnotate", G.POINT, [[30.0, 20.0]], b, finding=free_text("carina")),
        ohif_group("PlanarFreehandROI", "outline", [num(codes.SCT.Area, 50.0, "mm2", G.POLYLINE, FREEHAND, c)]),
        planar("task 9 finding 3", G.POLYLINE, RECTANGLE, a,
               finding=hd.sr.CodedConcept("RID-outline", "RADLEX", "Outline")),  # radqueue's export, by code
    ]
    ref = {name: {"sop_instance_uid": ds.SOPInstanceUID} for name, ds in (("a", a), ("b", b), ("c", c))}
    expected = [
        {"label": "diameter", "line": ref["a"] | {"points": LINE}},
        {"label": "diameter", "line": ref["b"] | {"points": [[10, 10], [30, 10]]}},
        {"label": "area", "polygon": ref["c"] | {"points": ellipse_points(20, 16, 10, 5)}},
        {"label": "nodule", "bbox": ref["a"] | {"x0": 5, "y0": 17, "x1": 11, "y1": 23}},
        {"label": "nodule", "bbox": ref["b"] | {"x0": 5, "y0": 4, "x1": 15, "y1": 12}},
        {"label": "density", "polygon": ref["c"] | {"points": RECTANGLE[:4]}},
        {"label": "carina", "point": ref["a"] | {"x": 12.5, "y": 7.25}},
        {"label": "carina", "point": ref["b"] | {"x": 30.0, "y": 20.0}},
        {"label": "outline", "polygon": ref["c"] | {"points": FREEHAND[:4]}},
        {"label": "outline", "polygon": ref["a"] | {"points": RECTANGLE[:4]}},
    ]
    return report(groups, [a, b, c]), expected


def pixels_of(ct):
    by_uid = {ds.SOPInstanceUID: ds for ds in ct}
    return lambda uid, frame: pydicom.pixels.apply_modality_lut(by_uid[uid].pixel_array, by_uid[uid])


def test_an_ohif_measurement_report_becomes_the_findings_a_json_submit_gives(ct, study):
    sr, expected = every_tool(ct)
    result = convert(sr, study)
    assert result.sop_class_uid == "1.2.840.10008.5.1.4.1.1.88.34" and result.study_uid == study.study_uid
    read = pixels_of(ct)
    assert normalised(result.findings, study, pixel_reader=read) == normalised(expected, study, pixel_reader=read)
    assert result.notes == ["measurement group 2: the bidirectional's short axis is not kept; its long axis is the "
                            "finding's line"]


def test_measured_values_come_from_the_geometry(ct, study):
    sr, _ = every_tool(ct)
    findings = normalised(convert(sr, study).findings, study, pixel_reader=pixels_of(ct))
    assert findings[0]["value"] == pytest.approx(math.hypot((20.25 - 4.5) * 0.8, 12.0 * 0.5))
    assert findings[1]["value"] == pytest.approx(20 * 0.8)  # the long axis of the bidirectional
    ellipse_mm2 = math.pi * 10 * 5 * 0.5 * 0.8
    assert findings[2]["value"] == pytest.approx(ellipse_mm2, rel=0.002)
    assert findings[5]["unit"] == HU and findings[5]["computed"]


def test_the_arrow_keeps_its_tip(ct, study):
    ds = reread(report([planar("Cornerstone3DTools@^0.1.0:ArrowAnnotate", G.POINT, [[30.0, 20.0]], ct[2],
                               finding=free_text("carina"))], [ct[2]]))
    region = ds.ContentSequence[-1].ContentSequence[0].ContentSequence[-1]
    assert region.GraphicType == "POINT"
    region.GraphicData = [30.0, 20.0, 34.0, 24.0]  # OHIF writes the tip, then the tail
    findings = findings_from_object(ds, labels=LABELS, study=study, task_series_uid=None).findings
    assert findings == [{"label": "carina", "point": {"sop_instance_uid": ct[2].SOPInstanceUID, "x": 30.0,
                                                      "y": 20.0}}]


def test_the_newer_adapters_label_in_a_comment_and_their_text_box_position_is_no_region(ct, study):
    group = ohif_group("Length", "Finding", [num(codes.SCT.Length, 5.0, "mm", G.POLYLINE, LINE, ct[2])])
    items = group[0].ContentSequence
    del items[[n for n, item in enumerate(items) if item.ConceptNameCodeSequence[0].CodeValue == "121071"][0]]
    items.append(hd.sr.TextContentItem(name=hd.sr.CodedConcept("121106", "DCM", "Comment"), value="Diameter",
                                       relationship_type="CONTAINS"))
    text_box = hd.sr.ScoordContentItem(name=hd.sr.CodedConcept("TextPosition", "99CS3D", "Text Annotation Position"),
                                       graphic_type=G.POINT, graphic_data=np.array([[1.0, 2.0]]),
                                       relationship_type="CONTAINS")
    text_box.ContentSequence = [hd.sr.ImageContentItem(
        name=codes.DCM.SourceOfMeasurement, referenced_sop_class_uid=ct[2].SOPClassUID,
        referenced_sop_instance_uid=ct[2].SOPInstanceUID, relationship_type="SELECTED FROM")]
    items.insert(2, text_box)
    findings = convert(report([group], [ct[2]]), study).findings
    assert findings == [{"label": "diameter", "line": {"sop_instance_uid": ct[2].SOPInstanceUID, "points": LINE}}]


def test_3d_coordinates_are_placed_on_the_slice_that_holds_them(ct, study):
    frame_of_reference = ct[0].FrameOfReferenceUID
    k, origin = 3, np.asarray(ct[3].ImagePositionPatient, float)

    def patient(i, j):  # the centre of pixel (column i, row j) of slice k
        return list(origin + [i * 0.8, j * 0.5, 0.0])

    def stored(xyz):  # GraphicData is FL: the SR holds the point in single precision
        return [float(np.float32(v)) for v in xyz]

    groups = [hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(), identifier=name), finding_type=free_text(name),
        referenced_region=hd.sr.ImageRegion3D(graphic_type=kind, graphic_data=np.array(points, float),
                                              frame_of_reference_uid=frame_of_reference))
        for name, kind, points in (
            ("carina", hd.sr.GraphicTypeValues3D.POINT, [patient(5, 6)]),
            ("outline", hd.sr.GraphicTypeValues3D.POLYGON,
             [patient(2, 2), patient(10, 2), patient(10, 8), patient(2, 2)]))]
    result = convert(report(groups, [ct[k]]), study)
    series_uid = ct[0].SeriesInstanceUID
    assert normalised(result.findings, study) == normalised([
        {"label": "carina", "point_mm": {"series_uid": series_uid, "xyz": stored(patient(5, 6))}},
        {"label": "outline", "polygon": {"sop_instance_uid": ct[k].SOPInstanceUID,
                                         "points": [[2.5, 2.5], [10.5, 2.5], [10.5, 8.5]]}}], study)


def test_an_unknown_measurement_label_is_refused_listing_the_labels_allowed(ct, study):
    sr = report([ohif_group("Length", "Kidney", [num(codes.SCT.Length, 5.0, "mm", G.POLYLINE, LINE, ct[0])])],
                [ct[0]])
    refused = refusal(sr, study)
    assert (refused.status, refused.code) == (422, "unknown_label")
    assert refused.details["allowed_labels"] == {
        "bbox": ["nodule"], "landmark": ["carina"], "measurement": ["area", "density", "diameter"],
        "polygon": ["outline"]}
    assert refused.details["unmatched"][0]["measurement_group"] == 1
    assert "'Kidney'" in refused.message


def test_a_shape_the_label_cannot_hold_is_refused(ct, study):
    sr = report([ohif_group("Length", "outline", [num(codes.SCT.Length, 5.0, "mm", G.POLYLINE, LINE, ct[0])])],
                [ct[0]])
    refused = refusal(sr, study)
    assert (refused.status, refused.code) == (422, "label_kind_mismatch")
    assert refused.details["mismatched"][0]["shape"] == "a POLYLINE of 2 points"


def test_a_measurement_on_an_image_outside_the_study_is_refused(ct, study):
    stranger = make_ct_series(n_slices=1, rows=ROWS, cols=COLS, study_uid=ct[0].StudyInstanceUID, seed=9)[0]
    sr = report([ohif_group("Length", "diameter", [num(codes.SCT.Length, 5.0, "mm", G.POLYLINE, LINE, stranger)])],
                [stranger])
    refused = refusal(sr, study)
    assert (refused.status, refused.code, refused.details) == (400, "reference_outside_read",
                                                              {"reference": stranger.SOPInstanceUID})


def test_an_sr_of_another_template_is_refused(ct, study):
    ds = reread(report([planar("carina", G.POINT, [[1.0, 1.0]], ct[0], finding=free_text("carina"))], [ct[0]]))
    ds.ContentTemplateSequence[0].TemplateIdentifier = "2000"
    ds.ConceptNameCodeSequence[0].CodeValue = "18748-4"
    ds.ConceptNameCodeSequence[0].CodingSchemeDesignator = "LN"
    with pytest.raises(ObjectRefused) as raised:
        findings_from_object(ds, labels=LABELS, study=study, task_series_uid=None)
    assert (raised.value.status, raised.value.code) == (422, "unsupported_template")


def test_referenced_instances_list_each_image_once(ct):
    sr, _ = every_tool(ct)
    assert referenced_instance_uids(reread(sr)) == [ct[1].SOPInstanceUID, ct[3].SOPInstanceUID,
                                                    ct[4].SOPInstanceUID]
    seg = reread(segmentation(ct, label_map(), [("liver", None), ("spleen", None)], omit_empty_frames=True))
    sources = [f.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
               for f in seg.PerFrameFunctionalGroupsSequence]
    uids = referenced_instance_uids(seg)
    assert uids[:3] == sources and sorted(uids) == sorted(ds.SOPInstanceUID for ds in ct)
    stranger = make_ct_series(n_slices=1, rows=ROWS, cols=COLS, study_uid=ct[0].StudyInstanceUID, seed=5)[0]
    item = pydicom.Dataset()
    item.ReferencedSOPClassUID, item.ReferencedSOPInstanceUID = stranger.SOPClassUID, stranger.SOPInstanceUID
    seg.SourceImageSequence = [item]  # where cornerstone's label map export lists its sources as well
    assert stranger.SOPInstanceUID in referenced_instance_uids(seg)
