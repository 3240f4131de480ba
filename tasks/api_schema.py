"""The findings payload in the OpenAPI schema: what a reader submits (and may keep as a draft).

The schema describes what tasks.findings.validation accepts, which decides (a finding the schema
admits can still be refused, with the field path, e.g. a label the protocol does not have or a point
outside the image). Coordinates: 2D points are pixel coordinates, x along columns and y along rows,
0..columns and 0..rows, a pixel's centre at (column + 0.5, row + 0.5); voxel indices are
[column, row, slice]; patient coordinates are DICOM LPS millimetres.
"""

from drf_spectacular.utils import OpenApiExample

_UID = {"type": "string", "description": "A DICOM UID of the task's study (as DICOMweb names it)."}
_NUMBER = {"type": "number"}
_FRAME = {"type": "integer", "minimum": 1, "description": "1-based frame of a multi-frame instance (default 1)."}
_POINT = {"type": "array", "items": _NUMBER, "minItems": 2, "maxItems": 2, "description": "[x, y] in pixels."}
_VOXEL = {"type": "array", "items": {"type": "integer"}, "minItems": 3, "maxItems": 3,
          "description": "[column, row, slice] voxel indices."}
_XYZ = {"type": "array", "items": _NUMBER, "minItems": 3, "maxItems": 3, "description": "[x, y, z] patient mm (LPS)."}


def _on_image(properties: dict, required: list[str], description: str) -> dict:
    return {"type": "object", "description": description, "required": ["sop_instance_uid", *required],
            "properties": {"sop_instance_uid": _UID, **properties, "frame": _FRAME}}


FINDING_SCHEMA = {
    "type": "object",
    "required": ["label"],
    "description": (
        "One finding. `label` names an entry of the task's protocol version (`protocol_version.entries[].key` "
        "in the claim); the entry's kind says which other fields it takes: classification and ordinal "
        "`value` (a category value), optionally `series_uid` or `sop_instance_uid`; bbox `bbox` or `bbox3d`; "
        "polygon `polygon`; mask `mask`; landmark `point` or `point_mm`; measurement `value` and/or one "
        "geometry its unit allows (mm: `line`; mm2: `polygon`; ml and mm3: `mask`; [hnsf'U]: `polygon` or "
        "`mask`). A value given with a geometry must agree with the one computed from it within 1% or half "
        "a unit. Fields a kind does not take are refused by name."),
    "properties": {
        "label": {"type": "string", "example": "nodule"},
        "value": {"description": "classification/ordinal: one of the entry's category values (a string); "
                                 "measurement: the number, in the entry's unit."},
        "unit": {"type": "string", "description": "measurement only; when given, the entry's unit (UCUM)."},
        "series_uid": _UID,
        "sop_instance_uid": _UID,
        "bbox": _on_image({name: _NUMBER for name in ("x0", "y0", "x1", "y1")}, ["x0", "y0", "x1", "y1"],
                          "A 2D box in pixels, x0 < x1 and y0 < y1, within the image."),
        "bbox3d": {"type": "object", "required": ["series_uid"], "description": (
            "A 3D box in a series: min and max voxel indices (inclusive-exclusive), or min_mm and max_mm "
            "corners in patient mm, not both."),
            "properties": {"series_uid": _UID, "min": _VOXEL, "max": _VOXEL, "min_mm": _XYZ, "max_mm": _XYZ}},
        "polygon": _on_image({"points": {"type": "array", "items": _POINT, "minItems": 3, "maxItems": 10000}},
                             ["points"], "A closed outline of 3 to 10,000 points with a non-zero area."),
        "line": _on_image({"points": {"type": "array", "items": _POINT, "minItems": 2, "maxItems": 2}},
                          ["points"], "Two distinct points (a length measurement)."),
        "point": _on_image({"x": _NUMBER, "y": _NUMBER}, ["x", "y"], "A point on one image, in pixels."),
        "point_mm": {"type": "object", "required": ["series_uid", "xyz"], "description": "A point in a series' "
                     "volume, in patient mm.", "properties": {"series_uid": _UID, "xyz": _XYZ}},
        "mask": {"type": "object", "required": ["series_uid", "shape"], "description": (
            "A segmentation of a series over its whole grid, C-order [slice, row, column]: `rle`, run lengths "
            "starting with a run of zeros and covering every voxel, or `data`, base64 of numpy.packbits of "
            "the mask (encoding packbits-base64). At least one voxel set."),
            "properties": {
                "series_uid": _UID,
                "shape": {"type": "array", "items": {"type": "integer", "minimum": 1}, "minItems": 3, "maxItems": 3,
                          "description": "[slices, rows, columns] of the series."},
                "encoding": {"type": "string", "enum": ["rle", "packbits-base64"], "default": "rle"},
                "rle": {"type": "array", "items": {"type": "integer", "minimum": 0}},
                "data": {"type": "string", "format": "byte"}}},
    },
}
FINDINGS_SCHEMA = {"type": "array", "maxItems": 10000, "items": FINDING_SCHEMA, "description": (
    "The read's findings, at most 10,000; an empty list says the reader found nothing. Every bad field is "
    "named in the 400's `errors` by its path, e.g. `findings[0].bbox.x1`; nothing is stored then.")}

_SERIES, _IMAGE = "2.25.1234.1", "2.25.1234.1.7"
FINDINGS_EXAMPLE = [
    {"label": "birads", "value": "4"},
    {"label": "nodule", "bbox": {"sop_instance_uid": _IMAGE, "x0": 120.5, "y0": 88.0, "x1": 141.0, "y1": 110.5}},
    {"label": "diameter", "value": 21.3, "line": {"sop_instance_uid": _IMAGE, "points": [[121, 99], [141, 101]]}},
    {"label": "lesion", "mask": {"series_uid": _SERIES, "shape": [1, 4, 4], "rle": [5, 2, 2, 2, 5]}},
    {"label": "apex", "point_mm": {"series_uid": _SERIES, "xyz": [12.5, -40.0, 88.25]}},
]
SUBMIT_EXAMPLES = [
    OpenApiExample("Findings of several kinds", request_only=True, value={"findings": FINDINGS_EXAMPLE}, description=(
        "Labels as a protocol might name them: a BI-RADS category, a box, a measured line, a small mask and "
        "a point in patient space. The UIDs are the task's (from the claim)."),
    ),
    OpenApiExample("Nothing found", request_only=True, value={"findings": []}),
]
DRAFT_EXAMPLES = [
    OpenApiExample("Work in progress", request_only=True, value={"draft": FINDINGS_EXAMPLE[:2]}, description=(
        "Any JSON list or object, stored as sent and not validated; usually the findings so far."),
    ),
]
