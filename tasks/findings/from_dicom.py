"""A DICOM SEG or TID 1500 SR a viewer saved, turned into a read's findings in the submission form.

Pure pydicom and numpy: the caller checks the references (``referenced_instance_uids``,
``object_study_uid``), runs ``validate_findings`` on ``ObjectFindings.findings`` and stores the object.

=================================  ==========================================================================
Object                             Findings
=================================  ==========================================================================
Label Map SEG (66.7), binary SEG   one ``mask`` per segment and source series; frames placed by their source
                                   reference (DerivationImageSequence), else by ImagePositionPatient
Fractional SEG                     refused (422): a probability is not a reader's mask
TID 1500 SR, per measurement group one finding, its shape read as the label's kind takes it:
  POLYLINE of 2 points             ``line`` (measurement in mm); a bidirectional gives its long axis
  POINT                            ``point`` (landmark); an arrow's tip (the first point)
  closed POLYLINE / freehand       ``polygon`` (polygon label, or a measurement in mm2 or HU)
  axis-aligned rectangle           ``bbox`` (box label) or ``polygon``
  ELLIPSE, CIRCLE                  ``bbox`` enclosing it (box label) or a polygon of ``ELLIPSE_VERTICES``
  SCOORD3D                         the same, projected onto the slice of the series it lies on
=================================  ==========================================================================

Labels: a segment or group goes to the schema label whose code (scheme and value) it carries (segment:
SegmentedPropertyType; group: Finding or Finding Site), else whose key or code meaning equals its text
(SegmentLabel; the group's Comment, the Finding or Finding Site meaning, which is where OHIF's adapters put
the label the reader typed; the Tracking Identifier), case-insensitive, among the labels whose kind takes
its shape.
Values the viewer measured are not carried: radqueue computes every value from the geometry, as for a
JSON submit with geometry. SCOORD pixel coordinates are as PS3.3 C.18.6.1.1 defines them (0,0 the top left
corner of the top left pixel), which is radqueue's convention too.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np
import pydicom

from tasks.findings.geometry import AREA, LENGTH, MEAN_HU, MM3_PER_UNIT, LabelSpec, SeriesGeom, StudyGeom, grid_of
from tasks.findings.masks import counts_from_runs, merge_runs

SEGMENTATION = "1.2.840.10008.5.1.4.1.1.66.4"
LABEL_MAP_SEGMENTATION = "1.2.840.10008.5.1.4.1.1.66.7"
ENHANCED_SR = "1.2.840.10008.5.1.4.1.1.88.22"
COMPREHENSIVE_SR = "1.2.840.10008.5.1.4.1.1.88.33"
COMPREHENSIVE_3D_SR = "1.2.840.10008.5.1.4.1.1.88.34"
SR_CLASSES = (ENHANCED_SR, COMPREHENSIVE_SR, COMPREHENSIVE_3D_SR)
ELLIPSE_VERTICES = 64  # the polygon's area is 0.16 % below the ellipse's: inside the checker's 1 % tolerance
POSITION_TOLERANCE = 0.1  # voxels: how far a frame's ImagePositionPatient may sit from a slice's origin

MEASUREMENT_REPORT = ("DCM", "126000")
IMAGING_MEASUREMENTS = ("DCM", "126010")
MEASUREMENT_GROUP = ("DCM", "125007")
TRACKING_IDENTIFIER = ("DCM", "112039")
FINDING = ("DCM", "121071")
FINDING_SITES = {("SCT", "363698007"), ("SRT", "G-C0E3")}
COMMENT = ("DCM", "121106")  # where cornerstone's newer adapters put the label the reader typed
# Cornerstone's private SCOORDs beside the region: where the label's text box sits, a spline's control points.
SECONDARY_REGIONS = {("99CS3D", "TextPosition"), ("99CS3D", "ControlPoints")}
LONG_AXIS = {("SCT", "103339001"), ("SRT", "G-A185")}
SHORT_AXIS = {("SCT", "103340004"), ("SRT", "G-A186")}


class ObjectRefused(ValueError):
    """Why an object cannot become findings: an HTTP ``status``, a machine-readable ``code`` and ``details``
    (a JSON-ready dict; ``allowed_labels`` by kind for unknown labels, ``reference`` for a bad reference)."""

    def __init__(self, message: str, *, status: int, code: str, details: dict | None = None):
        super().__init__(message)
        self.message, self.status, self.code, self.details = message, status, code, details or {}


@dataclass(frozen=True)
class ObjectFindings:
    """The raw findings payload an object gives (for ``validate_findings``), and which object it came from."""

    sop_class_uid: str
    sop_instance_uid: str
    series_uid: str
    study_uid: str
    findings: list[dict]
    notes: list[str] = field(default_factory=list)  # what of the object was not carried, and why


def object_study_uid(ds: pydicom.Dataset) -> str:
    return str(ds.get("StudyInstanceUID", ""))


def referenced_instance_uids(ds: pydicom.Dataset) -> list[str]:
    """Every SOP Instance UID the object references (sources, evidence), first occurrence first."""
    seen: dict[str, None] = {}
    if ds.get("SOPClassUID") in (SEGMENTATION, LABEL_MAP_SEGMENTATION):
        for frame in ds.get("PerFrameFunctionalGroupsSequence", []):
            for uid, _ in _frame_sources(frame):
                seen.setdefault(uid, None)
        # cornerstone's label map export also lists its sources in a top-level SourceImageSequence.
        items: Iterable = (*ds.get("SourceImageSequence", []),
                           *(i for series in ds.get("ReferencedSeriesSequence", [])
                             for i in series.get("ReferencedInstanceSequence", [])))
    else:
        items = _walk_references(ds.get("ContentSequence", []))
        evidence = (i for name in ("CurrentRequestedProcedureEvidenceSequence", "PertinentOtherEvidenceSequence")
                    for study in ds.get(name, []) for s in study.get("ReferencedSeriesSequence", [])
                    for i in s.get("ReferencedSOPSequence", []))
        items = (*items, *evidence)
    for item in items:
        if uid := item.get("ReferencedSOPInstanceUID"):
            seen.setdefault(str(uid), None)
    return list(seen)


def findings_from_object(ds: pydicom.Dataset, *, labels: dict[str, LabelSpec], study: StudyGeom,
                         task_series_uid: str | None) -> ObjectFindings:
    """The findings a SEG or TID 1500 SR holds; ObjectRefused (nothing partial) when it cannot give them."""
    sop_class = str(ds.get("SOPClassUID", ""))
    if sop_class not in (SEGMENTATION, LABEL_MAP_SEGMENTATION, *SR_CLASSES):
        raise ObjectRefused(f"SOP class {sop_class or '(none)'} cannot be saved into a read; save a DICOM SEG "
                            "(binary or label map) or a TID 1500 measurement report (SR)",
                            status=400, code="unsupported_sop_class", details={"sop_class_uid": sop_class})
    if object_study_uid(ds) != study.study_uid:
        raise ObjectRefused(f"the object belongs to study {object_study_uid(ds)}, not the read's study "
                            f"{study.study_uid}", status=400,
                            code="reference_outside_read", details={"study_uid": object_study_uid(ds)})
    _check_references(referenced_instance_uids(ds), study, task_series_uid)
    is_segmentation = sop_class in (SEGMENTATION, LABEL_MAP_SEGMENTATION)
    converter = (_Segmentation if is_segmentation else _Report)(ds, labels, study, task_series_uid)
    try:
        findings = converter.findings()
    except ObjectRefused:
        raise
    except (AttributeError, KeyError, IndexError, TypeError, ValueError, NotImplementedError, RuntimeError) as exc:
        # Only the exception's type: its text could quote the object's values, and a response carries no PHI.
        what = "segmentation" if is_segmentation else "measurement report"
        raise ObjectRefused(f"the {what} cannot be read: an attribute it needs is missing or malformed, or its "
                            f"pixel data cannot be decoded ({type(exc).__name__})", status=400,
                            code="malformed_object") from exc
    return ObjectFindings(sop_class_uid=sop_class, sop_instance_uid=str(ds.get("SOPInstanceUID", "")),
                          series_uid=str(ds.get("SeriesInstanceUID", "")), study_uid=object_study_uid(ds),
                          findings=findings, notes=converter.notes)


def _check_references(uids: list[str], study: StudyGeom, task_series_uid: str | None) -> None:
    for uid in uids:
        instance = study.instance(uid)
        if instance is None:
            raise ObjectRefused(f"the object references instance {uid}, which is not part of the read's study",
                                status=400, code="reference_outside_read", details={"reference": uid})
        if task_series_uid and instance.series_uid != task_series_uid:
            raise ObjectRefused(f"the object references instance {uid} of another series than the read's",
                                status=400, code="reference_outside_read", details={"reference": uid})


# Labels


def _code(item, attribute: str = "ConceptNameCodeSequence") -> tuple[str, str, str] | None:
    sequence = item.get(attribute)
    if not sequence:
        return None
    code = sequence[0]
    value = code.get("CodeValue") or code.get("LongCodeValue") or code.get("URNCodeValue") or ""
    return str(code.get("CodingSchemeDesignator", "")), str(value), str(code.get("CodeMeaning", ""))


def _fold(text: str) -> str:
    return " ".join(str(text).split()).casefold()


class _Labels:
    """Resolves segments and measurement groups to schema labels; collects every failure before refusing."""

    def __init__(self, labels: dict[str, LabelSpec], what: str, takes: Callable[[LabelSpec], bool]):
        self.labels, self.what, self.takes = labels, what, takes
        self.unmatched: list[dict] = []
        self.mismatched: list[dict] = []

    def resolve(self, codes: Iterable[tuple[str, str, str]], texts: Iterable[str], where: dict,
                fits: Callable[[LabelSpec], bool]) -> LabelSpec | None:
        codes, texts = [c for c in codes if c], [t for t in texts if t and t.strip()]
        tiers = [[s for s in self.labels.values() if s.code_value and any(
            (scheme.upper(), value) == (s.coding_scheme.upper(), s.code_value) for scheme, value, _ in codes)]]
        tiers += [[s for s in self.labels.values() if _fold(text) in (_fold(s.key), _fold(s.code_meaning))]
                  for text in texts]
        for matched in tiers:
            if not matched:
                continue
            fitting = [s for s in matched if fits(s)]
            if fitting:
                return fitting[0]
            self.mismatched.append(where | {"label": matched[0].key, "label_kind": matched[0].kind})
            return None
        self.unmatched.append(where | {"texts": texts, "codes": [list(c) for c in codes]})
        return None

    def refuse_if_any(self) -> None:
        allowed: dict[str, list[str]] = {}
        for spec in sorted(self.labels.values(), key=lambda s: s.key):
            if self.takes(spec):
                allowed.setdefault(spec.kind, []).append(spec.key)
        listing = "; ".join(f"{kind}: {', '.join(keys)}" for kind, keys in allowed.items()) or "none"
        if self.unmatched:
            first = self.unmatched[0]
            name = ", ".join(repr(t) for t in first["texts"]) or "no label"
            raise ObjectRefused(f"{len(self.unmatched)} of the {self.what} match no label of this protocol (the "
                                f"first has {name}); the labels it allows are: {listing}", status=422,
                                code="unknown_label", details={"unmatched": self.unmatched, "allowed_labels": allowed})
        if self.mismatched:
            first = self.mismatched[0]
            raise ObjectRefused(f"{len(self.mismatched)} of the {self.what} name a label whose kind cannot hold them "
                                f"(the first names {first['label']!r}, a {first['label_kind']} label, for "
                                f"{first.get('shape', 'a segment')}); the labels it allows are: {listing}",
                                status=422, code="label_kind_mismatch",
                                details={"mismatched": self.mismatched, "allowed_labels": allowed})


def _takes_mask(spec: LabelSpec) -> bool:
    return spec.kind == "mask" or (spec.kind == "measurement" and (spec.unit in MM3_PER_UNIT or spec.unit == MEAN_HU))


# Segmentations


def _frame_sources(frame) -> list[tuple[str, int | None]]:
    sources = []
    for derivation in frame.get("DerivationImageSequence", []):
        for source in derivation.get("SourceImageSequence", []):
            if uid := source.get("ReferencedSOPInstanceUID"):
                number = source.get("ReferencedFrameNumber")
                if isinstance(number, pydicom.multival.MultiValue):
                    number = number[0] if number else None
                sources.append((str(uid), int(number) if number else None))
    return sources


def _functional(ds, frame, sequence: str, attribute: str):
    for groups in (frame, *ds.get("SharedFunctionalGroupsSequence", [])):
        if sequence in groups and groups[sequence].value and attribute in groups[sequence][0]:
            return groups[sequence][0].get(attribute)
    return None


class _Segmentation:
    def __init__(self, ds, labels, study: StudyGeom, task_series_uid):
        self.ds, self.study, self.task_series_uid = ds, study, task_series_uid
        self.labels = _Labels(labels, "segments", _takes_mask)
        self.notes: list[str] = []

    def findings(self) -> list[dict]:
        ds = self.ds
        is_label_map = ds.SOPClassUID == LABEL_MAP_SEGMENTATION or ds.get("SegmentationType") == "LABELMAP"
        if ds.get("SegmentationType") == "FRACTIONAL":
            raise ObjectRefused("fractional segmentations are not accepted: a read's mask is the reader's binary "
                                "decision; save a binary or label map segmentation", status=422,
                                code="fractional_segmentation")
        # A label map's pixels outside every segment hold 0 (PS3.3 C.8.20.2.3), which highdicom describes as
        # a "Background" segment; that segment is no reader's finding.
        background = {0, int(ds.get("PixelPaddingValue", 0) or 0)} if is_label_map else set()
        segments = {int(s.SegmentNumber): s for s in ds.get("SegmentSequence", [])
                    if int(s.SegmentNumber) not in background}
        chosen = {}
        for number, segment in segments.items():
            property_type = _code(segment, "SegmentedPropertyTypeCodeSequence")
            spec = self.labels.resolve([property_type], [str(segment.get("SegmentLabel", ""))],
                                       {"segment_number": number}, _takes_mask)
            if spec:
                chosen[number] = spec
        self.labels.refuse_if_any()
        frames = ds.pixel_array.reshape(-1, int(ds.Rows), int(ds.Columns))
        per_frame = ds.get("PerFrameFunctionalGroupsSequence", [])
        if len(per_frame) != len(frames):
            raise ObjectRefused(f"the segmentation has {len(frames)} frames but {len(per_frame)} per-frame "
                                "functional groups", status=400, code="malformed_object")
        # (segment number, series uid) -> slice k -> the pixels of that slice
        slices: dict[tuple[int, str], dict[int, np.ndarray]] = {}
        for n, (pixels, frame) in enumerate(zip(frames, per_frame, strict=True), start=1):
            series, k = self.place(frame, n)
            if is_label_map:
                present = [int(v) for v in np.flatnonzero(np.bincount(pixels.ravel())) if int(v) not in background]
                wanted = [(number, pixels == number) for number in present if number in chosen]
                unknown = [number for number in present if number not in segments]
                if unknown:
                    raise ObjectRefused(f"frame {n} holds value {unknown[0]}, which is no segment of the "
                                        "segmentation", status=400, code="malformed_object")
            else:
                number = _functional(ds, frame, "SegmentIdentificationSequence", "ReferencedSegmentNumber")
                if number is None or int(number) not in segments:
                    raise ObjectRefused(f"frame {n} names no segment of the segmentation", status=400,
                                        code="malformed_object")
                wanted = [(int(number), pixels.astype(bool))]
            for number, mask in wanted:
                if mask.any():
                    held = slices.setdefault((number, series.series_uid), {})
                    held[k] = held[k] | mask if k in held else mask
        findings = []
        for number, spec in chosen.items():
            placed = sorted(key for key in slices if key[0] == number)
            if not placed:
                self.notes.append(f"segment {number} ({spec.key}) is empty and gives no finding")
            for _, series_uid in placed:
                findings.append({"label": spec.key, "mask": self.mask(slices[(number, series_uid)], series_uid)})
        return findings

    def place(self, frame, n: int) -> tuple[SeriesGeom, int]:
        """The series and slice a frame was segmented on: its source reference, else its position."""
        rows, columns = int(self.ds.Rows), int(self.ds.Columns)
        sources = _frame_sources(frame)
        if sources:
            uid, source_frame = sources[0]
            instance = self.study.instance(uid)  # in the study: _check_references saw every source
            if instance.frames > 1 or (source_frame or 1) > 1:
                raise ObjectRefused(f"frame {n} was segmented on a multi-frame image; masks are kept per slice "
                                    "of a series of single-frame images", status=422, code="unsupported_source")
            if (instance.rows, instance.columns) != (rows, columns):
                raise ObjectRefused(f"frame {n} is {rows}x{columns} but its source image is {instance.rows}x"
                                    f"{instance.columns}; a segmentation must share its source's pixel grid",
                                    status=422, code="grid_mismatch")
            return self.study.series[instance.series_uid], self.study.slice_index(uid)
        position = _functional(self.ds, frame, "PlanePositionSequence", "ImagePositionPatient")
        if position is None:
            raise ObjectRefused(f"frame {n} names no source image and no ImagePositionPatient, so its slice is "
                                "unknown", status=422, code="unplaced_frame")
        orientation = _functional(self.ds, frame, "PlaneOrientationSequence", "ImageOrientationPatient")
        for series in self.candidate_series():
            k = self.slice_at(series, position, orientation, rows, columns)
            if k is not None:
                return series, k
        raise ObjectRefused(f"frame {n}'s ImagePositionPatient lies on no slice of the read's series",
                            status=422, code="unplaced_frame")

    def candidate_series(self) -> list[SeriesGeom]:
        if self.task_series_uid:
            return [self.study.series[self.task_series_uid]] if self.task_series_uid in self.study.series else []
        named = [str(s.SeriesInstanceUID) for s in self.ds.get("ReferencedSeriesSequence", [])]
        ordered = [uid for uid in named if uid in self.study.series] or list(self.study.series)
        return [self.study.series[uid] for uid in ordered]

    @staticmethod
    def slice_at(series: SeriesGeom, position, orientation, rows: int, columns: int) -> int | None:
        if not series.instances:
            return None
        grid = grid_of(series)
        first = series.instances[0]
        if grid.problem or grid.matrix is None or (first.rows, first.columns) != (rows, columns):
            return None
        if orientation is not None and not np.allclose(np.asarray(orientation, float), first.orientation, atol=1e-3):
            return None
        i, j, k = grid.to_voxel([float(v) for v in position])
        nearest = round(k)
        if max(abs(i), abs(j), abs(k - nearest)) > POSITION_TOLERANCE or not 0 <= nearest < grid.dims[2]:
            return None
        return int(nearest)

    def mask(self, by_slice: dict[int, np.ndarray], series_uid: str) -> dict:
        series = self.study.series[series_uid]
        rows, columns = int(self.ds.Rows), int(self.ds.Columns)
        size, starts, ends = rows * columns, [], []
        for k in sorted(by_slice):
            flat = np.concatenate(([False], by_slice[k].ravel(), [False])).astype(np.int8)
            edges = np.flatnonzero(np.diff(flat)) + k * size
            starts.append(edges[0::2])
            ends.append(edges[1::2])
        joined = merge_runs(np.concatenate(starts), np.concatenate(ends))
        shape = [len(series.instances), rows, columns]
        return {"series_uid": series_uid, "shape": shape, "rle": counts_from_runs(*joined, math.prod(shape))}


# Measurement reports


@dataclass(frozen=True)
class _Shape:
    graphic_type: str
    points: list[tuple[float, float]]
    sop_instance_uid: str | None
    frame: int | None
    series_uid: str | None = None  # SCOORD3D, once projected onto a slice
    xyz: tuple[float, float, float] | None = None  # SCOORD3D points

    def describe(self) -> str:
        return f"a {self.graphic_type} of {len(self.points)} points"

    def ref(self) -> dict:
        return {"sop_instance_uid": self.sop_instance_uid} | ({"frame": self.frame} if self.frame else {})

    def closed_points(self) -> list[tuple[float, float]] | None:
        points = self.points
        if self.graphic_type in ("POLYLINE", "POLYGON", "RECTANGLE") and len(points) >= 3:
            points = points[:-1] if points[0] == points[-1] else points
            return points if len(points) >= 3 else None
        if self.graphic_type in ("ELLIPSE", "CIRCLE"):
            centre, u, v = self.axes()
            return [tuple(float(c) for c in centre + math.cos(t) * u + math.sin(t) * v)
                    for t in np.linspace(0, 2 * math.pi, ELLIPSE_VERTICES, endpoint=False)]
        return None

    def axes(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Centre and the two semi-axis vectors of an ELLIPSE (major, minor endpoints) or CIRCLE (centre, rim)."""
        p = np.asarray(self.points, float)
        if self.graphic_type == "CIRCLE":
            radius = float(np.linalg.norm(p[1] - p[0]))
            return p[0], np.array([radius, 0.0]), np.array([0.0, radius])
        return (p[0] + p[1]) / 2, (p[1] - p[0]) / 2, (p[3] - p[2]) / 2

    def box(self) -> tuple[float, float, float, float] | None:
        if self.graphic_type in ("ELLIPSE", "CIRCLE"):
            centre, u, v = self.axes()
            half = np.sqrt(u ** 2 + v ** 2)
            return (*(centre - half), *(centre + half))
        corners = self.closed_points()
        if not corners or len(corners) != 4:
            return None
        xs, ys = sorted({round(x, 6) for x, _ in corners}), sorted({round(y, 6) for _, y in corners})
        if len(xs) != 2 or len(ys) != 2:
            return None  # four corners, but not an axis-aligned rectangle
        return xs[0], ys[0], xs[1], ys[1]

    def line(self) -> list[tuple[float, float]] | None:
        return self.points if self.graphic_type == "POLYLINE" and len(self.points) == 2 else None


def _geometry(spec: LabelSpec, shape: _Shape) -> dict | None:
    """The finding's geometry field for this label, or None when its kind cannot hold this shape."""
    if spec.kind == "landmark" and shape.graphic_type in ("POINT", "MULTIPOINT") and shape.points:
        if shape.xyz is not None:
            return {"point_mm": {"series_uid": shape.series_uid, "xyz": list(shape.xyz)}}
        x, y = shape.points[0]
        return {"point": shape.ref() | {"x": x, "y": y}}
    if spec.kind == "bbox" and (box := shape.box()):
        return {"bbox": shape.ref() | dict(zip(("x0", "y0", "x1", "y1"), (float(v) for v in box), strict=True))}
    wants_polygon = spec.kind == "polygon" or (spec.kind == "measurement" and spec.unit in (AREA, MEAN_HU))
    if wants_polygon and (points := shape.closed_points()):
        return {"polygon": shape.ref() | {"points": [list(p) for p in points]}}
    if spec.kind == "measurement" and spec.unit == LENGTH and (points := shape.line()):
        return {"line": shape.ref() | {"points": [list(p) for p in points]}}
    return None


def _takes_shapes(spec: LabelSpec) -> bool:
    return spec.kind in ("landmark", "bbox", "polygon") or (
        spec.kind == "measurement" and spec.unit in (LENGTH, AREA, MEAN_HU))


def _children(item) -> list:
    return list(item.get("ContentSequence", []))


def _concept(item) -> tuple[str, str] | None:
    code = _code(item)
    return (code[0].upper(), code[1]) if code else None


def _is_region(item) -> bool:
    return item.get("ValueType") in ("SCOORD", "SCOORD3D") and _concept(item) not in SECONDARY_REGIONS


def _walk_references(items) -> Iterable:
    for item in items:
        yield from item.get("ReferencedSOPSequence", [])
        yield from _walk_references(_children(item))


class _Report:
    def __init__(self, ds, labels, study: StudyGeom, task_series_uid):
        self.ds, self.study, self.task_series_uid = ds, study, task_series_uid
        self.labels = _Labels(labels, "measurements", _takes_shapes)
        self.notes: list[str] = []

    def findings(self) -> list[dict]:
        template = [str(t.get("TemplateIdentifier", "")) for t in self.ds.get("ContentTemplateSequence", [])]
        if "1500" not in template and _concept(self.ds) != MEASUREMENT_REPORT:
            raise ObjectRefused(f"this SR follows template {', '.join(template) or '(none)'}; only TID 1500 "
                                "measurement reports can be saved into a read", status=422,
                                code="unsupported_template")
        groups = [group for container in _children(self.ds) if _concept(container) == IMAGING_MEASUREMENTS
                  for group in _children(container) if _concept(group) == MEASUREMENT_GROUP]
        findings: list[dict | None] = []
        for n, group in enumerate(groups, start=1):
            findings.append(self.group(group, n))
        self.labels.refuse_if_any()
        return [f for f in findings if f]

    def group(self, group, n: int) -> dict | None:
        items = _children(group)
        finding_codes, texts, comments, tracking = [], [], [], None
        for item in items:
            concept = _concept(item)
            if concept == TRACKING_IDENTIFIER:
                tracking = str(item.get("TextValue", ""))
            elif concept == COMMENT and item.get("ValueType") == "TEXT":
                comments.append(str(item.get("TextValue", "")))
            elif concept == FINDING or concept in FINDING_SITES:
                code = _code(item, "ConceptCodeSequence")
                if code:
                    finding_codes.append(code)
                    texts.append(code[2])
        shape = self.shape_of(items, n)
        where = {"measurement_group": n, "shape": shape.describe()}
        spec = self.labels.resolve(finding_codes, [*comments, *texts, tracking or ""], where,
                                   lambda s: _geometry(s, shape) is not None)
        if spec is None:
            return None
        return {"label": spec.key} | _geometry(spec, shape)

    def shape_of(self, items, n: int) -> _Shape:
        """The group's region: a bidirectional's long axis, else its image region, else its first NUM's."""
        group_level, long_axis, under_num = [], [], []
        for item in items:
            if _is_region(item):
                group_level.append(item)
            elif item.get("ValueType") == "NUM":
                regions = [c for c in _children(item) if _is_region(c)]
                (long_axis if _concept(item) in LONG_AXIS else under_num).extend(regions)
                if _concept(item) in SHORT_AXIS and regions:
                    self.notes.append(f"measurement group {n}: the bidirectional's short axis is not kept; its "
                                      "long axis is the finding's line")
        chosen = (long_axis or group_level or under_num)
        if not chosen:
            raise ObjectRefused(f"measurement group {n} has no image region (SCOORD or SCOORD3D)", status=422,
                                code="unsupported_graphic")
        return self.read_scoord(chosen[0], n)

    def read_scoord(self, item, n: int) -> _Shape:
        graphic_type = str(item.get("GraphicType", "")).upper()
        data = [float(v) for v in (item.get("GraphicData") or [])]
        supported = ("POINT", "MULTIPOINT", "POLYLINE", "POLYGON", "CIRCLE", "ELLIPSE", "RECTANGLE")
        if graphic_type not in supported:
            raise ObjectRefused(f"measurement group {n} has graphic type {graphic_type or '(none)'}; supported are "
                                f"{', '.join(supported)}", status=422, code="unsupported_graphic")
        width = 3 if item.ValueType == "SCOORD3D" else 2
        points = [tuple(data[i:i + width]) for i in range(0, len(data) - width + 1, width)]
        fewest = {"CIRCLE": 2, "ELLIPSE": 4, "POLYLINE": 2}.get(graphic_type, 1)
        if len(points) < fewest or len(data) % width:
            raise ObjectRefused(f"measurement group {n}'s {graphic_type} has {len(data)} coordinates", status=400,
                                code="malformed_object")
        if graphic_type == "POINT":
            points = points[:1]  # OHIF's arrow writes its tip, then its tail
        if width == 3:
            return self.projected(graphic_type, points, n)
        images = [c for c in _children(item) if c.get("ValueType") == "IMAGE" and c.get("ReferencedSOPSequence")]
        if not images:
            raise ObjectRefused(f"measurement group {n}'s region names no image", status=422,
                                code="unsupported_graphic")
        ref = images[0].ReferencedSOPSequence[0]
        frame = ref.get("ReferencedFrameNumber")
        if isinstance(frame, pydicom.multival.MultiValue):
            frame = frame[0] if frame else None
        return _Shape(graphic_type, points, str(ref.ReferencedSOPInstanceUID), int(frame) if frame else None)

    def projected(self, graphic_type: str, points: list, n: int) -> _Shape:
        """SCOORD3D in patient mm, placed on the one slice of the read's series that holds every point."""
        if self.task_series_uid:
            candidates = [self.task_series_uid]
        else:
            evidence = [s.SeriesInstanceUID for study in self.ds.get("CurrentRequestedProcedureEvidenceSequence", [])
                        for s in study.get("ReferencedSeriesSequence", [])]
            candidates = [uid for uid in dict.fromkeys(evidence) if uid in self.study.series] or list(self.study.series)
        placed = []
        for uid in candidates:
            series = self.study.series.get(uid)
            grid = grid_of(series) if series and series.instances else None
            if grid is None or grid.problem or grid.matrix is None:
                continue
            voxels = np.array([grid.to_voxel(p) for p in points])
            k = round(float(voxels[0, 2]))
            if 0 <= k < grid.dims[2] and np.all(np.abs(voxels[:, 2] - k) <= POSITION_TOLERANCE):
                # Voxel centres are pixel centres; GraphicData is single precision, so finer than 1e-4 pixel is noise.
                flat = [(round(float(i) + 0.5, 4), round(float(j) + 0.5, 4)) for i, j, _ in voxels]
                placed.append(_Shape(graphic_type, flat, series.instances[k].sop_instance_uid, None, uid,
                                     tuple(float(v) for v in points[0])))
        if len(placed) != 1:
            why = "no slice of the read's series holds" if not placed else "more than one series could hold"
            raise ObjectRefused(f"measurement group {n}: {why} its 3D coordinates; save it on one series' image",
                                status=422, code="unplaced_region")
        return placed[0]
