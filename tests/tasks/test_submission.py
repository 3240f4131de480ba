"""Findings validation and normalisation (tasks.findings): pure geometry, no database."""

import base64
import math
from unittest.mock import patch

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import array_shapes, arrays

from tasks.findings.geometry import InstanceGeom, LabelSpec, SeriesGeom, StudyGeom
from tasks.findings.masks import polygon_mask, rle_decode, rle_encode
from tasks.findings.validation import MAX_FINDINGS, PayloadError, summarise, validate_findings

HU = "[hnsf'U]"


def label(key, kind, categories=(), unit=""):
    return LabelSpec(key=key, kind=kind, categories=tuple(categories), unit=unit, coding_scheme="RADLEX",
                     code_value=f"RID-{key}", code_meaning=key.title())


LABELS = {spec.key: spec for spec in [
    label("birads", "classification", ["1", "2", "3", "4A", "4B", "4C", "5"]),
    label("kl-grade", "ordinal", ["0", "1", "2", "3", "4"]),
    label("nodule", "bbox"),
    label("outline", "polygon"),
    label("liver", "mask"),
    label("carina", "landmark"),
    label("diameter", "measurement", unit="mm"),
    label("area", "measurement", unit="mm2"),
    label("volume", "measurement", unit="ml"),
    label("volume-mm3", "measurement", unit="mm3"),
    label("density", "measurement", unit=HU),
    label("score", "measurement", unit="%"),
]}


def stack(uid, *, slices, rows, columns, spacing=(0.5, 0.5), slice_spacing=2.0, origin=(-100.0, -120.0, 50.0),
          orientation=(1.0, 0.0, 0.0, 0.0, 1.0, 0.0)):
    """A series of single-frame instances stepping along the normal of ``orientation``."""
    normal = np.cross(orientation[:3], orientation[3:])
    instances = tuple(InstanceGeom(
        sop_instance_uid=f"{uid}.{k}", series_uid=uid, rows=rows, columns=columns, frames=1, pixel_spacing=spacing,
        position=tuple(float(v) for v in np.asarray(origin) + normal * slice_spacing * k),
        orientation=tuple(orientation), instance_number=k + 1) for k in range(slices))
    return SeriesGeom(series_uid=uid, instances=instances, slice_spacing=slice_spacing)


def single(uid, *, rows, columns, spacing, frames=1):
    instance = InstanceGeom(sop_instance_uid=f"{uid}.0", series_uid=uid, rows=rows, columns=columns, frames=frames,
                            pixel_spacing=spacing, position=None, orientation=None, instance_number=1)
    return SeriesGeom(series_uid=uid, instances=(instance,), slice_spacing=None)


CT = stack("CT", slices=10, rows=40, columns=32)  # spacing (0.5, 0.5), 2.0 mm slices
STUDY = StudyGeom(study_uid="1.2.3", series={
    "CT": CT,
    "XR": single("XR", rows=400, columns=512, spacing=(0.7, 0.7)),
    "MF": single("MF", rows=64, columns=64, spacing=(0.5, 0.4), frames=3),
    "SC": single("SC", rows=100, columns=100, spacing=None),
})
CONCEPT = {"scheme": "RADLEX", "code": "RID-liver", "meaning": "Liver"}


def validate(findings, **kwargs):
    return validate_findings(findings, labels=LABELS, study=kwargs.pop("study", STUDY), **kwargs)


def one(finding, **kwargs):
    return validate([finding], **kwargs)[0]


def errors_of(findings, **kwargs):
    with pytest.raises(PayloadError) as raised:
        validate(findings, **kwargs)
    return raised.value.errors


def packbits(mask):
    return base64.b64encode(np.packbits(np.asarray(mask, dtype=bool).ravel())).decode()


def ct_mask(*voxels):
    mask = np.zeros((10, 40, 32), dtype=bool)
    for k, j, i in voxels:
        mask[k, j, i] = True
    return mask


# Valid findings of every kind


def test_classification_normalises_with_its_concept():
    assert one({"label": "birads", "value": "4A"}) == {
        "label": "birads", "kind": "classification", "value": "4A",
        "concept": {"scheme": "RADLEX", "code": "RID-birads", "meaning": "Birads"}}


def test_ordinal_scoped_to_a_series():
    finding = one({"label": "kl-grade", "value": "3", "series_uid": "XR"})
    assert (finding["kind"], finding["value"], finding["series_uid"]) == ("ordinal", "3", "XR")


def test_classification_scoped_to_an_instance_names_its_series():
    finding = one({"label": "birads", "value": "2", "sop_instance_uid": "CT.4"})
    assert (finding["sop_instance_uid"], finding["series_uid"]) == ("CT.4", "CT")


def test_bbox_normalises_to_float_pixel_coordinates_with_its_slice():
    finding = one({"label": "nodule", "bbox": {"sop_instance_uid": "CT.3", "frame": 1,
                                               "x0": 1, "y0": 2, "x1": 32, "y1": 40}})
    assert finding["bbox"] == {"sop_instance_uid": "CT.3", "series_uid": "CT", "slice": 3, "frame": 1,
                               "x0": 1.0, "y0": 2.0, "x1": 32.0, "y1": 40.0}
    assert all(type(finding["bbox"][key]) is float for key in ("x0", "y0", "x1", "y1"))


def test_bbox_frame_defaults_to_one_and_reaches_the_last_frame():
    assert one({"label": "nodule", "bbox": {"sop_instance_uid": "MF.0", "x0": 0, "y0": 0, "x1": 5, "y1": 5}}
               )["bbox"]["frame"] == 1
    assert one({"label": "nodule", "bbox": {"sop_instance_uid": "MF.0", "frame": 3, "x0": 0, "y0": 0, "x1": 5,
                                            "y1": 5}})["bbox"]["frame"] == 3


def test_bbox3d_in_voxels_normalises_to_ints():
    finding = one({"label": "nodule", "bbox3d": {"series_uid": "CT", "min": [0, 1.0, 2], "max": [32, 40, 10]}})
    assert finding["bbox3d"] == {"series_uid": "CT", "min": [0, 1, 2], "max": [32, 40, 10]}
    assert all(type(v) is int for v in finding["bbox3d"]["min"] + finding["bbox3d"]["max"])


def test_patient_mm_box_converts_to_the_voxel_box_on_an_axial_series():
    # Origin (-100, -120, 50), spacing 0.5 x 0.5 x 2.0: x -95..-90 is columns 10..20, y -115..-110 rows 10..20,
    # z 54..60 slices 2..5; the box holds the voxels whose centres lie inside it.
    finding = one({"label": "nodule", "bbox3d": {"series_uid": "CT", "min_mm": [-95, -115, 54],
                                                 "max_mm": [-90, -110, 60]}})
    assert finding["bbox3d"]["min"] == [10, 10, 2]
    assert finding["bbox3d"]["max"] == [21, 21, 6]
    assert finding["bbox3d"]["min_mm"] == [-95.0, -115.0, 54.0]


def test_patient_mm_box_within_half_a_voxel_of_the_edge_is_clamped_to_the_volume():
    finding = one({"label": "nodule", "bbox3d": {"series_uid": "CT", "min_mm": [-100.25, -120.25, 49.0],
                                                 "max_mm": [-84.25, -100.25, 69.0]}})
    assert finding["bbox3d"]["min"] == [0, 0, 0]
    assert finding["bbox3d"]["max"] == [32, 40, 10]


def test_flat_patient_mm_box_keeps_the_nearest_slice():
    finding = one({"label": "nodule", "bbox3d": {"series_uid": "CT", "min_mm": [-95, -115, 55.1],
                                                 "max_mm": [-90, -110, 55.1]}})
    assert (finding["bbox3d"]["min"][2], finding["bbox3d"]["max"][2]) == (3, 4)


def rotation(a, b, c):
    ca, sa, cb, sb, cc, sc = math.cos(a), math.sin(a), math.cos(b), math.sin(b), math.cos(c), math.sin(c)
    rz = np.array([[ca, -sa, 0], [sa, ca, 0], [0, 0, 1]])
    ry = np.array([[cb, 0, sb], [0, 1, 0], [-sb, 0, cb]])
    rx = np.array([[1, 0, 0], [0, cc, -sc], [0, sc, cc]])
    return rz @ ry @ rx


def oblique_study(angles):
    r = rotation(*angles)
    orientation = tuple(float(v) for v in (*r[:, 0], *r[:, 1]))
    series = stack("OB", slices=12, rows=30, columns=20, spacing=(0.6, 0.8), slice_spacing=1.5,
                   origin=(10.0, -20.0, 30.0), orientation=orientation)
    return StudyGeom(study_uid="9.9", series={"OB": series}), r


def patient_mm(r, ijk):
    """DICOM PS3.3 C.7.6.2.1.1 written out: column i along the row cosines by the column spacing (0.8)."""
    i, j, k = ijk
    return np.array([10.0, -20.0, 30.0]) + r[:, 0] * 0.8 * i + r[:, 1] * 0.6 * j + r[:, 2] * 1.5 * k


@pytest.mark.parametrize("angles", [(0.0, 0.0, 0.0), (0.5, 0.0, 0.0), (0.3, -0.4, 0.2), (0.0, math.pi / 2, 0.0)])
@pytest.mark.parametrize("ijk", [(0, 0, 0), (19, 29, 11), (7.5, 3.25, 4)])
def test_oblique_patient_point_maps_back_to_its_voxel(angles, ijk):
    study, r = oblique_study(angles)
    finding = one({"label": "carina", "point_mm": {"series_uid": "OB", "xyz": patient_mm(r, ijk).tolist()}},
                  study=study)
    assert finding["point_mm"]["voxel"] == pytest.approx(list(ijk), abs=1e-6)
    assert finding["point_mm"]["slice"] == round(ijk[2])
    assert finding["point_mm"]["sop_instance_uid"] == f"OB.{round(ijk[2])}"


def test_oblique_patient_box_encloses_the_voxels_it_was_drawn_around():
    study, r = oblique_study((0.3, -0.4, 0.2))
    corners = np.array([patient_mm(r, (i, j, k)) for i in (3, 5) for j in (4, 7) for k in (2, 4)])
    finding = one({"label": "nodule", "bbox3d": {"series_uid": "OB", "min_mm": corners.min(axis=0).tolist(),
                                                 "max_mm": corners.max(axis=0).tolist()}}, study=study)
    low, high = finding["bbox3d"]["min"], finding["bbox3d"]["max"]
    assert all(lo <= want for lo, want in zip(low, (3, 4, 2), strict=True))
    assert all(hi >= want for hi, want in zip(high, (6, 8, 5), strict=True))
    assert all(hi <= dim for hi, dim in zip(high, (20, 30, 12), strict=True))


def test_polygon_normalises():
    finding = one({"label": "outline", "polygon": {"sop_instance_uid": "XR.0", "frame": 1,
                                                   "points": [[0, 0], [512, 0], [10.5, 400]]}})
    assert finding["polygon"] == {"sop_instance_uid": "XR.0", "series_uid": "XR", "slice": 0, "frame": 1,
                                  "points": [[0.0, 0.0], [512.0, 0.0], [10.5, 400.0]]}


def test_mask_normalises_to_canonical_rle_with_voxels_and_volume():
    mask = ct_mask((1, 2, 3), (1, 2, 4), (7, 39, 31))
    finding = one({"label": "liver", "mask": {"series_uid": "CT", "shape": [10, 40, 32], "rle": rle_encode(mask)}})
    assert finding == {"label": "liver", "kind": "mask", "concept": CONCEPT, "mask": {
        "series_uid": "CT", "shape": [10, 40, 32], "rle": rle_encode(mask), "voxels": 3,
        "volume_ml": pytest.approx(3 * 0.5 * 0.5 * 2.0 / 1000), "slices": [1, 7]}}


def test_mask_volume_is_null_without_slice_spacing():
    finding = one({"label": "liver", "mask": {"series_uid": "XR", "shape": [1, 400, 512], "rle": [5, 10, 204785]}})
    assert (finding["mask"]["voxels"], finding["mask"]["volume_ml"]) == (10, None)


def test_landmark_on_an_image():
    finding = one({"label": "carina", "point": {"sop_instance_uid": "MF.0", "frame": 2, "x": 64, "y": 0.5}})
    assert finding["point"] == {"sop_instance_uid": "MF.0", "series_uid": "MF", "slice": 0, "frame": 2,
                                "x": 64.0, "y": 0.5}


def test_landmark_in_patient_space_on_an_axial_series():
    finding = one({"label": "carina", "point_mm": {"series_uid": "CT", "xyz": [-99, -110, 56]}})
    assert finding["point_mm"] == {"series_uid": "CT", "xyz": [-99.0, -110.0, 56.0], "voxel": [2.0, 20.0, 3.0],
                                   "slice": 3, "sop_instance_uid": "CT.3"}


# Measurements


def test_length_comes_from_pixel_spacing():
    finding = one({"label": "diameter", "line": {"sop_instance_uid": "XR.0", "frame": 1,
                                                 "points": [[10, 20], [13, 24]]}})
    assert finding["value"] == pytest.approx(3.5)  # a 3-4-5 triangle at 0.7 mm
    assert (finding["unit"], finding["computed"]) == ("mm", True)
    assert finding["line"]["points"] == [[10.0, 20.0], [13.0, 24.0]]


def test_length_uses_row_spacing_along_y_and_column_spacing_along_x():
    # MF has PixelSpacing (row 0.5, column 0.4).
    across = one({"label": "diameter", "line": {"sop_instance_uid": "MF.0", "points": [[0, 0], [10, 0]]}})
    down = one({"label": "diameter", "line": {"sop_instance_uid": "MF.0", "points": [[0, 0], [0, 10]]}})
    assert (across["value"], down["value"]) == (pytest.approx(4.0), pytest.approx(5.0))


@pytest.mark.parametrize("sent", [3.5, 3.9, 3.1, 3.52])
def test_length_accepts_a_client_value_within_tolerance(sent):
    finding = one({"label": "diameter", "value": sent, "unit": "mm",
                   "line": {"sop_instance_uid": "XR.0", "points": [[10, 20], [13, 24]]}})
    assert finding["value"] == pytest.approx(3.5)


def test_length_tolerance_is_one_percent_when_that_is_wider():
    points = [[0, 0], [300, 400]]  # 500 px x 0.7 = 350 mm; 1 % is 3.5 mm
    assert one({"label": "diameter", "value": 353, "line": {"sop_instance_uid": "XR.0", "points": points}})
    errors = errors_of([{"label": "diameter", "value": 354, "line": {"sop_instance_uid": "XR.0", "points": points}}])
    assert list(errors) == ["findings[0].value"]


def test_area_is_the_shoelace_area_times_the_spacing():
    finding = one({"label": "area", "polygon": {"sop_instance_uid": "MF.0",
                                                "points": [[0, 0], [10, 0], [10, 20], [0, 20]]}})
    assert finding["value"] == pytest.approx(200 * 0.5 * 0.4)
    assert (finding["unit"], finding["computed"]) == ("mm2", True)


@pytest.mark.parametrize("key,unit,expected", [("volume", "ml", 4 * 0.5 / 1000), ("volume-mm3", "mm3", 4 * 0.5)])
def test_volume_counts_voxels_times_the_voxel_volume(key, unit, expected):
    mask = ct_mask((0, 0, 0), (0, 0, 1), (5, 10, 10), (9, 39, 31))
    finding = one({"label": key, "mask": {"series_uid": "CT", "shape": [10, 40, 32], "rle": rle_encode(mask)}})
    assert (finding["value"], finding["unit"], finding["computed"]) == (pytest.approx(expected), unit, True)
    assert finding["mask"]["voxels"] == 4


def pixel_values(sop_uid, frame):
    """Rescaled values where pixel (row r, column c) of slice k is 1000 k + 100 r + c."""
    k = int(sop_uid.rsplit(".", 1)[1])
    rows, columns = np.mgrid[0:40, 0:32]
    return 1000.0 * k + 100.0 * rows + columns


def test_mean_hu_over_a_polygon_uses_the_pixels_whose_centres_are_inside():
    # Columns 8..15 and rows 10..19 of slice 2: mean column 11.5, mean row 14.5.
    finding = one({"label": "density", "polygon": {"sop_instance_uid": "CT.2",
                                                   "points": [[8, 10], [16, 10], [16, 20], [8, 20]]}},
                  pixel_reader=pixel_values)
    assert finding["value"] == pytest.approx(2000 + 1450 + 11.5)
    assert (finding["unit"], finding["computed"]) == (HU, True)


def test_mean_hu_over_a_mask_reads_every_slice_it_touches():
    mask = ct_mask((1, 2, 3), (1, 2, 4), (4, 0, 0))
    volume = np.stack([pixel_values(f"CT.{k}", 1) for k in range(10)])
    read = []

    def reader(sop_uid, frame):
        read.append((sop_uid, frame))
        return pixel_values(sop_uid, frame)

    finding = one({"label": "density", "mask": {"series_uid": "CT", "shape": [10, 40, 32],
                                                "encoding": "packbits-base64", "data": packbits(mask)}},
                  pixel_reader=reader)
    assert finding["value"] == pytest.approx(volume[mask].mean())
    assert sorted(read) == [("CT.1", 1), ("CT.4", 1)]


def test_mean_hu_without_pixels_takes_the_client_value():
    finding = one({"label": "density", "value": 42.5,
                   "polygon": {"sop_instance_uid": "CT.2", "points": [[8, 10], [16, 10], [16, 20]]}})
    assert (finding["value"], finding["computed"]) == (42.5, False)
    assert finding["polygon"]["sop_instance_uid"] == "CT.2"


@pytest.mark.parametrize("key,value", [("diameter", 12.3), ("volume", 4), ("score", 87.5), ("density", -30)])
def test_bare_measurement_is_not_computed(key, value):
    finding = one({"label": key, "value": value})
    assert (finding["value"], finding["computed"], finding["unit"]) == (float(value), False, LABELS[key].unit)
    assert type(finding["value"]) is float


# Bad payloads: every one names the exact field

LINE = {"sop_instance_uid": "XR.0", "points": [[10, 20], [13, 24]]}
SQUARE = {"sop_instance_uid": "CT.2", "points": [[8, 10], [16, 10], [16, 20], [8, 20]]}
CT_MASK = {"series_uid": "CT", "shape": [10, 40, 32], "rle": [0, 1, 12799]}

BAD = {
    "finding not an object": ("birads", "findings[0]", "expected an object"),
    "no label": ({"value": "4A"}, "findings[0].label", "required"),
    "unknown label": ({"label": "bi-rads", "value": "4A"}, "findings[0].label", "unknown label"),
    "label not a string": ({"label": 3, "value": "4A"}, "findings[0].label", "unknown label"),
    "extra top-level key": ({"label": "birads", "value": "4A", "colour": "red"}, "findings[0].colour", "unknown"),
    "category not allowed": ({"label": "birads", "value": "6"}, "findings[0].value", "one of: 1, 2, 3, 4A"),
    "category not a string": ({"label": "kl-grade", "value": 3}, "findings[0].value", "not a category"),
    "category missing": ({"label": "birads"}, "findings[0].value", "required"),
    "scope instance elsewhere": ({"label": "birads", "value": "2", "sop_instance_uid": "9.9.9"},
                                 "findings[0].sop_instance_uid", "not an instance of study 1.2.3"),
    "scope series elsewhere": ({"label": "birads", "value": "2", "series_uid": "9.9"}, "findings[0].series_uid",
                               "not a series"),
    "scope series disagrees": ({"label": "birads", "value": "2", "sop_instance_uid": "CT.1", "series_uid": "XR"},
                               "findings[0].series_uid", "belongs to series CT"),
    "bbox missing": ({"label": "nodule"}, "findings[0].bbox", "required"),
    "bbox and bbox3d": ({"label": "nodule", "bbox": {}, "bbox3d": {}}, "findings[0].bbox3d", "not both"),
    "bbox not an object": ({"label": "nodule", "bbox": [1, 2, 3, 4]}, "findings[0].bbox", "expected an object"),
    "bbox x1 past columns": ({"label": "nodule", "bbox": {"sop_instance_uid": "CT.1", "x0": 0, "y0": 0, "x1": 33,
                                                          "y1": 5}}, "findings[0].bbox.x1", "0..32"),
    "bbox y1 past rows": ({"label": "nodule", "bbox": {"sop_instance_uid": "CT.1", "x0": 0, "y0": 0, "x1": 3,
                                                       "y1": 40.5}}, "findings[0].bbox.y1", "0..40"),
    "bbox y0 negative": ({"label": "nodule", "bbox": {"sop_instance_uid": "CT.1", "x0": 0, "y0": -1, "x1": 3,
                                                      "y1": 5}}, "findings[0].bbox.y0", "outside the image"),
    "bbox x0 not below x1": ({"label": "nodule", "bbox": {"sop_instance_uid": "CT.1", "x0": 5, "y0": 0, "x1": 5,
                                                          "y1": 5}}, "findings[0].bbox.x1", "greater than x0"),
    "bbox field missing": ({"label": "nodule", "bbox": {"sop_instance_uid": "CT.1", "x0": 0, "y0": 0, "x1": 5}},
                           "findings[0].bbox.y1", "required"),
    "bbox unknown field": ({"label": "nodule", "bbox": {"sop_instance_uid": "CT.1", "x0": 0, "y0": 0, "x1": 5,
                                                        "y1": 5, "z": 1}}, "findings[0].bbox.z", "unknown field"),
    "bbox NaN": ({"label": "nodule", "bbox": {"sop_instance_uid": "CT.1", "x0": float("nan"), "y0": 0, "x1": 5,
                                              "y1": 5}}, "findings[0].bbox.x0", "finite"),
    "bbox infinity": ({"label": "nodule", "bbox": {"sop_instance_uid": "CT.1", "x0": 0, "y0": 0,
                                                   "x1": float("inf"), "y1": 5}}, "findings[0].bbox.x1", "finite"),
    "bbox boolean": ({"label": "nodule", "bbox": {"sop_instance_uid": "CT.1", "x0": 0, "y0": False, "x1": 5,
                                                  "y1": 5}}, "findings[0].bbox.y0", "not a boolean"),
    "bbox string number": ({"label": "nodule", "bbox": {"sop_instance_uid": "CT.1", "x0": "0", "y0": 0, "x1": 5,
                                                        "y1": 5}}, "findings[0].bbox.x0", "expected a number"),
    "bbox instance elsewhere": ({"label": "nodule", "bbox": {"sop_instance_uid": "1.2.3.4", "x0": 0, "y0": 0,
                                                             "x1": 5, "y1": 5}},
                                "findings[0].bbox.sop_instance_uid", "not an instance"),
    "bbox frame 0": ({"label": "nodule", "bbox": {"sop_instance_uid": "MF.0", "frame": 0, "x0": 0, "y0": 0,
                                                  "x1": 5, "y1": 5}}, "findings[0].bbox.frame", "1..3"),
    "bbox frame past the last": ({"label": "nodule", "bbox": {"sop_instance_uid": "MF.0", "frame": 4, "x0": 0,
                                                              "y0": 0, "x1": 5, "y1": 5}},
                                 "findings[0].bbox.frame", "1..3"),
    "bbox frame fractional": ({"label": "nodule", "bbox": {"sop_instance_uid": "MF.0", "frame": 1.5, "x0": 0,
                                                           "y0": 0, "x1": 5, "y1": 5}},
                              "findings[0].bbox.frame", "not an integer"),
    "bbox3d max past slices": ({"label": "nodule", "bbox3d": {"series_uid": "CT", "min": [0, 0, 0],
                                                              "max": [5, 5, 11]}},
                               "findings[0].bbox3d.max[2]", "at most 10"),
    "bbox3d min past columns": ({"label": "nodule", "bbox3d": {"series_uid": "CT", "min": [32, 0, 0],
                                                               "max": [33, 5, 1]}},
                                "findings[0].bbox3d.min[0]", "0..31"),
    "bbox3d empty": ({"label": "nodule", "bbox3d": {"series_uid": "CT", "min": [4, 4, 4], "max": [5, 4, 5]}},
                     "findings[0].bbox3d.max[1]", "greater than min"),
    "bbox3d fractional index": ({"label": "nodule", "bbox3d": {"series_uid": "CT", "min": [0, 0.5, 0],
                                                               "max": [5, 5, 5]}},
                                "findings[0].bbox3d.min[1]", "not an integer"),
    "bbox3d two numbers": ({"label": "nodule", "bbox3d": {"series_uid": "CT", "min": [0, 0], "max": [5, 5, 5]}},
                           "findings[0].bbox3d.min", "three numbers"),
    "bbox3d max missing": ({"label": "nodule", "bbox3d": {"series_uid": "CT", "min": [0, 0, 0]}},
                           "findings[0].bbox3d.max", "required"),
    "bbox3d voxels and mm": ({"label": "nodule", "bbox3d": {"series_uid": "CT", "min": [0, 0, 0], "max": [1, 1, 1],
                                                            "min_mm": [0, 0, 0]}},
                             "findings[0].bbox3d.min_mm", "not both"),
    "bbox3d series elsewhere": ({"label": "nodule", "bbox3d": {"series_uid": "4.5", "min": [0, 0, 0],
                                                               "max": [1, 1, 1]}},
                                "findings[0].bbox3d.series_uid", "not a series"),
    "bbox3d mm past the last slice": ({"label": "nodule", "bbox3d": {"series_uid": "CT", "min_mm": [-95, -115, 54],
                                                                     "max_mm": [-90, -110, 70]}},
                                      "findings[0].bbox3d.max_mm", "outside the series volume"),
    "bbox3d mm before the first column": ({"label": "nodule", "bbox3d": {"series_uid": "CT",
                                                                         "min_mm": [-100.3, -115, 54],
                                                                         "max_mm": [-90, -110, 60]}},
                                          "findings[0].bbox3d.min_mm", "column"),
    "bbox3d mm reversed": ({"label": "nodule", "bbox3d": {"series_uid": "CT", "min_mm": [-95, -115, 60],
                                                          "max_mm": [-90, -110, 54]}},
                           "findings[0].bbox3d.max_mm[2]", "below min_mm[2]"),
    "bbox3d mm without geometry": ({"label": "nodule", "bbox3d": {"series_uid": "XR", "min_mm": [0, 0, 0],
                                                                  "max_mm": [1, 1, 1]}},
                                   "findings[0].bbox3d.min_mm", "ImagePositionPatient"),
    "polygon two points": ({"label": "outline", "polygon": {"sop_instance_uid": "CT.0", "points": [[0, 0], [1, 1]]}},
                           "findings[0].polygon.points", "expected 3 to 10000"),
    "polygon collinear": ({"label": "outline", "polygon": {"sop_instance_uid": "CT.0",
                                                           "points": [[0, 0], [1, 1], [2, 2], [3, 3]]}},
                          "findings[0].polygon.points", "collinear"),
    "polygon point outside": ({"label": "outline", "polygon": {"sop_instance_uid": "CT.0",
                                                               "points": [[0, 0], [33, 1], [2, 9]]}},
                              "findings[0].polygon.points[1]", "outside the image"),
    "polygon point not a pair": ({"label": "outline", "polygon": {"sop_instance_uid": "CT.0",
                                                                  "points": [[0, 0], [3, 1, 0], [2, 9]]}},
                                 "findings[0].polygon.points[1]", "[x, y]"),
    "polygon coordinate NaN": ({"label": "outline", "polygon": {"sop_instance_uid": "CT.0",
                                                                "points": [[0, 0], [3, float("nan")], [2, 9]]}},
                               "findings[0].polygon.points[1][1]", "finite"),
    "mask missing": ({"label": "liver"}, "findings[0].mask", "required"),
    "mask shape wrong": ({"label": "liver", "mask": {"series_uid": "CT", "shape": [10, 32, 40],
                                                     "rle": [0, 1, 12799]}},
                         "findings[0].mask.shape", "[10, 40, 32]"),
    "mask shape not positive": ({"label": "liver", "mask": {"series_uid": "CT", "shape": [0, 40, 32], "rle": [0]}},
                                "findings[0].mask.shape", "positive"),
    "mask runs short": ({"label": "liver", "mask": {"series_uid": "CT", "shape": [10, 40, 32], "rle": [0, 1, 100]}},
                        "findings[0].mask.rle", "cover 101 voxels; the shape has 12800"),
    "mask negative run": ({"label": "liver", "mask": {"series_uid": "CT", "shape": [10, 40, 32],
                                                      "rle": [2, -1, 12799]}},
                          "findings[0].mask.rle", "run 1 is -1"),
    "mask boolean run": ({"label": "liver", "mask": {"series_uid": "CT", "shape": [10, 40, 32],
                                                     "rle": [True, 12799]}},
                         "findings[0].mask.rle", "run 0 is True"),
    "mask empty": ({"label": "liver", "mask": {"series_uid": "CT", "shape": [10, 40, 32], "rle": [12800]}},
                   "findings[0].mask.rle", "empty"),
    "mask rle not a list": ({"label": "liver", "mask": {"series_uid": "CT", "shape": [10, 40, 32], "rle": "0,1"}},
                            "findings[0].mask.rle", "list of run lengths"),
    "mask packbits too short": ({"label": "liver", "mask": {"series_uid": "CT", "shape": [10, 40, 32],
                                                            "encoding": "packbits-base64",
                                                            "data": base64.b64encode(b"\x80" * 10).decode()}},
                                "findings[0].mask.data", "has 1600"),
    "mask packbits not base64": ({"label": "liver", "mask": {"series_uid": "CT", "shape": [10, 40, 32],
                                                             "encoding": "packbits-base64", "data": "@@@"}},
                                 "findings[0].mask.data", "base64"),
    "mask packbits without data": ({"label": "liver", "mask": {"series_uid": "CT", "shape": [10, 40, 32],
                                                               "encoding": "packbits-base64", "rle": [0, 1, 12799]}},
                                   "findings[0].mask.data", "required"),
    "mask unknown encoding": ({"label": "liver", "mask": {"series_uid": "CT", "shape": [10, 40, 32],
                                                          "encoding": "png", "data": ""}},
                              "findings[0].mask.encoding", "not supported"),
    "landmark x outside": ({"label": "carina", "point": {"sop_instance_uid": "XR.0", "x": 513, "y": 3}},
                           "findings[0].point.x", "0..512"),
    "landmark y missing": ({"label": "carina", "point": {"sop_instance_uid": "XR.0", "x": 5}},
                           "findings[0].point.y", "required"),
    "landmark mm outside": ({"label": "carina", "point_mm": {"series_uid": "CT", "xyz": [-99, -110, 80]}},
                            "findings[0].point_mm.xyz", "slice 15.00"),
    "landmark both": ({"label": "carina", "point": {}, "point_mm": {}}, "findings[0].point_mm", "not both"),
    "length without spacing": ({"label": "diameter", "line": {"sop_instance_uid": "SC.0",
                                                              "points": [[0, 0], [3, 4]]}},
                               "findings[0].line", "the image has no PixelSpacing; length cannot be computed"),
    "length disagrees": ({"label": "diameter", "value": 4.1, "line": LINE}, "findings[0].value", "3.5 mm"),
    "length three points": ({"label": "diameter", "line": {"sop_instance_uid": "XR.0",
                                                           "points": [[0, 0], [3, 4], [5, 5]]}},
                            "findings[0].line.points", "exactly 2"),
    "length coincident points": ({"label": "diameter", "line": {"sop_instance_uid": "XR.0",
                                                                "points": [[3, 4], [3, 4]]}},
                                 "findings[0].line.points", "coincide"),
    "length with a polygon": ({"label": "diameter", "polygon": SQUARE}, "findings[0].polygon", "takes line"),
    "unit mismatch": ({"label": "diameter", "value": 3.5, "unit": "cm", "line": LINE}, "findings[0].unit", "'mm'"),
    "bare value missing": ({"label": "diameter"}, "findings[0].value", "required"),
    "bare value boolean": ({"label": "score", "value": True}, "findings[0].value", "not a boolean"),
    "bare value NaN": ({"label": "score", "value": float("nan")}, "findings[0].value", "finite"),
    "bare value infinite": ({"label": "score", "value": float("-inf")}, "findings[0].value", "finite"),
    "bare value string": ({"label": "score", "value": "12"}, "findings[0].value", "expected a number"),
    "area without spacing": ({"label": "area", "polygon": {"sop_instance_uid": "SC.0",
                                                           "points": [[0, 0], [3, 0], [3, 4]]}},
                             "findings[0].polygon", "area cannot be computed"),
    "volume without slice spacing": ({"label": "volume", "mask": {"series_uid": "XR", "shape": [1, 400, 512],
                                                                  "rle": [0, 1, 204799]}},
                                     "findings[0].mask", "volume cannot be computed"),
    "volume disagrees": ({"label": "volume", "value": 1.0, "mask": CT_MASK}, "findings[0].value", "tolerance"),
    "mean without pixels or value": ({"label": "density", "polygon": SQUARE}, "findings[0].value",
                                     "pixel data is not available"),
    "mean with two geometries": ({"label": "density", "value": 3, "polygon": SQUARE, "mask": CT_MASK},
                                 "findings[0].mask", "one geometry"),
}


@pytest.mark.parametrize("finding,path,message", list(BAD.values()), ids=list(BAD))
def test_bad_finding_names_the_field(finding, path, message):
    errors = errors_of([finding])
    assert path in errors, errors
    assert any(message in text for text in errors[path]), errors[path]


@pytest.mark.parametrize("finding,path", [
    ({"label": "nodule", "bbox": {"sop_instance_uid": "XR.0", "x0": 0, "y0": 0, "x1": 5, "y1": 5}},
     "findings[0].bbox.sop_instance_uid"),
    ({"label": "liver", "mask": {"series_uid": "XR", "shape": [1, 400, 512], "rle": [0, 1, 204799]}},
     "findings[0].mask.series_uid"),
    ({"label": "nodule", "bbox3d": {"series_uid": "MF", "min": [0, 0, 0], "max": [1, 1, 1]}},
     "findings[0].bbox3d.series_uid"),
    ({"label": "carina", "point_mm": {"series_uid": "XR", "xyz": [0, 0, 0]}}, "findings[0].point_mm.series_uid"),
    ({"label": "birads", "value": "2", "sop_instance_uid": "XR.0"}, "findings[0].sop_instance_uid"),
])
def test_a_per_series_task_refuses_geometry_on_another_series(finding, path):
    errors = errors_of([finding], task_series_uid="CT")
    assert "this task is for series CT" in " ".join(errors[path])


def test_a_per_series_task_accepts_its_own_series():
    assert one({"label": "nodule", "bbox": {"sop_instance_uid": "CT.1", "x0": 0, "y0": 0, "x1": 5, "y1": 5}},
               task_series_uid="CT")


def test_mean_hu_refuses_pixels_of_the_wrong_size():
    errors = errors_of([{"label": "density", "polygon": SQUARE}], pixel_reader=lambda uid, frame: np.zeros((4, 4)))
    assert "are (4, 4), not (40, 32)" in errors["findings[0].polygon"][0]


def test_mean_hu_over_a_polygon_that_covers_no_pixel_centre_is_refused():
    sliver = {"sop_instance_uid": "CT.2", "points": [[8.1, 10.1], [8.4, 10.1], [8.4, 10.4]]}
    errors = errors_of([{"label": "density", "polygon": sliver}], pixel_reader=pixel_values)
    assert list(errors) == ["findings[0].polygon.points"]


@pytest.mark.parametrize("payload", [None, {"findings": []}, "[]", 3])
def test_findings_must_be_a_list(payload):
    assert errors_of(payload) == {"findings": ["expected a list of findings"]}


def test_too_many_findings_are_refused():
    errors = errors_of([{"label": "birads", "value": "1"}] * (MAX_FINDINGS + 1))
    assert list(errors) == ["findings"]
    assert validate([{"label": "birads", "value": "1"}] * MAX_FINDINGS)


def test_every_bad_field_of_every_finding_is_reported_and_nothing_is_returned():
    errors = errors_of([
        {"label": "birads", "value": "4A"},
        {"label": "nodule", "bbox": {"sop_instance_uid": "CT.1", "x0": -1, "y0": 0, "x1": 99, "y1": True}},
        {"label": "liver", "mask": {"series_uid": "CT", "shape": [9, 40, 32], "rle": [1, 2]}},
        {"label": "nope"},
    ])
    assert set(errors) == {"findings[1].bbox.x0", "findings[1].bbox.x1", "findings[1].bbox.y1",
                           "findings[2].mask.shape", "findings[2].mask.rle", "findings[3].label"}


def test_empty_findings_are_valid():
    assert validate([]) == []
    assert summarise([]) == {"findings": 0, "slices_touched": 0, "series_touched": 0}


# Masks: run lengths and packed bits


@settings(max_examples=150, deadline=None)
@given(arrays(np.bool_, array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=7)))
def test_rle_round_trips_through_numpy(mask):
    counts = rle_encode(mask)
    assert sum(counts) == mask.size
    assert all(count > 0 for count in counts[1:])
    np.testing.assert_array_equal(rle_decode(counts, mask.shape), mask)


masks = arrays(np.bool_, array_shapes(min_dims=3, max_dims=3, min_side=1, max_side=6)).filter(lambda m: m.any())


def grid_study(shape):
    slices, rows, columns = shape
    return StudyGeom(study_uid="7.7", series={"G": stack("G", slices=slices, rows=rows, columns=columns)})


@settings(max_examples=100, deadline=None)
@given(masks)
def test_packbits_input_normalises_like_rle_input(mask):
    study, shape = grid_study(mask.shape), list(mask.shape)
    by_rle = one({"label": "liver", "mask": {"series_uid": "G", "shape": shape, "rle": rle_encode(mask)}}, study=study)
    by_bits = one({"label": "liver", "mask": {"series_uid": "G", "shape": shape, "encoding": "packbits-base64",
                                              "data": packbits(mask)}}, study=study)
    assert by_bits == by_rle
    assert by_rle["mask"]["voxels"] == int(mask.sum())
    assert by_rle["mask"]["slices"] == [k for k in range(mask.shape[0]) if mask[k].any()]
    np.testing.assert_array_equal(rle_decode(by_rle["mask"]["rle"], mask.shape), mask)


@settings(max_examples=100, deadline=None)
@given(masks, st.data())
def test_rle_with_empty_runs_normalises_to_the_canonical_runs(mask, data):
    counts = rle_encode(mask)
    padded = []
    for count in counts:
        padded.append(count)
        if data.draw(st.booleans()):
            padded += [0, 0]  # an empty run of the other value and back: the same voxels
    mask_finding = {"series_uid": "G", "shape": list(mask.shape), "rle": padded}
    assert one({"label": "liver", "mask": mask_finding}, study=grid_study(mask.shape))["mask"]["rle"] == counts


def test_packbits_ignores_the_pad_bits_of_the_last_byte():
    mask = np.zeros((1, 3, 3), dtype=bool)
    mask[0, 2, 2] = True
    packed = bytearray(np.packbits(mask.ravel()))
    packed[-1] |= 0b0111_1111
    finding = one({"label": "liver", "mask": {"series_uid": "G", "shape": [1, 3, 3], "encoding": "packbits-base64",
                                              "data": base64.b64encode(bytes(packed)).decode()}},
                  study=grid_study((1, 3, 3)))
    assert finding["mask"]["rle"] == [8, 1]


# Polygon rasterisation


def inside_by_pnpoly(points, x, y):
    inside = False
    for (xa, ya), (xb, yb) in zip(points, points[1:] + points[:1], strict=True):
        if (ya > y) != (yb > y) and x < xa + (y - ya) * (xb - xa) / (yb - ya):
            inside = not inside
    return inside


coordinates = st.floats(min_value=-2, max_value=14, allow_nan=False).map(lambda v: round(v * 4) / 4)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(coordinates, coordinates), min_size=3, max_size=8))
def test_polygon_mask_is_the_even_odd_rule_on_pixel_centres(points):
    mask = polygon_mask(points, (10, 12))
    expected = np.array([[inside_by_pnpoly(points, c + 0.5, r + 0.5) for c in range(12)] for r in range(10)])
    np.testing.assert_array_equal(mask, expected)


# Summary


def test_summarise_counts_distinct_slices_and_series():
    findings = validate([
        {"label": "birads", "value": "3"},
        {"label": "nodule", "bbox": {"sop_instance_uid": "CT.3", "x0": 0, "y0": 0, "x1": 4, "y1": 4}},
        {"label": "outline", "polygon": {"sop_instance_uid": "CT.3", "frame": 1, "points": [[0, 0], [4, 0], [4, 4]]}},
        {"label": "nodule", "bbox3d": {"series_uid": "CT", "min": [0, 0, 2], "max": [4, 4, 5]}},
        {"label": "liver", "mask": {"series_uid": "CT", "shape": [10, 40, 32], "rle": rle_encode(ct_mask((7, 1, 1)))}},
        {"label": "carina", "point_mm": {"series_uid": "CT", "xyz": [-99, -110, 56]}},
        {"label": "carina", "point": {"sop_instance_uid": "XR.0", "x": 3, "y": 3}},
        {"label": "nodule", "bbox": {"sop_instance_uid": "MF.0", "frame": 2, "x0": 0, "y0": 0, "x1": 4, "y1": 4}},
        {"label": "nodule", "bbox": {"sop_instance_uid": "MF.0", "frame": 3, "x0": 0, "y0": 0, "x1": 4, "y1": 4}},
        {"label": "kl-grade", "value": "2", "series_uid": "SC"},
    ])
    # CT slices 2, 3, 4 and 7; XR.0 frame 1; MF.0 frames 2 and 3. Series CT, XR, MF and SC (by scope).
    assert summarise(findings) == {"findings": 10, "slices_touched": 7, "series_touched": 4}


@settings(max_examples=60, deadline=None)
@given(masks)
def test_packbits_decoding_is_the_same_across_chunk_boundaries(mask):
    study, shape = grid_study(mask.shape), list(mask.shape)
    finding = {"label": "liver", "mask": {"series_uid": "G", "shape": shape, "encoding": "packbits-base64",
                                          "data": packbits(mask)}}
    with patch("tasks.findings.masks.PACKBITS_CHUNK", 1):
        assert one(finding, study=study)["mask"]["rle"] == rle_encode(mask)


def test_a_series_of_differently_sized_images_is_not_a_voxel_grid():
    first, second = stack("MIX", slices=2, rows=8, columns=8).instances
    mixed = SeriesGeom("MIX", (first, InstanceGeom(**{**second.__dict__, "rows": 16})), 2.0)
    errors = errors_of([{"label": "liver", "mask": {"series_uid": "MIX", "shape": [2, 8, 8], "rle": [0, 1, 127]}}],
                       study=StudyGeom("5.5", {"MIX": mixed}))
    assert "differ in size" in errors["findings[0].mask.series_uid"][0]
