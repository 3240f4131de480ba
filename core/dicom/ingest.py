"""The one ingest service every way in goes through (upload, STOW-RS, folder, PACS import).

Per file: parse and validate -> read the non-identifying index metadata -> de-identify (PS3.15,
core.dicom.deid) -> encrypt and store -> index, in one transaction per file, so a file is either
fully ingested or not at all, and one bad file never stops the batch. Each file gets a report:
accepted, duplicate (the same de-identified SOP Instance UID is already stored: idempotent) or
rejected with a reason.
"""

import io
import logging
import os
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field

import pydicom
from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import Count
from django.utils import timezone
from pydicom.errors import InvalidDicomError

from audit.trail import record_event
from core.dicom import deid
from core.dicom.crypto import KeyRing, decrypt_bytes, encrypt_bytes
from core.dicom.models import DeidRecord, IngestBatch, Instance, PseudonymMapEntry, Series, Study
from core.dicom.sequences import mr_sequence_type
from core.dicom.storage import get_store
from core.dicom.volume import check_series, geometry_of
from core.models import Project, User

log = logging.getLogger(__name__)
REQUIRED_UIDS = ("SOPInstanceUID", "SOPClassUID", "StudyInstanceUID", "SeriesInstanceUID")


@dataclass
class IngestItem:
    """One file to ingest: a name for the report and a seekable binary reader (or why it was refused)."""

    name: str
    reader: object | None = None
    size: int | None = None
    reason: str = ""


@dataclass
class FileReport:
    name: str
    status: str  # accepted | duplicate | rejected
    reason: str = ""
    sop_class_uid: str = ""
    sop_instance_uid: str = ""
    study_uid: str = ""
    series_uid: str = ""
    quarantined: bool = False
    code: str = ""  # machine-readable refusal: study_mismatch, ...


@dataclass
class IngestReport:
    batch_id: int
    project_id: int
    files: list[FileReport] = field(default_factory=list)

    def count(self, status: str) -> int:
        return sum(1 for f in self.files if f.status == status)

    @property
    def accepted(self) -> int:
        return self.count("accepted")

    @property
    def duplicate(self) -> int:
        return self.count("duplicate")

    @property
    def rejected(self) -> int:
        return self.count("rejected")

    def as_dict(self) -> dict:
        return {"batch": self.batch_id, "project": self.project_id, "accepted": self.accepted,
                "duplicate": self.duplicate, "rejected": self.rejected,
                "quarantined": sum(1 for f in self.files if f.quarantined),
                "files": [asdict(f) for f in self.files]}


class Rejected(Exception):
    pass


# --- per-project de-identification context -------------------------------------------------

def _keyring() -> KeyRing:
    return get_store().ring


def project_secret_context(project_id: int) -> bytes:
    """AES-GCM associated data binding an encrypted project secret to its project."""
    return f"project-deid-secret:{project_id}".encode()


def pseudonym_context(project_id: int, kind: str, pseudonym: str) -> bytes:
    """AES-GCM associated data binding an encrypted original identifier to its pseudonym."""
    return f"pseudonym:{project_id}:{kind}:{pseudonym}".encode()


def project_secret(project: Project) -> bytes:
    """The project's de-identification secret (32 random bytes), created on first use, stored encrypted."""
    context = project_secret_context(project.pk)
    if project.deid_secret_encrypted is None:
        with transaction.atomic():
            locked = Project.objects.select_for_update().get(pk=project.pk)
            if locked.deid_secret_encrypted is None:
                locked.deid_secret_encrypted = encrypt_bytes(os.urandom(32), _keyring(), context=context)
                Project.objects.filter(pk=project.pk).update(deid_secret_encrypted=locked.deid_secret_encrypted)
            project.deid_secret_encrypted = locked.deid_secret_encrypted
    return decrypt_bytes(bytes(project.deid_secret_encrypted), _keyring(), context=context)


def project_deid_options(project: Project) -> "deid.DeidOptions":
    return deid.DeidOptions(
        retain_longitudinal_modified_dates=project.deid_retain_modified_dates,
        retain_patient_characteristics=project.deid_retain_patient_characteristics,
        clean_descriptors=project.deid_clean_descriptors,
        retain_device_identity=project.deid_retain_device_identity,
        private_creator_allowlist=tuple(project.deid_private_creator_allowlist or ()),
    )


# --- parsing and validation -----------------------------------------------------------------

def _tag_name(elem) -> str:
    return f"({elem.tag.group:04X},{elem.tag.element:04X}) {elem.keyword or 'private'}"


def _parse(item: IngestItem, max_bytes: int) -> pydicom.Dataset:
    if item.reason:
        raise Rejected(item.reason)
    if item.size == 0:
        raise Rejected("empty file (0 bytes)")
    if item.size is not None and item.size > max_bytes:
        raise Rejected(f"file of {item.size} bytes exceeds the {max_bytes} byte limit")
    try:
        item.reader.seek(0)
        ds = pydicom.dcmread(item.reader)
    except InvalidDicomError:
        raise Rejected("not a DICOM file (no 'DICM' prefix after the 128-byte preamble)") from None
    except (EOFError, OSError, ValueError, KeyError, TypeError, NotImplementedError) as exc:
        raise Rejected(f"unreadable DICOM ({type(exc).__name__}: {exc})") from None
    # Parsing is lazy: decode every element now so a malformed value is reported, not stored.
    for elem in ds.iterall():
        try:
            elem.value  # noqa: B018 - forces conversion of a raw element
        except Exception as exc:  # noqa: BLE001 - any decode failure is a malformed value
            raise Rejected(f"malformed value in {_tag_name(elem)}: {exc}") from None
    missing = [k for k in REQUIRED_UIDS if not str(ds.get(k, "")).strip()]
    if missing:
        raise Rejected(f"missing required attribute(s): {', '.join(missing)}")
    _check_pixel_length(ds)
    return ds


def _check_pixel_length(ds) -> None:
    if "PixelData" not in ds:
        return
    syntax = ds.file_meta.get("TransferSyntaxUID")
    if syntax is not None and syntax.is_compressed:
        if not ds.PixelData:
            raise Rejected("encapsulated pixel data is empty")
        return
    try:
        rows, cols = int(ds.Rows), int(ds.Columns)
        expected = (rows * cols * int(ds.get("NumberOfFrames", 1) or 1) * int(ds.get("SamplesPerPixel", 1))
                    * int(ds.BitsAllocated) + 7) // 8
    except (AttributeError, TypeError, ValueError) as exc:
        raise Rejected(f"pixel data without a valid image description ({exc})") from None
    if len(ds.PixelData) < expected:
        raise Rejected(f"truncated pixel data: {len(ds.PixelData)} bytes, {expected} expected")


def _floats(value, n) -> list[float] | None:
    try:
        values = [float(v) for v in value]
    except (TypeError, ValueError):
        return None
    return values if len(values) == n else None


def _index_metadata(ds) -> dict:
    """What the index keeps of an instance, read before de-identification (none of it identifying)."""
    geometry = geometry_of(ds)[0] if "Rows" in ds else None
    return {
        "modality": str(ds.get("Modality", "OT") or "OT")[:16],
        "body_part": str(ds.get("BodyPartExamined", "") or "")[:64],
        "mr_sequence": mr_sequence_type(ds),
        "sop_class_uid": str(ds.SOPClassUID),
        "instance_number": int(ds.InstanceNumber) if str(ds.get("InstanceNumber", "")).strip().lstrip("-").isdigit()
        else None,
        "series_number": int(ds.SeriesNumber) if str(ds.get("SeriesNumber", "")).strip().lstrip("-").isdigit()
        else None,
        "rows": int(ds.Rows) if "Rows" in ds else None,
        "columns": int(ds.Columns) if "Columns" in ds else None,
        "frames": int(ds.get("NumberOfFrames", 1) or 1),
        "position": list(geometry.position) if geometry and geometry.position else None,
        "orientation": list(geometry.orientation) if geometry and geometry.orientation else None,
        "pixel_spacing": list(geometry.pixel_spacing) if geometry and geometry.pixel_spacing else None,
        "slice_thickness": geometry.slice_thickness if geometry else None,
        "image_type": [str(v) for v in (ds.get("ImageType") or [])],
    }


def _serialize(ds) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


# --- the service ----------------------------------------------------------------------------

class _Batch:
    """Per-batch caches: the project's secret and options, studies and series already resolved."""

    def __init__(self, project: Project, by: User | None, source: str):
        self.project = project
        self.by = by
        self.secret = project_secret(project)
        self.options = project_deid_options(project)
        self.store = get_store()
        self.studies: dict[str, Study] = {}
        self.series: dict[str, Series] = {}
        self.touched_series: set[int] = set()
        self.record = IngestBatch.objects.create(project=project, source=source, created_by=by)
        self.max_bytes = settings.RADQUEUE_MAX_FILE_BYTES
        self.only_study_uids: set[str] | None = None


def ingest_files(project: Project, items: Iterable[IngestItem], *, by: User | None, source: str,
                 on_progress=None, only_study_uids: set[str] | None = None) -> IngestReport:
    """Ingest each item; never raises for a bad file. Returns the per-file report.

    ``only_study_uids`` (original or de-identified UIDs) refuses instances of any other study.
    """
    batch = _Batch(project, by, source)
    if only_study_uids:
        batch.only_study_uids = only_study_uids | {deid.replace_uid(uid, batch.secret) for uid in only_study_uids}
    report = IngestReport(batch_id=batch.record.pk, project_id=project.pk)
    for item in items:
        try:
            file_report = _ingest_one(batch, item)
        finally:
            close = getattr(item.reader, "close", None)
            if close is not None:
                close()
        report.files.append(file_report)
        if on_progress is not None:
            on_progress(file_report)
    _finish(batch, report)
    return report


def _ingest_one(batch: _Batch, item: IngestItem) -> FileReport:
    try:
        ds = _parse(item, batch.max_bytes)
        meta = _index_metadata(ds)
        result = deid.deidentify_dataset(ds, secret=batch.secret, options=batch.options)
        data = _serialize(ds)
    except Rejected as exc:
        return FileReport(item.name, "rejected", reason=str(exc))
    except Exception as exc:  # noqa: BLE001 - a file that breaks the pipeline is refused, the batch goes on
        log.exception("ingest of %s failed", item.name)
        return FileReport(item.name, "rejected", reason=f"could not process ({type(exc).__name__}: {exc})")
    study_uid, series_uid, sop_uid = str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID)
    report = FileReport(item.name, "accepted", sop_class_uid=meta["sop_class_uid"], sop_instance_uid=sop_uid,
                        study_uid=study_uid, series_uid=series_uid)
    if batch.only_study_uids is not None and study_uid not in batch.only_study_uids:
        report.status, report.code = "rejected", "study_mismatch"
        report.reason = "the instance belongs to another study than the one named in the request"
        return report
    if Instance.objects.filter(project=batch.project, sop_instance_uid=sop_uid).exists():
        report.status = "duplicate"
        return report
    name = f"p{batch.project.pk}/{study_uid}/{series_uid}/{sop_uid}.dcm"
    stored = False
    try:
        with transaction.atomic():
            obj = batch.store.put_bytes(name, data)
            stored = True
            instance = _index(batch, ds, meta, result, obj, name)
        report.quarantined = instance.is_quarantined
    except IntegrityError:
        # A concurrent ingest stored the same instance first; ours must not overwrite its object.
        report.status = "duplicate"
        stored = False
    except Exception as exc:  # noqa: BLE001
        log.exception("indexing %s failed", item.name)
        report.status, report.reason = "rejected", f"could not store ({type(exc).__name__})"
        if stored:
            batch.store.delete(name)
    return report


def _study(batch: _Batch, ds, result) -> Study:
    uid = str(ds.StudyInstanceUID)
    study = batch.studies.get(uid)
    if study is None:
        study, _ = Study.objects.get_or_create(
            project=batch.project, study_uid=uid,
            defaults={"patient_pseudonym": result.patient_pseudonym, "patient_age_years": result.patient_age_years,
                      "study_date": str(ds.get("StudyDate", "") or "")[:8],
                      "description": str(ds.get("StudyDescription", "") or "")[:200]},
        )
        batch.studies[uid] = study
    return study


def _series(batch: _Batch, study: Study, ds, meta) -> Series:
    uid = str(ds.SeriesInstanceUID)
    series = batch.series.get(uid)
    if series is None:
        series, _ = Series.objects.get_or_create(
            study=study, series_uid=uid,
            defaults={"modality": meta["modality"], "body_part": meta["body_part"], "mr_sequence": meta["mr_sequence"],
                      "description": str(ds.get("SeriesDescription", "") or "")[:200],
                      "number": meta["series_number"],
                      "frame_of_reference_uid": str(ds.get("FrameOfReferenceUID", "") or "")},
        )
        batch.series[uid] = series
    return series


def _index(batch: _Batch, ds, meta, result, obj, name) -> Instance:
    study = _study(batch, ds, result)
    series = _series(batch, study, ds, meta)
    instance = Instance.objects.create(
        project=batch.project, series=series, sop_instance_uid=str(ds.SOPInstanceUID),
        sop_class_uid=meta["sop_class_uid"], instance_number=meta["instance_number"],
        transfer_syntax_uid=str(ds.file_meta.TransferSyntaxUID), rows=meta["rows"], columns=meta["columns"],
        frames=meta["frames"], position=meta["position"], orientation=meta["orientation"],
        pixel_spacing=meta["pixel_spacing"], slice_thickness=meta["slice_thickness"], image_type=meta["image_type"],
        size_bytes=obj.size, sha256=obj.sha256, storage_name=name,
        is_quarantined=bool(result.burned_in_risk), quarantine_reason=result.burned_in_risk[:200],
    )
    DeidRecord.objects.create(instance=instance, profile_version=result.profile_version,
                              options=batch.options.as_dict(), actions=result.actions)
    if batch.project.keep_pseudonym_map:
        _keep_pseudonyms(batch, ds, result)
    batch.touched_series.add(series.pk)
    record_event("deidentify", actor=batch.by, project=batch.project, obj=instance, study_uid=study.study_uid,
                 extra={"profile": result.profile_version, "actions": result.actions,
                        "quarantined": instance.is_quarantined})
    return instance


def _keep_pseudonyms(batch: _Batch, ds, result) -> None:
    ring = _keyring()
    pairs = [
        (PseudonymMapEntry.Kind.PATIENT, result.patient_pseudonym,
         f"{result.original.get('PatientID', '')}^{result.original.get('PatientName', '')}"),
        (PseudonymMapEntry.Kind.STUDY, str(ds.StudyInstanceUID), result.original.get("StudyInstanceUID", "")),
        (PseudonymMapEntry.Kind.SERIES, str(ds.SeriesInstanceUID), result.original.get("SeriesInstanceUID", "")),
        (PseudonymMapEntry.Kind.INSTANCE, str(ds.SOPInstanceUID), result.original.get("SOPInstanceUID", "")),
    ]
    for kind, pseudonym, original in pairs:
        context = pseudonym_context(batch.project.pk, kind, pseudonym)
        PseudonymMapEntry.objects.get_or_create(
            project=batch.project, kind=kind, pseudonym=pseudonym,
            defaults={"original_encrypted": encrypt_bytes(original.encode(), ring, context=context)},
        )


def read_pseudonym(entry: PseudonymMapEntry) -> str:
    context = pseudonym_context(entry.project_id, entry.kind, entry.pseudonym)
    return decrypt_bytes(bytes(entry.original_encrypted), _keyring(), context=context).decode()


def refresh_series(series_ids: Iterable[int]) -> None:
    """Recount instances and rerun the volume checks of these series, and recount their studies."""
    from core.dicom.volume import SliceGeometry

    study_ids = set()
    for series in Series.objects.filter(pk__in=list(series_ids)):
        rows = list(series.instances.values("sop_instance_uid", "position", "orientation", "pixel_spacing",
                                            "slice_thickness", "rows", "columns", "image_type", "instance_number",
                                            "frames", "sop_class_uid"))
        geoms = [SliceGeometry(
            sop_instance_uid=r["sop_instance_uid"], position=tuple(r["position"]) if r["position"] else None,
            orientation=tuple(r["orientation"]) if r["orientation"] else None,
            pixel_spacing=tuple(r["pixel_spacing"]) if r["pixel_spacing"] else None,
            slice_thickness=r["slice_thickness"], rows=r["rows"], columns=r["columns"],
            image_type=tuple(r["image_type"] or ()), instance_number=r["instance_number"], frames=r["frames"],
        ) for r in rows if r["rows"]]
        issues = check_series(geoms) if len(geoms) > 1 and all(g.frames == 1 for g in geoms) else []
        Series.objects.filter(pk=series.pk).update(instance_count=len(rows), geometry_issues=issues,
                                                   updated_at=timezone.now())
        study_ids.add(series.study_id)
    for study in Study.objects.filter(pk__in=study_ids):
        series = study.series.all()
        stats = series.aggregate(n=Count("id"))
        Study.objects.filter(pk=study.pk).update(
            series_count=stats["n"],
            instance_count=sum(s.instance_count for s in Series.objects.filter(study=study)),
            modalities=sorted({s.modality for s in series}),
            body_parts=sorted({s.body_part for s in series if s.body_part}),
            updated_at=timezone.now(),
        )


def _finish(batch: _Batch, report: IngestReport) -> None:
    refresh_series(batch.touched_series)
    IngestBatch.objects.filter(pk=batch.record.pk).update(
        accepted=report.accepted, duplicate=report.duplicate, rejected=report.rejected,
        quarantined=sum(1 for f in report.files if f.quarantined), finished_at=timezone.now(),
    )
    studies = sorted({f.study_uid for f in report.files if f.status == "accepted"})
    with transaction.atomic():
        for study_uid in studies:
            record_event("ingest", actor=batch.by, project=batch.project, object_type="core.study",
                         study_uid=study_uid, extra={"batch": batch.record.pk})
        record_event("ingest", actor=batch.by, project=batch.project, obj=batch.record,
                     outcome="allowed" if report.accepted or report.duplicate else "error",
                     reason="" if report.accepted or report.duplicate else "every file was rejected",
                     extra={"accepted": report.accepted, "duplicate": report.duplicate, "rejected": report.rejected})

