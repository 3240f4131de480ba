"""The findings checker: every bad field of a payload named by path, never a partial result; what
passes comes back normalised (tasks.findings.loading feeds it from the database for a submit)."""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

from tasks.findings.geometry import (
    AREA,
    GEOMETRY_BY_UNIT,
    MEAN_HU,
    MM3_PER_UNIT,
    LabelSpec,
    StudyGeom,
)
from tasks.findings.masks import (
    shoelace,
)
from tasks.findings.parts import PayloadReader

MAX_FINDINGS = 10_000


class PayloadError(ValueError):
    """Every bad field of a findings payload, keyed by path (``findings[2].bbox.x1``)."""

    def __init__(self, errors: dict[str, list[str]]):
        self.errors = errors
        shown = "; ".join(f"{path}: {' '.join(messages)}" for path, messages in itertools.islice(errors.items(), 5))
        more = f" (and {len(errors) - 5} more fields)" if len(errors) > 5 else ""
        super().__init__(shown + more)



def validate_findings(findings, *, labels: dict[str, LabelSpec], study: StudyGeom,
                      pixel_reader: Callable[[str, int], np.ndarray] | None = None,
                      task_series_uid: str | None = None) -> list[dict]:
    """Validate and normalise a list of findings; raise PayloadError naming every bad field (never partial)."""
    if not isinstance(findings, list | tuple):
        raise PayloadError({"findings": ["expected a list of findings"]})
    if len(findings) > MAX_FINDINGS:
        raise PayloadError({"findings": [f"{len(findings)} findings; at most {MAX_FINDINGS} are accepted"]})
    checker = _Checker(labels, study, pixel_reader, task_series_uid)
    normalised = [checker.finding(raw, f"findings[{n}]") for n, raw in enumerate(findings)]
    if checker.errors:
        raise PayloadError(checker.errors)
    return normalised



def summarise(findings: list[dict]) -> dict:
    """Counts over normalised findings: findings, distinct (instance, frame) slices marked, series referenced."""
    slices: set[tuple[str, int, int]] = set()
    series: set[str] = set()
    for finding in findings:
        if finding.get("series_uid"):
            series.add(finding["series_uid"])
        for key, geometry in finding.items():
            if isinstance(geometry, dict) and "series_uid" in geometry:
                series.add(geometry["series_uid"])
                slices.update((geometry["series_uid"], k, frame) for k, frame in _slices_marked(key, geometry))
    return {"findings": len(findings), "slices_touched": len(slices), "series_touched": len(series)}



def _slices_marked(key: str, geometry: dict) -> Iterable[tuple[int, int]]:
    # A series' slice k is its k-th instance, so (series, k, frame) names the same slice as (SOP UID, frame).
    if key == "bbox3d":
        return ((k, 1) for k in range(geometry["min"][2], geometry["max"][2]))
    if key == "mask":
        return ((k, 1) for k in geometry["slices"])
    if "slice" in geometry:
        return [(geometry["slice"], geometry.get("frame", 1))]
    return ()


class _Checker(PayloadReader):
    """Walks one payload, collecting every error by path and building the normalised findings."""

    def finding(self, raw, path: str) -> dict | None:
        if not isinstance(raw, dict):
            self.add(path, "expected an object with a label")
            return None
        if "label" not in raw:
            self.add(f"{path}.label", "required")
            return None
        key = raw["label"]
        if not isinstance(key, str) or key not in self.labels:
            known = ", ".join(sorted(self.labels)[:30])
            self.add(f"{path}.label", f"unknown label {key!r}; this protocol's labels are: {known}")
            return None
        spec = self.labels[key]
        check = {"classification": self.category, "ordinal": self.category, "bbox": self.box,
                 "polygon": self.outline, "mask": self.segmentation, "landmark": self.landmark,
                 "measurement": self.measurement}.get(spec.kind)
        if check is None:
            self.add(f"{path}.label", f"label {key!r} has kind {spec.kind!r}, which submissions do not support")
            return None
        head = {"label": key, "kind": spec.kind,
                "concept": {"scheme": spec.coding_scheme, "code": spec.code_value, "meaning": spec.code_meaning}}
        return head | check(raw, path, spec)

    # Kinds

    def category(self, raw: dict, path: str, spec: LabelSpec) -> dict:
        self.known_fields(raw, path, ("label", "value", "series_uid", "sop_instance_uid"))
        out: dict[str, Any] = {}
        allowed = ", ".join(spec.categories) or "(the label defines no categories)"
        if "value" not in raw:
            self.add(f"{path}.value", f"required; one of: {allowed}")
        elif not isinstance(raw["value"], str) or raw["value"] not in spec.categories:
            self.add(f"{path}.value", f"{raw['value']!r} is not a category of {spec.key}; one of: {allowed}")
        else:
            out["value"] = raw["value"]
        if "sop_instance_uid" in raw:
            found = self.instance(raw["sop_instance_uid"], f"{path}.sop_instance_uid")
            if found:
                out |= {"sop_instance_uid": found[0].sop_instance_uid, "series_uid": found[0].series_uid}
                if "series_uid" in raw and raw["series_uid"] != found[0].series_uid:
                    self.add(f"{path}.series_uid", f"the instance belongs to series {found[0].series_uid}")
        elif "series_uid" in raw:
            series = self.series(raw["series_uid"], f"{path}.series_uid")
            if series:
                out["series_uid"] = series.series_uid
        return out

    def box(self, raw: dict, path: str, spec: LabelSpec) -> dict:
        self.known_fields(raw, path, ("label", "bbox", "bbox3d"))
        which = self.one_of(raw, path, ("bbox", "bbox3d"))
        if which == "bbox":
            return {"bbox": self.bbox(raw["bbox"], f"{path}.bbox")}
        if which == "bbox3d":
            return {"bbox3d": self.bbox3d(raw["bbox3d"], f"{path}.bbox3d")}
        return {}

    def outline(self, raw: dict, path: str, spec: LabelSpec) -> dict:
        self.known_fields(raw, path, ("label", "polygon"))
        if "polygon" not in raw:
            self.add(f"{path}.polygon", "required")
            return {}
        return {"polygon": self.polygon(raw["polygon"], f"{path}.polygon")[0]}

    def segmentation(self, raw: dict, path: str, spec: LabelSpec) -> dict:
        self.known_fields(raw, path, ("label", "mask"))
        if "mask" not in raw:
            self.add(f"{path}.mask", "required")
            return {}
        return {"mask": self.mask(raw["mask"], f"{path}.mask")[0]}

    def landmark(self, raw: dict, path: str, spec: LabelSpec) -> dict:
        self.known_fields(raw, path, ("label", "point", "point_mm"))
        which = self.one_of(raw, path, ("point", "point_mm"))
        if which == "point":
            return {"point": self.point(raw["point"], f"{path}.point")}
        if which == "point_mm":
            return {"point_mm": self.point_mm(raw["point_mm"], f"{path}.point_mm")}
        return {}

    def measurement(self, raw: dict, path: str, spec: LabelSpec) -> dict:
        geometries = GEOMETRY_BY_UNIT.get(spec.unit, ())
        hint = f"a measurement in {spec.unit or 'no unit'} takes " + (" or ".join(geometries) or "only a value")
        for key in raw:
            if key not in ("label", "value", "unit", *geometries):
                self.add(f"{path}.{key}", f"unknown field; {hint}")
        if "unit" in raw and raw["unit"] != spec.unit:
            self.add(f"{path}.unit", f"{raw['unit']!r} does not match the label's unit {spec.unit!r}")
        present = [key for key in geometries if key in raw]
        if len(present) > 1:
            self.add(f"{path}.{present[1]}", f"give one geometry, not both {present[0]} and {present[1]}")
            return {}
        if not present:
            value = self.required_value(raw, path, "required when no geometry is given")
            return {"value": value, "unit": spec.unit, "computed": False}
        key = present[0]
        geometry, value = self.measured(key, raw[key], f"{path}.{key}", spec.unit)
        if value is not None:
            self.agree(raw, path, value, spec.unit)
            return {"value": value, "unit": spec.unit, "computed": True, key: geometry}
        if spec.unit == MEAN_HU and not self.read_pixels:
            value = self.required_value(raw, path, "required: pixel data is not available here to compute the mean")
            return {"value": value, "unit": spec.unit, "computed": False, key: geometry}
        return {}

    def measured(self, key: str, value, path: str, unit: str) -> tuple[dict | None, float | None]:
        """The normalised geometry and the value computed from it (None where it cannot be computed)."""
        if key == "line":
            line, ref, points = self.line(value, path)
            if not (ref and points):
                return line, None
            if not ref.instance.pixel_spacing:
                self.add(path, "the image has no PixelSpacing; length cannot be computed")
                return line, None
            row_spacing, column_spacing = ref.instance.pixel_spacing
            (xa, ya), (xb, yb) = points
            return line, math.hypot((xb - xa) * column_spacing, (yb - ya) * row_spacing)
        if key == "polygon":
            polygon, ref, points = self.polygon(value, path)
            if not (ref and points):
                return polygon, None
            if unit == AREA and not ref.instance.pixel_spacing:
                self.add(path, "the image has no PixelSpacing; area cannot be computed")
                return polygon, None
            if unit == AREA:
                return polygon, shoelace(points) * ref.instance.pixel_spacing[0] * ref.instance.pixel_spacing[1]
            return polygon, self.polygon_mean(ref, points, path) if self.read_pixels else None
        mask, grid, runs = self.mask(value, path)
        if runs is None:
            return mask, None
        if unit in MM3_PER_UNIT and grid.voxel_mm3 is None:
            self.add(path, "the series has no PixelSpacing or slice spacing; volume cannot be computed")
            return mask, None
        if unit in MM3_PER_UNIT:
            return mask, mask["voxels"] * grid.voxel_mm3 / MM3_PER_UNIT[unit]
        return mask, self.mask_mean(grid, runs, mask["slices"], path) if self.read_pixels else None

    # Geometry
