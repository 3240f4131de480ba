"""Label specs and a study's geometry: pixel grids, slices and patient space.

Conventions: 2D coordinates are pixel coordinates with the image spanning 0..columns (x) and
0..rows (y), so pixel (row r, column c) has its centre at (c + 0.5, r + 0.5); voxel indices are
(column i, row j, slice k), boxes inclusive-exclusive; patient coordinates are DICOM LPS millimetres.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

LENGTH, AREA, MEAN_HU = "mm", "mm2", "[hnsf'U]"
MM3_PER_UNIT = {"ml": 1000.0, "mm3": 1.0}
GEOMETRY_BY_UNIT = {LENGTH: ("line",), AREA: ("polygon",), "ml": ("mask",), "mm3": ("mask",),
                    MEAN_HU: ("polygon", "mask")}
AXES = ("column", "row", "slice")


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


@dataclass(frozen=True)
class VoxelGrid:
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


def grid_of(series: SeriesGeom) -> VoxelGrid:
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
        return VoxelGrid(series, dims, problem, None, None, "the series has no ImagePositionPatient, "
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
        return VoxelGrid(series, dims, problem, None, None,
                     "the series has no slice spacing; patient coordinates cannot be used", voxel_mm3)
    # DICOM PS3.3 C.7.6.2.1.1: column index i moves along the row cosines by the column spacing (PixelSpacing[1]).
    matrix = np.column_stack((row_cosines * column_spacing, column_cosines * row_spacing, step))
    if abs(np.linalg.det(matrix)) < 1e-9:
        return VoxelGrid(series, dims, problem, None, None,
                     "the series geometry is degenerate; patient coordinates cannot be used", voxel_mm3)
    return VoxelGrid(series, dims, problem, np.asarray(first.position, float), matrix, None, voxel_mm3)


@dataclass(frozen=True)
class ImageRef:
    instance: InstanceGeom
    k: int
    frame: int

    def normalised(self) -> dict:
        return {"sop_instance_uid": self.instance.sop_instance_uid, "series_uid": self.instance.series_uid,
                "slice": self.k, "frame": self.frame}


