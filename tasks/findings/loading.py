"""Findings checked against the read's protocol version and the study's geometry: this module loads
the label specs and geometry from the database and the object store; tasks.findings.validation
does the checking."""

import io
from functools import lru_cache

import numpy as np
import pydicom

from core.dicom.storage import get_store
from core.errors import DomainError
from core.models import LabelEntry
from tasks.findings.geometry import InstanceGeom, LabelSpec, SeriesGeom, StudyGeom
from tasks.findings.validation import PayloadError, summarise, validate_findings
from tasks.models import Read


@lru_cache(maxsize=256)
def labels_of(version_id: int) -> dict[str, LabelSpec]:
    """The label specs of a protocol version (immutable once used, so safe to cache)."""
    specs = {}
    for entry in LabelEntry.objects.filter(version_id=version_id):
        categories = tuple(c["value"] if isinstance(c, dict) else str(c) for c in entry.categories)
        specs[entry.key] = LabelSpec(key=entry.key, kind=entry.kind, categories=categories, unit=entry.unit,
                                     coding_scheme=entry.coding_scheme, code_value=entry.code_value,
                                     code_meaning=entry.code_meaning)
    return specs


def _axis_position(geom: InstanceGeom, normal) -> float:
    return float(np.dot(geom.position, normal)) if geom.position and normal is not None else 0.0


def study_geometry(study) -> StudyGeom:
    series_geoms = {}
    for series in study.series.prefetch_related("instances"):
        instances = [InstanceGeom(
            sop_instance_uid=i.sop_instance_uid, series_uid=series.series_uid, rows=i.rows or 0,
            columns=i.columns or 0, frames=i.frames, pixel_spacing=tuple(i.pixel_spacing) if i.pixel_spacing else None,
            position=tuple(i.position) if i.position else None,
            orientation=tuple(i.orientation) if i.orientation else None, instance_number=i.instance_number,
        ) for i in series.instances.all()]
        normal = None
        if instances and instances[0].orientation:
            o = np.asarray(instances[0].orientation, dtype=float)
            normal = np.cross(o[:3], o[3:])
        instances.sort(key=lambda g: (_axis_position(g, normal), g.instance_number or 0))
        spacing = None
        if len(instances) > 1 and normal is not None and instances[0].position and instances[1].position:
            spacing = abs(_axis_position(instances[1], normal) - _axis_position(instances[0], normal)) or None
        series_geoms[series.series_uid] = SeriesGeom(series_uid=series.series_uid, instances=tuple(instances),
                                                     slice_spacing=spacing)
    return StudyGeom(study_uid=study.study_uid, series=series_geoms)


def pixel_reader(study):
    """(sop_instance_uid, frame) -> the frame's rescaled pixel values, read from the encrypted store."""
    from pydicom.pixels import apply_modality_lut

    names = dict(study.series.values_list("instances__sop_instance_uid", "instances__storage_name"))

    def read(sop_instance_uid: str, frame: int) -> np.ndarray:
        ds = pydicom.dcmread(io.BytesIO(get_store().read_bytes(names[sop_instance_uid])))
        array = ds.pixel_array
        if int(ds.get("NumberOfFrames", 1) or 1) > 1:
            array = array[frame - 1]
        return apply_modality_lut(array, ds).astype(np.float64)

    return read


def validated_findings(read: Read, findings) -> tuple[list[dict], dict]:
    """Normalised findings and their summary; DomainError (400) naming every bad field."""
    return validate_for_task(read.task, findings)


def validate_for_task(task, findings) -> tuple[list[dict], dict]:
    """Findings checked against a task's protocol version and study (reads and adjudications)."""
    if isinstance(findings, list) and not findings:
        return [], summarise([])  # nothing to check against the geometry
    try:
        normalised = validate_findings(
            findings, labels=labels_of(task.protocol_version_id), study=study_geometry(task.study),
            pixel_reader=pixel_reader(task.study),
            task_series_uid=task.series.series_uid if task.series_id else None)
    except PayloadError as exc:
        raise DomainError("The findings are not valid; nothing was stored.", code="invalid_findings",
                          errors=exc.errors) from None
    return normalised, summarise(normalised)
