"""A reader's findings checked against the label schema and the study's geometry, and normalised.

Pure Python and numpy, no Django: tasks.submission_service builds the label specs and geometry from
the database and hands in a pixel reader. Conventions: 2D coordinates are pixel coordinates with the
image spanning 0..columns (x) and 0..rows (y), so pixel (row r, column c) has its centre at
(c + 0.5, r + 0.5); voxel indices are (column i, row j, slice k), boxes inclusive-exclusive; patient
coordinates are DICOM LPS millimetres; masks are run lengths over the C-order (slice, row, column)
voxels, starting with a run of zeros.
"""

from __future__ import annotations

import base64
import binascii
import itertools
import math
import numbers
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import cached_property, lru_cache
from typing import Any

import numpy as np

MAX_FINDINGS = 10_000
MAX_POLYGON_POINTS = 10_000
LENGTH, AREA, MEAN_HU = "mm", "mm2", "[hnsf'U]"
MM3_PER_UNIT = {"ml": 1000.0, "mm3": 1.0}
GEOMETRY_BY_UNIT = {LENGTH: ("line",), AREA: ("polygon",), "ml": ("mask",), "mm3": ("mask",),
                    MEAN_HU: ("polygon", "mask")}
# A client's value must agree with the server's within 1%, or within half a base unit of the measure.
ABSOLUTE_TOLERANCE = {LENGTH: 0.5, AREA: 0.5, "mm3": 0.5, "ml": 0.0005, MEAN_HU: 0.5}
AXES = ("column", "row", "slice")
PACKBITS_CHUNK = 1 << 20  # bytes unpacked at a time, so a large mask never exists as one dense array


@dataclass(frozen=True)
class LabelSpec:
    """One entry of a protocol's label schema."""

    key: str
    kind: str
    categories: tuple[str, ...]
    unit: str
    coding_scheme: str
    code_value: str
    code_meaning: str


@dataclass(frozen=True)
class InstanceGeom:
    """One SOP instance: its pixel grid and, where known, its place in patient space."""

    sop_instance_uid: str
    series_uid: str
    rows: int
    columns: int
    frames: int
    pixel_spacing: tuple[float, float] | None
    position: tuple[float, float, float] | None
    orientation: tuple[float, ...] | None
    instance_number: int | None


@dataclass(frozen=True)
class SeriesGeom:
    """A series' instances sorted along the slice normal (index = slice k)."""

    series_uid: str
    instances: tuple[InstanceGeom, ...]
    slice_spacing: float | None


@dataclass(frozen=True)
class StudyGeom:
    """The geometry of every series of a study."""

    study_uid: str
    series: dict[str, SeriesGeom]

    def instance(self, sop_uid: str) -> InstanceGeom | None:
        """The instance with this SOP Instance UID, or None when it is not part of the study."""
        found = self._slices.get(sop_uid)
        return found[0] if found else None

    def slice_index(self, sop_uid: str) -> int | None:
        """The instance's slice index k within its series, or None when it is not part of the study."""
        found = self._slices.get(sop_uid)
        return found[1] if found else None

    @cached_property
    def _slices(self) -> dict[str, tuple[InstanceGeom, int]]:
        return {inst.sop_instance_uid: (inst, k) for series in self.series.values()
                for k, inst in enumerate(series.instances)}


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


def rle_encode(mask) -> list[int]:
    """Run lengths of a mask's C-order voxels: alternating, starting with a (possibly empty) run of zeros."""
    flat = np.asarray(mask, dtype=bool).ravel()
    edges = np.flatnonzero(np.diff(np.concatenate(([False], flat, [False])).astype(np.int8)))
    return _counts_from_runs(edges[0::2], edges[1::2], flat.size)


def rle_decode(counts, shape) -> np.ndarray:
    """The boolean mask of these run lengths; ValueError unless they are non-negative and fill the shape."""
    counts = np.asarray(counts, dtype=np.int64)
    if counts.ndim != 1 or (counts < 0).any() or int(counts.sum()) != math.prod(shape):
        raise ValueError(f"run lengths do not fill a mask of shape {tuple(shape)}")
    return np.repeat(np.arange(len(counts)) % 2 == 1, counts).reshape(shape)


def polygon_mask(points, shape: tuple[int, int]) -> np.ndarray:
    """The pixels whose centres lie inside the polygon (even-odd rule); points are (x, y) pixel coordinates."""
    rows, columns = shape
    mask = np.zeros(shape, dtype=bool)
    xy = np.asarray(points, dtype=np.float64)
    x0, y0 = xy[:, 0], xy[:, 1]
    x1, y1 = np.roll(x0, -1), np.roll(y0, -1)
    first, last = max(0, math.floor(y0.min() - 0.5)), min(rows, math.ceil(y0.max()))
    for row in range(first, last):
        centre = row + 0.5
        # Half-open crossing rule (PNPOLY): a vertex on the scanline counts for exactly one of its edges.
        crossing = (y0 > centre) != (y1 > centre)
        if not crossing.any():
            continue
        a, b, c, d = x0[crossing], y0[crossing], x1[crossing], y1[crossing]
        xs = np.sort(a + (centre - b) * (c - a) / (d - b))
        starts = np.clip(np.ceil(xs[0::2] - 0.5), 0, columns).astype(int)
        ends = np.clip(np.ceil(xs[1::2] - 0.5), 0, columns).astype(int)
        for start, end in zip(starts, ends, strict=True):
            mask[row, start:end] = True
    return mask


def _shoelace(points: list[tuple[float, float]]) -> float:
    xy = np.asarray(points, dtype=np.float64)
    x, y = xy[:, 0], xy[:, 1]
    return float(abs(np.dot(x, np.roll(y, -1)) - np.dot(np.roll(x, -1), y)) / 2)


def _merge_runs(starts: np.ndarray, ends: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    keep = ends > starts
    starts, ends = starts[keep], ends[keep]
    if len(starts) < 2:
        return starts, ends
    joined = starts[1:] == ends[:-1]
    return starts[np.concatenate(([True], ~joined))], ends[np.concatenate((~joined, [True]))]


def _runs_from_counts(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    bounds = np.concatenate(([0], np.cumsum(counts)))
    ones = np.arange(1, len(counts), 2)
    return _merge_runs(bounds[ones], bounds[ones + 1])


def _runs_from_packbits(packed: bytes, size: int) -> tuple[np.ndarray, np.ndarray]:
    toggles, previous = [], np.uint8(0)
    for offset in range(0, len(packed), PACKBITS_CHUNK):
        bits = np.unpackbits(np.frombuffer(packed[offset:offset + PACKBITS_CHUNK], dtype=np.uint8))
        bits = bits[:max(0, size - offset * 8)]  # numpy.packbits pads the last byte; the pad is not voxels
        if not bits.size:
            break
        toggles.append(np.flatnonzero(np.diff(bits, prepend=previous)) + offset * 8)
        previous = bits[-1]
    if previous:
        toggles.append(np.array([size]))
    edges = np.concatenate(toggles) if toggles else np.zeros(0, dtype=np.int64)
    return edges[0::2].astype(np.int64), edges[1::2].astype(np.int64)


def _counts_from_runs(starts: np.ndarray, ends: np.ndarray, size: int) -> list[int]:
    if not len(starts):
        return [int(size)]
    counts = np.empty(2 * len(starts), dtype=np.int64)
    counts[0::2] = starts - np.concatenate(([0], ends[:-1]))
    counts[1::2] = ends - starts
    out = counts.tolist()
    if ends[-1] < size:
        out.append(int(size - ends[-1]))
    return out


def _slices_with_voxels(starts: np.ndarray, ends: np.ndarray, slice_size: int, slices: int) -> list[int]:
    delta = np.zeros(slices + 1, dtype=np.int64)
    np.add.at(delta, starts // slice_size, 1)
    np.add.at(delta, (ends - 1) // slice_size + 1, -1)
    return np.flatnonzero(np.cumsum(delta)[:slices] > 0).tolist()


def _slice_of_runs(starts: np.ndarray, ends: np.ndarray, k: int, rows: int, columns: int) -> np.ndarray:
    size = rows * columns
    low, high = k * size, (k + 1) * size
    first, last = np.searchsorted(ends, low, side="right"), np.searchsorted(starts, high, side="left")
    delta = np.zeros(size + 1, dtype=np.int32)
    np.add.at(delta, np.clip(starts[first:last], low, high) - low, 1)
    np.add.at(delta, np.clip(ends[first:last], low, high) - low, -1)
    return (np.cumsum(delta[:-1]) > 0).reshape(rows, columns)


@dataclass(frozen=True)
class _Grid:
    """A series as a voxel grid; ``affine`` maps voxel (i, j, k) to patient mm as origin + matrix @ ijk."""

    series: SeriesGeom
    dims: tuple[int, int, int]  # columns, rows, slices
    problem: str | None
    origin: np.ndarray | None
    matrix: np.ndarray | None
    affine_problem: str | None
    voxel_mm3: float | None

    def to_voxel(self, xyz) -> np.ndarray:
        return np.linalg.solve(self.matrix, np.asarray(xyz, dtype=np.float64) - self.origin)


def _grid_of(series: SeriesGeom) -> _Grid:
    instances = series.instances
    first = instances[0]
    dims = (first.columns, first.rows, len(instances))
    problem = None
    if first.rows <= 0 or first.columns <= 0:
        problem = "the series has no pixel grid (Rows/Columns unknown)"
    elif any((i.rows, i.columns) != (first.rows, first.columns) for i in instances):
        problem = "the instances of this series differ in size, so it is not one voxel grid"
    voxel_mm3 = None
    if first.pixel_spacing and series.slice_spacing:
        voxel_mm3 = float(first.pixel_spacing[0] * first.pixel_spacing[1] * series.slice_spacing)
    if not (first.position and first.orientation and len(first.orientation) == 6 and first.pixel_spacing):
        return _Grid(series, dims, problem, None, None, "the series has no ImagePositionPatient, "
                     "ImageOrientationPatient or PixelSpacing; patient coordinates cannot be used", voxel_mm3)
    row_cosines, column_cosines = np.asarray(first.orientation[:3], float), np.asarray(first.orientation[3:], float)
    row_spacing, column_spacing = first.pixel_spacing
    last = instances[-1]
    # Positions span the stack exactly (gantry tilt included); the spacing along the normal is the fallback.
    if len(instances) > 1 and last.position:
        step = (np.asarray(last.position, float) - np.asarray(first.position, float)) / (len(instances) - 1)
    elif series.slice_spacing:
        step = np.cross(row_cosines, column_cosines) * series.slice_spacing
    else:
        return _Grid(series, dims, problem, None, None,
                     "the series has no slice spacing; patient coordinates cannot be used", voxel_mm3)
    # DICOM PS3.3 C.7.6.2.1.1: column index i moves along the row cosines by the column spacing (PixelSpacing[1]).
    matrix = np.column_stack((row_cosines * column_spacing, column_cosines * row_spacing, step))
    if abs(np.linalg.det(matrix)) < 1e-9:
        return _Grid(series, dims, problem, None, None,
                     "the series geometry is degenerate; patient coordinates cannot be used", voxel_mm3)
    return _Grid(series, dims, problem, np.asarray(first.position, float), matrix, None, voxel_mm3)


@dataclass(frozen=True)
class _ImageRef:
    instance: InstanceGeom
    k: int
    frame: int

    def normalised(self) -> dict:
        return {"sop_instance_uid": self.instance.sop_instance_uid, "series_uid": self.instance.series_uid,
                "slice": self.k, "frame": self.frame}


class _Checker:
    """Walks one payload, collecting every error by path and building the normalised findings."""

    def __init__(self, labels, study, pixel_reader, task_series_uid):
        self.labels: dict[str, LabelSpec] = labels
        self.study: StudyGeom = study
        self.task_series_uid: str | None = task_series_uid
        self.read_pixels = lru_cache(maxsize=8)(pixel_reader) if pixel_reader else None
        self.errors: dict[str, list[str]] = {}
        self._grids: dict[str, _Grid] = {}

    def add(self, path: str, message: str) -> None:
        self.errors.setdefault(path, []).append(message)

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
                return polygon, _shoelace(points) * ref.instance.pixel_spacing[0] * ref.instance.pixel_spacing[1]
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

    def bbox(self, value, path: str) -> dict | None:
        obj = self.fields(value, path, ("sop_instance_uid", "x0", "y0", "x1", "y1"), ("frame",))
        if obj is None:
            return None
        ref = self.image_ref(obj, path)
        coords = {key: self.number(obj[key], f"{path}.{key}") for key in ("x0", "y0", "x1", "y1") if key in obj}
        if ref:
            for low, high, extent, name in (("x0", "x1", ref.instance.columns, "columns"),
                                            ("y0", "y1", ref.instance.rows, "rows")):
                inside = [self.within(coords.get(key), 0, extent, f"{path}.{key}",
                                      f"outside the image (0..{extent}, the image has {extent} {name})")
                          for key in (low, high)]
                if all(inside) and coords[high] <= coords[low]:
                    self.add(f"{path}.{high}", f"{coords[high]:g} must be greater than {low} ({coords[low]:g})")
        if not ref or None in coords.values() or len(coords) < 4:
            return None
        return ref.normalised() | {key: float(coords[key]) for key in ("x0", "y0", "x1", "y1")}

    def bbox3d(self, value, path: str) -> dict | None:
        obj = self.fields(value, path, ("series_uid",), ("min", "max", "min_mm", "max_mm"))
        if obj is None:
            return None
        by_voxel, by_mm = "min" in obj or "max" in obj, "min_mm" in obj or "max_mm" in obj
        if by_voxel and by_mm:
            self.add(f"{path}.min_mm", "give min/max (voxel indices) or min_mm/max_mm (patient mm), not both")
            return None
        if not by_voxel and not by_mm:
            self.add(f"{path}.min", "required: min and max (voxel indices) or min_mm and max_mm (patient mm)")
            return None
        names = ("min", "max") if by_voxel else ("min_mm", "max_mm")
        for name in names:
            if name not in obj:
                self.add(f"{path}.{name}", "required")
        corners = {name: self.vector(obj[name], f"{path}.{name}", integer=by_voxel) for name in names if name in obj}
        grid = self.grid(obj.get("series_uid"), f"{path}.series_uid")
        if grid is None or None in corners.values() or len(corners) < 2:
            return None
        if by_voxel:
            low, high = corners["min"], corners["max"]
            for axis, (axis_name, extent) in enumerate(zip(AXES, grid.dims, strict=True)):
                if not 0 <= low[axis] < extent:
                    self.add(f"{path}.min[{axis}]", f"{axis_name} index {low[axis]} is outside the series "
                                                    f"(0..{extent - 1})")
                elif not low[axis] < high[axis] <= extent:
                    self.add(f"{path}.max[{axis}]", f"{axis_name} index {high[axis]} must be greater than min "
                                                    f"({low[axis]}) and at most {extent} (exclusive end)")
            return {"series_uid": grid.series.series_uid, "min": low, "max": high}
        low_mm, high_mm = corners["min_mm"], corners["max_mm"]
        for axis in range(3):
            if high_mm[axis] < low_mm[axis]:
                self.add(f"{path}.max_mm[{axis}]", f"{high_mm[axis]:g} is below min_mm[{axis}] ({low_mm[axis]:g})")
        if grid.matrix is None:
            self.add(f"{path}.min_mm", grid.affine_problem)
            return None
        if any(high_mm[axis] < low_mm[axis] for axis in range(3)):
            return None
        # Every corner of the patient-space box, so an oblique series gets the voxel box that encloses it.
        voxels = np.array([grid.to_voxel(corner) for corner in itertools.product(*zip(low_mm, high_mm, strict=True))])
        lowest, highest = voxels.min(axis=0), voxels.max(axis=0)
        outside = False
        for axis, (axis_name, extent) in enumerate(zip(AXES, grid.dims, strict=True)):
            span = f"the volume spans {-0.5:g}..{extent - 0.5:g} along the {axis_name} axis"
            if lowest[axis] < -0.5 - 1e-6:
                self.add(f"{path}.min_mm", f"the box starts outside the series volume ({axis_name} {lowest[axis]:.2f}; "
                                           f"{span})")
                outside = True
            if highest[axis] > extent - 0.5 + 1e-6:
                self.add(f"{path}.max_mm", f"the box ends outside the series volume ({axis_name} {highest[axis]:.2f}; "
                                           f"{span})")
                outside = True
        if outside:
            return None
        # The voxels whose centres lie inside; a box thinner than one voxel keeps the nearest one.
        low = np.maximum(np.ceil(lowest - 1e-6), 0).astype(int)
        high = np.minimum(np.floor(highest + 1e-6) + 1, grid.dims).astype(int)
        nearest = np.clip(np.rint((lowest + highest) / 2), 0, np.array(grid.dims) - 1).astype(int)
        low, high = np.where(high > low, low, nearest), np.where(high > low, high, nearest + 1)
        return {"series_uid": grid.series.series_uid, "min": low.tolist(), "max": high.tolist(),
                "min_mm": low_mm, "max_mm": high_mm}

    def polygon(self, value, path: str) -> tuple[dict | None, _ImageRef | None, list | None]:
        obj = self.fields(value, path, ("sop_instance_uid", "points"), ("frame",))
        if obj is None:
            return None, None, None
        ref = self.image_ref(obj, path)
        points = self.points(obj["points"], f"{path}.points", ref, 3, MAX_POLYGON_POINTS) if "points" in obj else None
        if points and _shoelace(points) < 1e-9:
            self.add(f"{path}.points", "the points are collinear; a polygon needs a non-zero area")
            points = None
        if not ref or not points:
            return None, ref, None
        return ref.normalised() | {"points": [list(p) for p in points]}, ref, points

    def line(self, value, path: str) -> tuple[dict | None, _ImageRef | None, list | None]:
        obj = self.fields(value, path, ("sop_instance_uid", "points"), ("frame",))
        if obj is None:
            return None, None, None
        ref = self.image_ref(obj, path)
        points = self.points(obj["points"], f"{path}.points", ref, 2, 2) if "points" in obj else None
        if points and points[0] == points[1]:
            self.add(f"{path}.points", "the two points coincide; a line needs two distinct points")
            points = None
        if not ref or not points:
            return None, ref, None
        return ref.normalised() | {"points": [list(p) for p in points]}, ref, points

    def point(self, value, path: str) -> dict | None:
        obj = self.fields(value, path, ("sop_instance_uid", "x", "y"), ("frame",))
        if obj is None:
            return None
        ref = self.image_ref(obj, path)
        x = self.number(obj["x"], f"{path}.x") if "x" in obj else None
        y = self.number(obj["y"], f"{path}.y") if "y" in obj else None
        if not ref:
            return None
        columns, rows = ref.instance.columns, ref.instance.rows
        inside_x = self.within(x, 0, columns, f"{path}.x", f"outside the image (0..{columns})")
        inside_y = self.within(y, 0, rows, f"{path}.y", f"outside the image (0..{rows})")
        if not (inside_x and inside_y):
            return None
        return ref.normalised() | {"x": float(x), "y": float(y)}

    def point_mm(self, value, path: str) -> dict | None:
        obj = self.fields(value, path, ("series_uid", "xyz"), ())
        if obj is None:
            return None
        xyz = self.vector(obj["xyz"], f"{path}.xyz", integer=False) if "xyz" in obj else None
        grid = self.grid(obj.get("series_uid"), f"{path}.series_uid")
        if grid is None or xyz is None:
            return None
        if grid.matrix is None:
            self.add(f"{path}.xyz", grid.affine_problem)
            return None
        voxel = grid.to_voxel(xyz)
        bad = [f"{name} {voxel[axis]:.2f} (the volume spans -0.5..{extent - 0.5:g})"
               for axis, (name, extent) in enumerate(zip(AXES, grid.dims, strict=True))
               if not -0.5 - 1e-6 <= voxel[axis] <= extent - 0.5 + 1e-6]
        if bad:
            self.add(f"{path}.xyz", "the point is outside the series volume: " + "; ".join(bad))
            return None
        k = int(np.clip(np.rint(voxel[2]), 0, grid.dims[2] - 1))
        return {"series_uid": grid.series.series_uid, "xyz": xyz,
                "voxel": [round(float(v), 6) for v in voxel], "slice": k,
                "sop_instance_uid": grid.series.instances[k].sop_instance_uid}

    def mask(self, value, path: str) -> tuple[dict | None, _Grid | None, tuple | None]:
        obj = self.fields(value, path, ("series_uid", "shape"), ("encoding", "rle", "data"))
        if obj is None:
            return None, None, None
        encoding = obj.get("encoding", "rle")
        payload = {"rle": "rle", "packbits-base64": "data"}.get(encoding) if isinstance(encoding, str) else None
        if payload is None:
            self.add(f"{path}.encoding", f"{encoding!r} is not supported; use 'rle' or 'packbits-base64'")
        else:
            other = "data" if payload == "rle" else "rle"
            if other in obj:
                self.add(f"{path}.{other}", f"not used with encoding {encoding!r}; send {payload}")
            if payload not in obj:
                self.add(f"{path}.{payload}", "required")
        grid = self.grid(obj.get("series_uid"), f"{path}.series_uid")
        shape = self.vector(obj["shape"], f"{path}.shape", integer=True) if "shape" in obj else None
        if shape is not None and min(shape) <= 0:
            self.add(f"{path}.shape", f"{shape} must be three positive sizes [slices, rows, columns]")
            shape = None
        if shape is not None and grid is not None:
            expected = [grid.dims[2], grid.dims[1], grid.dims[0]]
            if shape != expected:
                self.add(f"{path}.shape", f"{shape} does not match the series grid {expected} "
                                          "[slices, rows, columns]")
        runs = None
        if shape is not None and payload in obj:
            size = math.prod(shape)
            if payload == "rle":
                runs = self.runs_from_rle(obj["rle"], f"{path}.rle", size)
            else:
                runs = self.runs_from_packbits(obj["data"], f"{path}.data", size)
            if runs is not None and not len(runs[0]):
                self.add(f"{path}.{payload}", "the mask is empty; at least one voxel must be set")
                runs = None
        if runs is None or grid is None or path + ".shape" in self.errors:
            return None, grid, None
        starts, ends = runs
        voxels = int((ends - starts).sum())
        return ({"series_uid": grid.series.series_uid, "shape": shape,
                 "rle": _counts_from_runs(starts, ends, math.prod(shape)), "voxels": voxels,
                 "volume_ml": voxels * grid.voxel_mm3 / 1000 if grid.voxel_mm3 is not None else None,
                 "slices": _slices_with_voxels(starts, ends, shape[1] * shape[2], shape[0])}, grid, runs)

    def runs_from_rle(self, counts, path: str, size: int) -> tuple | None:
        if not isinstance(counts, list | tuple):
            self.add(path, "expected a list of run lengths")
            return None
        bad = [n for n, count in enumerate(counts) if not _is_count(count)]
        if bad:
            more = f" ({len(bad)} runs are bad)" if len(bad) > 1 else ""
            self.add(path, f"run {bad[0]} is {counts[bad[0]]!r}; run lengths are non-negative integers{more}")
            return None
        total = sum(int(count) for count in counts)
        if total != size:
            self.add(path, f"the runs cover {total} voxels; the shape has {size} (slices x rows x columns)")
            return None
        return _runs_from_counts(np.asarray([int(count) for count in counts], dtype=np.int64))

    def runs_from_packbits(self, data, path: str, size: int) -> tuple | None:
        if not isinstance(data, str):
            self.add(path, "expected a base64 string of numpy.packbits of the C-order mask")
            return None
        try:
            packed = base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError):
            self.add(path, "not valid base64")
            return None
        if len(packed) != (size + 7) // 8:
            self.add(path, f"{len(packed)} bytes; a packed mask of {size} voxels has {(size + 7) // 8}")
            return None
        return _runs_from_packbits(packed, size)

    # Pixel statistics

    def pixels(self, instance: InstanceGeom, frame: int, path: str) -> np.ndarray | None:
        array = np.asarray(self.read_pixels(instance.sop_instance_uid, frame), dtype=np.float64)
        if array.shape != (instance.rows, instance.columns):
            self.add(path, f"the stored pixels of {instance.sop_instance_uid} are {array.shape}, not "
                           f"({instance.rows}, {instance.columns}); the mean cannot be computed")
            return None
        return array

    def polygon_mean(self, ref: _ImageRef, points: list, path: str) -> float | None:
        inside = polygon_mask(points, (ref.instance.rows, ref.instance.columns))
        if not inside.any():
            self.add(f"{path}.points", "the polygon covers no pixel centre; the mean cannot be computed")
            return None
        array = self.pixels(ref.instance, ref.frame, path)
        return None if array is None else float(array[inside].mean())

    def mask_mean(self, grid: _Grid, runs: tuple, slices: list[int], path: str) -> float | None:
        total, count = 0.0, 0
        columns, rows, _ = grid.dims
        for k in slices:
            array = self.pixels(grid.series.instances[k], 1, path)
            if array is None:
                return None
            inside = _slice_of_runs(*runs, k, rows, columns)
            total += float(array[inside].sum())
            count += int(inside.sum())
        return total / count

    # References and fields

    def instance(self, uid, path: str) -> tuple[InstanceGeom, int] | None:
        if not isinstance(uid, str):
            self.add(path, "expected a SOP Instance UID (string)")
            return None
        instance = self.study.instance(uid)
        if instance is None:
            self.add(path, f"{uid} is not an instance of study {self.study.study_uid}")
            return None
        if self.task_series_uid and instance.series_uid != self.task_series_uid:
            self.add(path, f"the instance belongs to series {instance.series_uid}; this task is for series "
                           f"{self.task_series_uid}")
            return None
        return instance, self.study.slice_index(uid)

    def series(self, uid, path: str) -> SeriesGeom | None:
        if not isinstance(uid, str):
            self.add(path, "expected a Series Instance UID (string)")
            return None
        series = self.study.series.get(uid)
        if series is None:
            self.add(path, f"{uid} is not a series of study {self.study.study_uid}")
            return None
        if self.task_series_uid and uid != self.task_series_uid:
            self.add(path, f"this task is for series {self.task_series_uid}")
            return None
        if not series.instances:
            self.add(path, "the series has no instances")
            return None
        return series

    def grid(self, uid, path: str) -> _Grid | None:
        series = self.series(uid, path) if uid is not None else None
        if series is None:
            return None
        if series.series_uid not in self._grids:
            self._grids[series.series_uid] = _grid_of(series)
        grid = self._grids[series.series_uid]
        if grid.problem:
            self.add(path, grid.problem)
            return None
        return grid

    def image_ref(self, obj: dict, path: str) -> _ImageRef | None:
        found = None
        if "sop_instance_uid" in obj:
            found = self.instance(obj["sop_instance_uid"], f"{path}.sop_instance_uid")
        frame = self.integer(obj.get("frame", 1), f"{path}.frame")
        if found is None or frame is None:
            return None
        instance, k = found
        frames = max(instance.frames, 1)
        if not 1 <= frame <= frames:
            self.add(f"{path}.frame", f"frame {frame} is outside the instance (1..{frames})")
            return None
        return _ImageRef(instance, k, frame)

    def points(self, value, path: str, ref: _ImageRef | None, fewest: int, most: int) -> list | None:
        wanted = f"exactly {fewest}" if fewest == most else f"{fewest} to {most}"
        if not isinstance(value, list | tuple):
            self.add(path, f"expected a list of {wanted} [x, y] points")
            return None
        if not fewest <= len(value) <= most:
            self.add(path, f"{len(value)} points; expected {wanted}")
            return None
        points, ok = [], True
        for n, item in enumerate(value):
            where = f"{path}[{n}]"
            if not isinstance(item, list | tuple) or len(item) != 2:
                self.add(where, "expected a point [x, y]")
                ok = False
                continue
            x, y = self.number(item[0], f"{where}[0]"), self.number(item[1], f"{where}[1]")
            if x is None or y is None:
                ok = False
            elif ref and not (0 <= x <= ref.instance.columns and 0 <= y <= ref.instance.rows):
                self.add(where, f"({x:g}, {y:g}) is outside the image (x 0..{ref.instance.columns}, "
                                f"y 0..{ref.instance.rows})")
                ok = False
            else:
                points.append((float(x), float(y)))
        return points if ok else None

    def vector(self, value, path: str, *, integer: bool) -> list | None:
        if not isinstance(value, list | tuple) or len(value) != 3:
            self.add(path, "expected three numbers" + (" (column, row, slice)" if integer else " (x, y, z)"))
            return None
        parse = self.integer if integer else self.number
        items = [parse(item, f"{path}[{axis}]") for axis, item in enumerate(value)]
        if None in items:
            return None
        return [int(v) for v in items] if integer else [float(v) for v in items]

    def number(self, value, path: str) -> float | int | None:
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            self.add(path, "expected a number, not a boolean" if isinstance(value, bool) else "expected a number")
            return None
        try:
            finite = math.isfinite(value)
        except OverflowError:
            finite = False
        if not finite:
            self.add(path, f"{value!r} is not a finite number")
            return None
        return value

    def integer(self, value, path: str) -> int | None:
        number = self.number(value, path)
        if number is None:
            return None
        if isinstance(number, numbers.Integral):
            return int(number)
        if not float(number).is_integer():
            self.add(path, f"{number!r} is not an integer")
            return None
        return int(number)

    def within(self, value, low: float, high: float, path: str, message: str) -> bool:
        if value is None:
            return False
        if not low <= value <= high:
            self.add(path, f"{value:g} is {message}")
            return False
        return True

    def required_value(self, raw: dict, path: str, why: str) -> float | None:
        if "value" not in raw:
            self.add(f"{path}.value", why)
            return None
        number = self.number(raw["value"], f"{path}.value")
        return None if number is None else float(number)

    def agree(self, raw: dict, path: str, computed: float, unit: str) -> None:
        if "value" not in raw:
            return
        sent = self.number(raw["value"], f"{path}.value")
        tolerance = max(abs(computed) * 0.01, ABSOLUTE_TOLERANCE.get(unit, 0.0))
        if sent is not None and abs(sent - computed) > tolerance:
            self.add(f"{path}.value", f"{sent:g} does not match the value computed from the geometry "
                                      f"({computed:.4g} {unit}; tolerance {tolerance:.3g})")

    def one_of(self, raw: dict, path: str, names: tuple[str, str]) -> str | None:
        present = [name for name in names if name in raw]
        if not present:
            self.add(f"{path}.{names[0]}", f"required: give {names[0]} or {names[1]}")
            return None
        if len(present) > 1:
            self.add(f"{path}.{names[1]}", f"give {names[0]} or {names[1]}, not both")
            return None
        return present[0]

    def known_fields(self, raw: dict, path: str, allowed: tuple[str, ...]) -> None:
        for key in raw:
            if key not in allowed:
                self.add(f"{path}.{key}", f"unknown field; allowed: {', '.join(allowed)}")

    def fields(self, value, path: str, required: tuple[str, ...], optional: tuple[str, ...]) -> dict | None:
        if not isinstance(value, dict):
            self.add(path, f"expected an object with {', '.join(required)}")
            return None
        self.known_fields(value, path, required + optional)
        for key in required:
            if key not in value:
                self.add(f"{path}.{key}", "required")
        return value


def _is_count(count) -> bool:
    if type(count) is int:
        return count >= 0
    return type(count) is float and count.is_integer() and count >= 0
