"""Series geometry checks and 3-D volumes from DICOM images (numpy and pydicom only).

Coordinates are DICOM patient coordinates (LPS: x to the patient's left, y to posterior, z to head) in mm
(PS3.3 C.7.6.2.1.1). ImageOrientationPatient holds the row direction (the way column index i grows)
and then the column direction (the way row index j grows); PixelSpacing is (between rows, between columns).
"""

from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import pydicom
from pydicom.dataset import Dataset

# Cosines written as 16-character DS strings by different writers differ in the last digits.
ORIENTATION_TOLERANCE = 1e-3
# Slices closer than this along the normal are the same position.
DUPLICATE_TOLERANCE_MM = 0.01
MISSING_GAP_FACTOR = 1.5


@dataclass(frozen=True)
class SliceGeometry:
    """Where one image (or one frame of an enhanced multi-frame image) sits in patient space."""

    sop_instance_uid: str
    position: tuple[float, float, float] | None
    orientation: tuple[float, float, float, float, float, float] | None
    pixel_spacing: tuple[float, float] | None
    slice_thickness: float | None
    rows: int
    columns: int
    image_type: tuple[str, ...] = ()
    instance_number: int | None = None
    frames: int = 1
    frame_index: int = 0

    @property
    def is_localizer(self) -> bool:
        return any(str(value).upper() == "LOCALIZER" for value in self.image_type)

    @property
    def normal(self) -> np.ndarray | None:
        if self.orientation is None:
            return None
        return np.cross(self.orientation[:3], self.orientation[3:])


@dataclass
class Volume:
    """Voxels as array[k, j, i] (slice, row, column), float32 modality values (HU for CT).

    ``affine`` maps the column vector (i, j, k, 1), i.e. (column, row, slice), to LPS mm; slice k=0 is
    the most negative along the slice normal (row cosine x column cosine). ``spacing`` is (slice, row,
    column) in mm, the slice spacing being centre to centre, not SliceThickness. For NIfTI use
    ``nibabel.Nifti1Image(volume.array.transpose(2, 1, 0), volume.affine_ras())``.
    """

    array: np.ndarray
    affine: np.ndarray
    spacing: tuple[float, float, float]
    sop_instance_uids: tuple[str, ...] = field(default=())

    def affine_ras(self) -> np.ndarray:
        """The affine in RAS+ (NIfTI, nibabel): LPS with the first two axes flipped."""
        return np.diag([-1.0, -1.0, 1.0, 1.0]) @ self.affine


def _floats(value, n: int) -> tuple[float, ...] | None:
    if value is None or isinstance(value, str | bytes):
        return None
    try:
        values = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        return None
    if len(values) != n or not all(np.isfinite(values)):
        return None
    return values


def _float(value) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if np.isfinite(number) else None


def _int(value) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _strings(value) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    return tuple(str(v) for v in value)


def _functional(item: Dataset, shared: Dataset, sequence: str, keyword: str):
    # Per-frame groups override shared ones (PS3.3 C.7.6.16).
    for source in (item, shared):
        nested = source.get(sequence)
        if nested and keyword in nested[0]:
            return nested[0].get(keyword)
    return None


def geometry_of(ds: Dataset) -> list[SliceGeometry]:
    """One SliceGeometry per image, or per frame of an enhanced multi-frame image (functional groups)."""
    common = {
        "sop_instance_uid": str(ds.get("SOPInstanceUID", "")),
        "rows": _int(ds.get("Rows")) or 0,
        "columns": _int(ds.get("Columns")) or 0,
        "image_type": tuple(v.upper() for v in _strings(ds.get("ImageType"))),
        "instance_number": _int(ds.get("InstanceNumber")),
        "frames": _int(ds.get("NumberOfFrames")) or 1,
    }
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    if per_frame:
        shared_seq = ds.get("SharedFunctionalGroupsSequence")
        shared = shared_seq[0] if shared_seq else Dataset()
        return [SliceGeometry(
            position=_floats(_functional(item, shared, "PlanePositionSequence", "ImagePositionPatient"), 3),
            orientation=_floats(_functional(item, shared, "PlaneOrientationSequence", "ImageOrientationPatient"), 6),
            pixel_spacing=_floats(_functional(item, shared, "PixelMeasuresSequence", "PixelSpacing"), 2),
            slice_thickness=_float(_functional(item, shared, "PixelMeasuresSequence", "SliceThickness")),
            frame_index=index,
            **common,
        ) for index, item in enumerate(per_frame)]
    return [SliceGeometry(
        position=_floats(ds.get("ImagePositionPatient"), 3),
        orientation=_floats(ds.get("ImageOrientationPatient"), 6),
        pixel_spacing=_floats(ds.get("PixelSpacing"), 2),
        slice_thickness=_float(ds.get("SliceThickness")),
        **common,
    )]


def _issue(code: str, detail: str) -> dict:
    return {"code": code, "detail": detail}


def _uids(geoms: list[SliceGeometry], limit: int = 5) -> str:
    uids = list(dict.fromkeys(g.sop_instance_uid for g in geoms))
    shown = ", ".join(uids[:limit])
    return shown + (f" and {len(uids) - limit} more" if len(uids) > limit else "")


def _orientation_groups(geoms: list[SliceGeometry]) -> list[list[SliceGeometry]]:
    groups: list[list[SliceGeometry]] = []
    for g in geoms:
        for group in groups:
            if np.allclose(group[0].orientation, g.orientation, rtol=0, atol=ORIENTATION_TOLERANCE):
                group.append(g)
                break
        else:
            groups.append([g])
    return sorted(groups, key=len, reverse=True)


def _strays_look_like_localizers(majority: int, strays: int) -> bool:
    # A few images across the plane of many are scouts filed into the series; a real split is not.
    return strays <= max(3, (majority + strays) // 10) and majority >= 2 * strays


@dataclass
class _Partition:
    kept: list[SliceGeometry]
    issues: list[dict]


def _partition(geoms: list[SliceGeometry]) -> _Partition:
    """The images that should form the volume, and what was wrong with the rest."""
    issues: list[dict] = []
    if not geoms:
        return _Partition([], [_issue("no_geometry", "the series has no images")])
    localizers = [g for g in geoms if g.is_localizer]
    rest = [g for g in geoms if not g.is_localizer]
    if localizers and rest:
        issues.append(_issue("localizer_mixed_in", f"{len(localizers)} image(s) with LOCALIZER in ImageType: "
                                                   f"{_uids(localizers)}"))
    rest = rest or geoms
    located = [g for g in rest if g.position is not None and g.orientation is not None]
    unspaced = [g for g in located if g.pixel_spacing is None]
    if len(located) < len(rest) or unspaced:
        parts = []
        if len(located) < len(rest):
            parts.append(f"{len(rest) - len(located)} of {len(rest)} image(s) lack ImagePositionPatient or "
                         f"ImageOrientationPatient")
        if unspaced:
            parts.append(f"{len(unspaced)} lack PixelSpacing")
        issues.append(_issue("no_geometry", "; ".join(parts)))
    if not located:
        return _Partition([], issues)
    groups = _orientation_groups(located)
    majority = groups[0]
    strays = [g for group in groups[1:] for g in group]
    if strays and _strays_look_like_localizers(len(majority), len(strays)):
        issues.append(_issue("localizer_mixed_in", f"{len(strays)} image(s) oriented unlike the other "
                                                   f"{len(majority)} look like localizers: {_uids(strays)}"))
    elif strays:
        described = "; ".join(f"{len(group)} image(s) at {[round(c, 3) for c in group[0].orientation]}"
                              for group in groups)
        issues.append(_issue("mixed_orientation", f"{len(groups)} different orientations: {described}"))
    return _Partition(majority, issues)


def _spacing_issues(geoms: list[SliceGeometry]) -> list[dict]:
    issues = []
    sizes = Counter((g.rows, g.columns) for g in geoms)
    spacings = Counter(tuple(round(v, 4) for v in g.pixel_spacing) for g in geoms if g.pixel_spacing)
    if len(sizes) > 1 or len(spacings) > 1:
        parts = []
        if len(sizes) > 1:
            parts.append("sizes " + ", ".join(f"{r}x{c} ({n})" for (r, c), n in sizes.most_common()))
        if len(spacings) > 1:
            parts.append("pixel spacings " + ", ".join(f"{list(s)} ({n})" for s, n in spacings.most_common()))
        issues.append(_issue("mixed_size", "; ".join(parts)))

    normal = geoms[0].normal
    ordered = sorted(geoms, key=lambda g: float(np.dot(g.position, normal)))
    distances = np.array([np.dot(g.position, normal) for g in ordered])
    unique = [0]
    duplicated: list[tuple[float, list[SliceGeometry]]] = []
    for k in range(1, len(ordered)):
        if distances[k] - distances[unique[-1]] <= DUPLICATE_TOLERANCE_MM:
            if duplicated and duplicated[-1][0] == distances[unique[-1]]:
                duplicated[-1][1].append(ordered[k])
            else:
                duplicated.append((distances[unique[-1]], [ordered[unique[-1]], ordered[k]]))
        else:
            unique.append(k)
    if duplicated:
        where = "; ".join(f"{len(group)} images at {d:.2f} mm ({_uids(group, 3)})" for d, group in duplicated[:5])
        issues.append(_issue("duplicate_slices", f"{len(duplicated)} position(s) hold more than one image: {where}"))

    positions = distances[unique]
    if len(positions) < 3:
        return issues
    gaps = np.diff(positions)
    median = float(np.median(gaps))
    missing = np.flatnonzero(gaps > MISSING_GAP_FACTOR * median)
    if len(missing):
        where = "; ".join(f"{gaps[k]:.2f} mm between {positions[k]:.2f} and {positions[k + 1]:.2f} mm "
                          f"(about {max(1, round(gaps[k] / median) - 1)} missing)" for k in missing[:5])
        issues.append(_issue("missing_slices", f"{len(missing)} gap(s) wider than {MISSING_GAP_FACTOR}x the median "
                                               f"spacing of {median:.2f} mm along the slice normal: {where}"))
    regular = gaps[gaps <= MISSING_GAP_FACTOR * median]
    tolerance = max(DUPLICATE_TOLERANCE_MM, 0.01 * median)
    if len(regular) > 1 and float(regular.max() - regular.min()) > tolerance:
        issues.append(_issue("uneven_spacing", f"slice spacing varies from {regular.min():.3f} to "
                                               f"{regular.max():.3f} mm (tolerance {tolerance:.3f} mm)"))
    return issues


def check_series(geoms: list[SliceGeometry]) -> list[dict]:
    """Geometry problems of one series as [{"code", "detail"}]; empty for a clean series.

    Codes: missing_slices, duplicate_slices, uneven_spacing, mixed_orientation, mixed_size,
    localizer_mixed_in, no_geometry. Spacing and size are judged on the majority orientation without localizers.
    """
    partition = _partition(list(geoms))
    if not partition.kept:
        return partition.issues
    return partition.issues + _spacing_issues(partition.kept)


def _rescale(ds: Dataset, frame_index: int) -> tuple[float, float]:
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    if per_frame:
        shared_seq = ds.get("SharedFunctionalGroupsSequence")
        shared = shared_seq[0] if shared_seq else Dataset()
        item = per_frame[frame_index]
        slope = _functional(item, shared, "PixelValueTransformationSequence", "RescaleSlope")
        intercept = _functional(item, shared, "PixelValueTransformationSequence", "RescaleIntercept")
        if slope is not None or intercept is not None:
            return _float(slope) or 1.0, _float(intercept) or 0.0
    return _float(ds.get("RescaleSlope")) or 1.0, _float(ds.get("RescaleIntercept")) or 0.0


def decode_frames(ds: Dataset) -> np.ndarray:
    """Stored pixels as (frames, rows, columns) float32 modality values; raises ValueError if undecodable or colour."""
    uid = str(ds.get("SOPInstanceUID", "?"))
    if (_int(ds.get("SamplesPerPixel")) or 1) != 1:
        raise ValueError(f"{uid}: colour images ({ds.get('PhotometricInterpretation')}) cannot form a volume")
    # pydicom picks an installed decoder: python-gdcm and pylibjpeg-openjpeg cover JPEG Lossless,
    # JPEG 2000 and JPEG-LS, pydicom itself RLE. Pillow and pyjpegls cannot decode JPEG Lossless or
    # 12-bit JPEG Extended; pylibjpeg-libjpeg could, but it is GPL-3, so we do not use it and such
    # (rare, older NM/XA) files are refused here.
    try:
        pixels = ds.pixel_array
    except Exception as exc:  # pydicom raises RuntimeError, NotImplementedError, ValueError, AttributeError
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        name = syntax.name if syntax is not None else "unknown transfer syntax"
        raise ValueError(f"{uid}: cannot decode pixel data ({name}): {exc}") from exc
    frames = _int(ds.get("NumberOfFrames")) or 1
    pixels = pixels.reshape((frames, *pixels.shape[-2:]))
    out = np.empty(pixels.shape, dtype=np.float32)
    for index in range(frames):
        slope, intercept = _rescale(ds, index)
        out[index] = pixels[index].astype(np.float32) * np.float32(slope) + np.float32(intercept)
    return out


def load_volume(datasets: list[pydicom.Dataset]) -> Volume:
    """Stack one series into a Volume ordered along the slice normal; localizers are left out.

    Raises ValueError naming the problem for anything else check_series reports, for classic
    multi-frame images without per-frame geometry, and for colour or undecodable pixel data.
    """
    if not datasets:
        raise ValueError("no images to build a volume from")
    owners: dict[int, Dataset] = {}
    geoms: list[SliceGeometry] = []
    for ds in datasets:
        for g in geometry_of(ds):
            if g.frames > 1 and "PerFrameFunctionalGroupsSequence" not in ds:
                raise ValueError(f"{g.sop_instance_uid}: a multi-frame image without per-frame geometry "
                                 f"(PerFrameFunctionalGroupsSequence) is not a volume")
            owners[id(g)] = ds
            geoms.append(g)
    partition = _partition(geoms)
    issues = [i for i in partition.issues if i["code"] != "localizer_mixed_in"]
    if partition.kept:
        issues += _spacing_issues(partition.kept)
    if issues or not partition.kept:
        raise ValueError("inconsistent series: " + "; ".join(f"{i['code']}: {i['detail']}" for i in issues))

    normal = partition.kept[0].normal
    ordered = sorted(partition.kept, key=lambda g: float(np.dot(g.position, normal)))
    first, last = ordered[0], ordered[-1]
    row_spacing, column_spacing = first.pixel_spacing
    if len(ordered) > 1:
        # From first to last position, not the normal: gantry-tilted CT steps obliquely (a sheared affine).
        step = (np.array(last.position) - np.array(first.position)) / (len(ordered) - 1)
    else:
        ds = owners[id(first)]
        step = normal * (_float(ds.get("SpacingBetweenSlices")) or first.slice_thickness or 1.0)
    affine = np.eye(4)
    affine[:3, 0] = np.array(first.orientation[:3]) * column_spacing
    affine[:3, 1] = np.array(first.orientation[3:]) * row_spacing
    affine[:3, 2] = step
    affine[:3, 3] = first.position

    array = np.empty((len(ordered), first.rows, first.columns), dtype=np.float32)
    decoded: dict[int, np.ndarray] = {}
    for k, g in enumerate(ordered):
        ds = owners[id(g)]
        if id(ds) not in decoded:
            decoded[id(ds)] = decode_frames(ds)
        array[k] = decoded[id(ds)][g.frame_index]
    return Volume(array=array, affine=affine, spacing=(float(np.linalg.norm(step)), row_spacing, column_spacing),
                  sop_instance_uids=tuple(g.sop_instance_uid for g in ordered))
