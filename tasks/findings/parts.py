"""The parts a findings payload is built of (boxes, polygons, lines, points, masks, references to
instances and series, numbers), each read against the study's geometry with every error named by
its path; tasks.findings.validation builds findings from them."""

from __future__ import annotations

import base64
import binascii
import itertools
import math
import numbers
from functools import lru_cache

import numpy as np

from tasks.findings.geometry import (
    AREA,
    AXES,
    LENGTH,
    MEAN_HU,
    ImageRef,
    InstanceGeom,
    LabelSpec,
    SeriesGeom,
    StudyGeom,
    VoxelGrid,
    grid_of,
)
from tasks.findings.masks import (
    counts_from_runs,
    polygon_mask,
    runs_from_counts,
    runs_from_packbits,
    shoelace,
    slice_of_runs,
    slices_with_voxels,
)

MAX_POLYGON_POINTS = 10_000
# A client's value must agree with the server's within 1%, or within half a base unit of the measure.
ABSOLUTE_TOLERANCE = {LENGTH: 0.5, AREA: 0.5, "mm3": 0.5, "ml": 0.0005, MEAN_HU: 0.5}


class PayloadReader:
    """Reads the parts of one payload; ``errors`` collects every problem by path."""

    def __init__(self, labels, study, pixel_reader, task_series_uid):
        self.labels: dict[str, LabelSpec] = labels
        self.study: StudyGeom = study
        self.task_series_uid: str | None = task_series_uid
        self.read_pixels = lru_cache(maxsize=8)(pixel_reader) if pixel_reader else None
        self.errors: dict[str, list[str]] = {}
        self._grids: dict[str, VoxelGrid] = {}

    def add(self, path: str, message: str) -> None:
        self.errors.setdefault(path, []).append(message)


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

    def polygon(self, value, path: str) -> tuple[dict | None, ImageRef | None, list | None]:
        obj = self.fields(value, path, ("sop_instance_uid", "points"), ("frame",))
        if obj is None:
            return None, None, None
        ref = self.image_ref(obj, path)
        points = self.points(obj["points"], f"{path}.points", ref, 3, MAX_POLYGON_POINTS) if "points" in obj else None
        if points and shoelace(points) < 1e-9:
            self.add(f"{path}.points", "the points are collinear; a polygon needs a non-zero area")
            points = None
        if not ref or not points:
            return None, ref, None
        return ref.normalised() | {"points": [list(p) for p in points]}, ref, points

    def line(self, value, path: str) -> tuple[dict | None, ImageRef | None, list | None]:
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

    def mask(self, value, path: str) -> tuple[dict | None, VoxelGrid | None, tuple | None]:
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
                 "rle": counts_from_runs(starts, ends, math.prod(shape)), "voxels": voxels,
                 "volume_ml": voxels * grid.voxel_mm3 / 1000 if grid.voxel_mm3 is not None else None,
                 "slices": slices_with_voxels(starts, ends, shape[1] * shape[2], shape[0])}, grid, runs)

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
        return runs_from_counts(np.asarray([int(count) for count in counts], dtype=np.int64))

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
        return runs_from_packbits(packed, size)

    # Pixel statistics

    def pixels(self, instance: InstanceGeom, frame: int, path: str) -> np.ndarray | None:
        array = np.asarray(self.read_pixels(instance.sop_instance_uid, frame), dtype=np.float64)
        if array.shape != (instance.rows, instance.columns):
            self.add(path, f"the stored pixels of {instance.sop_instance_uid} are {array.shape}, not "
                           f"({instance.rows}, {instance.columns}); the mean cannot be computed")
            return None
        return array

    def polygon_mean(self, ref: ImageRef, points: list, path: str) -> float | None:
        inside = polygon_mask(points, (ref.instance.rows, ref.instance.columns))
        if not inside.any():
            self.add(f"{path}.points", "the polygon covers no pixel centre; the mean cannot be computed")
            return None
        array = self.pixels(ref.instance, ref.frame, path)
        return None if array is None else float(array[inside].mean())

    def mask_mean(self, grid: VoxelGrid, runs: tuple, slices: list[int], path: str) -> float | None:
        total, count = 0.0, 0
        columns, rows, _ = grid.dims
        for k in slices:
            array = self.pixels(grid.series.instances[k], 1, path)
            if array is None:
                return None
            inside = slice_of_runs(*runs, k, rows, columns)
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

    def grid(self, uid, path: str) -> VoxelGrid | None:
        series = self.series(uid, path) if uid is not None else None
        if series is None:
            return None
        if series.series_uid not in self._grids:
            self._grids[series.series_uid] = grid_of(series)
        grid = self._grids[series.series_uid]
        if grid.problem:
            self.add(path, grid.problem)
            return None
        return grid

    def image_ref(self, obj: dict, path: str) -> ImageRef | None:
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
        return ImageRef(instance, k, frame)

    def points(self, value, path: str, ref: ImageRef | None, fewest: int, most: int) -> list | None:
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

