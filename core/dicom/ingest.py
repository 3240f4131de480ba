"""The one ingest service every way in goes through (upload, STOW-RS, folder, PACS import).

Per file: parse and validate -> read the non-identifying index metadata -> de-identify (PS3.15,
core.dicom.deid) -> encrypt and store -> index, in one transaction per file, so a file is either
fully ingested or not at all, and one bad file never stops the batch. Each file gets a report:
accepted, duplicate (the same de-identified SOP Instance UID is already stored: idempotent) or
rejected with a reason.
"""

import gc
import io
import logging
import multiprocessing
import os
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from functools import partial
from typing import BinaryIO

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import Count
from django.utils import timezone

from audit.trail import record_event
from core.broadcast import broadcast_on_commit
from core.dicom import deid, metadata
from core.dicom.crypto import KeyRing, decrypt_bytes, encrypt_bytes
from core.dicom.models import DeidRecord, IngestBatch, Instance, InstanceMetadata, PseudonymMapEntry, Series, Study
from core.dicom.prepare import Prepared, Rejection, prepare
from core.dicom.storage import get_store
from core.dicom.validation import modality_refusal
from core.dicom.volume import check_series
from core.models import Project, User

log = logging.getLogger(__name__)
# Files in flight per worker process: enough that workers keep preparing while this process
# stores and indexes a group, few enough to keep memory flat.
WINDOW_PER_WORKER = 16


@dataclass
class IngestItem:
    """One file to ingest: a name for the report and a seekable binary reader, or the path of a
    local file (bulk ingest: a worker process reads it), or why it was refused."""

    name: str
    reader: object | None = None
    size: int | None = None
    reason: str = ""
    path: str | None = None


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
    notes: list[str] = field(default_factory=list)  # de-identification's: values blanked, by tag and VR


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


# --- the service ----------------------------------------------------------------------------

class _Batch:
    """Per-batch caches: the project's secret and options, studies and series already resolved."""

    def __init__(self, project: Project, by: User | None, source: str):
        self.project = project
        self.by = by
        self.secret = project_secret(project)
        self.options = project_deid_options(project)
        self.store = get_store()
        self.store.sweep_incoming()
        self.studies: dict[str, Study] = {}
        self.series: dict[str, Series] = {}
        self.touched_series: set[int] = set()
        self.record = IngestBatch.objects.create(project=project, source=source, created_by=by)
        self.max_bytes = settings.RADQUEUE_MAX_FILE_BYTES
        self.only_study_uids: set[str] | None = None
        self.group = _GroupCommit(self)

    def record_deidentified(self, records: list[tuple[DeidRecord, list[str]]]) -> None:
        """One audit event per study for the instances this group de-identified (each with its
        de-identification notes), in its transaction."""
        by_study: dict[str, list[tuple[DeidRecord, list[str]]]] = {}
        for record, notes in records:
            by_study.setdefault(record.instance.series.study.study_uid, []).append((record, notes))
        for study_uid, group in by_study.items():
            actions: dict[str, int] = {}
            notes: dict[str, None] = {}
            for record, record_notes in group:
                for action, count in record.actions.items():
                    actions[action] = actions.get(action, 0) + count
                notes.update(dict.fromkeys(record_notes))
            extra = {"profile": group[0][0].profile_version, "instances": len(group), "actions": actions,
                     "quarantined": sum(1 for r, _ in group if r.instance.is_quarantined)}
            if notes:
                extra["notes"] = list(notes)  # tags and VRs only: what was blanked or removed, never a value
            record_event("deidentify", actor=self.by, project=self.project, object_type="core.study",
                         study_uid=study_uid, extra=extra)


@dataclass
class _Pending:
    report: FileReport
    prep: Prepared
    name: str


class _GroupCommit:
    """Stores and indexes accepted files in groups: one transaction and a handful of statements per
    group of GROUP_FILES files (or GROUP_BYTES of data), instead of several per file.

    At flush: one query finds the group's duplicates (already stored: idempotent, their objects
    untouched); the new objects are written, made durable together (fsync, the group's files at
    once) and indexed with one multi-row insert, all before the transaction commits, so no
    committed row points at an object a crash could lose. Should the multi-row insert fail, each
    file is retried in its own savepoint so one bad file still fails alone.
    """

    GROUP_FILES = 32
    GROUP_BYTES = 256 * 1024 * 1024

    def __init__(self, batch: "_Batch"):
        self.batch = batch
        self.pending: list[_Pending] = []
        self.bytes = 0

    def add(self, report: FileReport, prep: Prepared) -> None:
        self.pending.append(_Pending(report, prep, prep.sealed.obj.name))
        self.bytes += prep.sealed.obj.size
        if len(self.pending) >= self.GROUP_FILES or self.bytes >= self.GROUP_BYTES:
            self.flush()

    def flush(self) -> None:
        pending, self.pending, self.bytes = self.pending, [], 0
        if not pending:
            return
        batch, store = self.batch, self.batch.store
        written: list[str] = []
        try:
            with transaction.atomic():
                sops = [p.prep.uids["SOPInstanceUID"] for p in pending]
                seen = set(Instance.objects.filter(project=batch.project, sop_instance_uid__in=sops)
                           .values_list("sop_instance_uid", flat=True))
                fresh = []
                for p in pending:
                    sop = p.prep.uids["SOPInstanceUID"]
                    if sop in seen:
                        p.report.status = "duplicate"
                        store.discard(p.prep.sealed)
                        continue
                    seen.add(sop)
                    fresh.append((p, store.put_sealed(p.prep.sealed, durable=False)))
                    written.append(p.name)
                indexed = self._index(fresh)
                records = [DeidRecord(instance=instance, profile_version=p.prep.profile_version,
                                      options=batch.options.as_dict(), actions=p.prep.actions)
                           for p, instance in indexed]
                DeidRecord.objects.bulk_create(records)
                batch.record_deidentified([(record, p.prep.notes)
                                           for record, (p, _) in zip(records, indexed, strict=True)])
                store.sync([p.name for p, _ in indexed])
        except BaseException:
            for name in written:
                store.delete(name)
            self.discard(pending)
            raise

    def discard(self, pending: list[_Pending] | None = None) -> None:
        """Drop the sealed files of pending entries (default: all) that were not stored."""
        if pending is None:
            pending, self.pending, self.bytes = self.pending, [], 0
        for p in pending:
            self.batch.store.discard(p.prep.sealed)

    def _index(self, fresh: list) -> list:
        """Instance rows for the new files; (pending, instance) for each one indexed."""
        batch = self.batch
        rows = [(p, _instance_row(batch, p.prep, obj, p.name)) for p, obj in fresh]
        try:
            with transaction.atomic():
                Instance.objects.bulk_create([row for _, row in rows])
            indexed = rows
        except IntegrityError:
            indexed = []
            for p, row in rows:
                try:
                    with transaction.atomic():
                        row.pk = None
                        row.save(force_insert=True)
                    indexed.append((p, row))
                except IntegrityError:
                    # A concurrent ingest indexed it first (same de-identified bytes, same name).
                    p.report.status = "duplicate"
                except Exception as exc:  # noqa: BLE001 - one bad file fails alone
                    log.exception("indexing %s failed", p.report.name)
                    p.report.status, p.report.reason = "rejected", f"could not store ({type(exc).__name__})"
                    batch.store.delete(p.name)
        InstanceMetadata.objects.bulk_create(metadata.rows_for([(row, p.prep.recorded) for p, row in indexed]))
        for p, row in indexed:
            p.report.quarantined = row.is_quarantined
            if batch.project.keep_pseudonym_map:
                _keep_pseudonyms(batch, p.prep)
            batch.touched_series.add(row.series_id)
        return indexed


def ingest_files(project: Project, items: Iterable[IngestItem], *, by: User | None, source: str,
                 on_progress=None, only_study_uids: set[str] | None = None, workers: int = 0) -> IngestReport:
    """Ingest each item; never raises for a bad file. Returns the per-file report.

    ``only_study_uids`` (original or de-identified UIDs) refuses instances of any other study.
    ``workers`` > 1 parses and de-identifies in that many processes (bulk ingest); storing and
    indexing stay in this process, in order.
    """
    batch = _Batch(project, by, source)
    if only_study_uids:
        batch.only_study_uids = only_study_uids | {deid.replace_uid(uid, batch.secret) for uid in only_study_uids}
    report = IngestReport(batch_id=batch.record.pk, project_id=project.pk)
    try:
        for item, prep in _prepared(batch, items, workers):
            file_report = _ingest_prepared(batch, item, prep)
            report.files.append(file_report)
            if on_progress is not None:
                on_progress(file_report)
        batch.group.flush()
    except BaseException:
        batch.group.discard()
        raise
    _finish(batch, report)
    return report


def _read(batch: _Batch, item: IngestItem) -> BinaryIO | str | Rejection:
    """The item's reader (its path, for a local file: the worker opens it), or why it cannot be
    taken (refused upstream, oversize)."""
    if item.reason:
        return Rejection(item.reason)
    if item.size is not None and item.size > batch.max_bytes:
        return Rejection(f"file of {item.size} bytes exceeds the {batch.max_bytes} byte limit")
    if item.path is not None:
        return item.path
    return item.reader


def object_name(project_id: int, uids: dict) -> str:
    """Where an instance's encrypted object lives: named by its de-identified UIDs."""
    return f"p{project_id}/{uids['StudyInstanceUID']}/{uids['SeriesInstanceUID']}/{uids['SOPInstanceUID']}.dcm"


def prepare_and_seal(source: bytes | str | BinaryIO, *, secret: bytes, options: "deid.DeidOptions", max_bytes: int,
                     project_id: int, keep_originals: bool = False) -> Prepared | Rejection:
    """The CPU-bound half of ingest, in a worker process with workers: parse and de-identify
    (core.dicom.prepare; a path is opened here), then write the de-identified file encrypted for
    its object's name into a sealed temporary file, the pixel data streamed from the source a
    chunk at a time. What leaves the function is that file's path and de-identified index
    metadata: no plaintext, no pixel data in memory, and no original identifiers unless the
    project keeps its (encrypted) pseudonym map."""
    if isinstance(source, str):
        try:
            file = open(source, "rb")  # noqa: SIM115 - closed below, after the pixel data is copied
        except OSError as exc:
            return Rejection(f"could not read the file ({type(exc).__name__}: {exc})")
        with file:
            return prepare_and_seal(file, secret=secret, options=options, max_bytes=max_bytes,
                                    project_id=project_id, keep_originals=keep_originals)
    if isinstance(source, bytes | bytearray | memoryview):
        source = io.BytesIO(source)
    prep = prepare(source, secret=secret, options=options, max_bytes=max_bytes)
    if isinstance(prep, Rejection):
        return prep
    name, captures = object_name(project_id, prep.uids), []

    def fill(writer) -> None:
        # The stored file's header is kept as it is written, for its metadata (core.dicom.metadata).
        captures.append(metadata.HeadCapture(writer, metadata.head_limit(prep.part.pixels)))
        prep.write(captures[-1])

    try:
        prep.sealed = get_store().seal(name, fill)
        prep.recorded = _recorded(prep, captures[-1], name)
    except Exception as exc:  # noqa: BLE001 - a source that fails while copied is refused, the batch goes on
        return Rejection(f"could not process ({type(exc).__name__})")
    finally:
        prep.part = None  # the parsed header and the source stay here
    if not keep_originals:
        prep.original = {}
    return prep


def _recorded(prep: Prepared, capture: "metadata.HeadCapture", name: str) -> "metadata.Recorded | None":
    """What WADO-RS will serve of the file just sealed; None (the parse path serves it, and records
    it then) when that cannot be read from what was kept: a cache must never refuse a file."""
    try:
        return metadata.record_at_ingest(capture, prep.part, rows=prep.meta["rows"], frames=prep.meta["frames"],
                                         transfer_syntax_uid=prep.uids["TransferSyntaxUID"], storage_name=name,
                                         ring=get_store().ring)
    except Exception as exc:  # noqa: BLE001 - see above
        log.warning("metadata of %s not recorded at ingest (%s)", name, type(exc).__name__)
        return None


def _prepared(batch: _Batch, items: Iterable[IngestItem], workers: int) -> Iterator[tuple[IngestItem, object]]:
    """Each item with its Prepared or Rejection, in order; with workers, prepared in parallel processes."""
    prepare_one = partial(prepare_and_seal, secret=batch.secret, options=batch.options, max_bytes=batch.max_bytes,
                          project_id=batch.project.pk, keep_originals=batch.project.keep_pseudonym_map)
    if workers <= 1:
        for item in items:
            yield item, _prepare_here(batch, item, prepare_one)
        return
    # A bounded window of files in flight keeps memory flat on folders of any size. Workers open
    # local files themselves and send back the path of a sealed file (ciphertext) and de-identified
    # metadata: this process only stores and indexes.
    deid.warm(batch.options)  # forked workers inherit the loaded profile table
    # What the workers inherit is left out of garbage collection (until the pool is done): a
    # collection in a worker would otherwise write to, and so copy, every page of the parent's objects.
    gc.freeze()
    try:
        yield from _prepared_in_pool(batch, items, workers, prepare_one)
    finally:
        gc.unfreeze()


def _prepared_in_pool(batch: _Batch, items: Iterable[IngestItem], workers: int,
                      prepare_one) -> Iterator[tuple[IngestItem, object]]:
    window: deque = deque()
    with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("fork")) as pool:
        for item in items:
            if item.path is not None and not item.reason:
                source = _read(batch, item)
                outcome = source if isinstance(source, Rejection) else pool.submit(prepare_one, source)
            else:  # a reader lives in this process (a spool, a zip member): prepared here
                outcome = _prepare_here(batch, item, prepare_one)
            window.append((item, outcome))
            if len(window) >= WINDOW_PER_WORKER * workers:
                yield _settle(window.popleft())
        while window:
            yield _settle(window.popleft())


def _prepare_here(batch: _Batch, item: IngestItem, prepare_one) -> Prepared | Rejection:
    source = _read(batch, item)
    try:
        return source if isinstance(source, Rejection) else prepare_one(source)
    finally:
        _close(item)


def _settle(entry) -> tuple[IngestItem, object]:
    item, outcome = entry
    return item, outcome if isinstance(outcome, Prepared | Rejection) else outcome.result()


def _close(item: IngestItem) -> None:
    close = getattr(item.reader, "close", None)
    if close is not None:
        close()


def _ingest_prepared(batch: _Batch, item: IngestItem, prep) -> FileReport:
    if isinstance(prep, Rejection):
        return FileReport(item.name, "rejected", reason=prep.reason)
    study_uid, series_uid = prep.uids["StudyInstanceUID"], prep.uids["SeriesInstanceUID"]
    sop_uid = prep.uids["SOPInstanceUID"]
    report = FileReport(item.name, "accepted", sop_class_uid=prep.meta["sop_class_uid"], sop_instance_uid=sop_uid,
                        study_uid=study_uid, series_uid=series_uid, notes=list(prep.notes))
    if batch.only_study_uids is not None and study_uid not in batch.only_study_uids:
        report.status, report.code = "rejected", "study_mismatch"
        report.reason = "the instance belongs to another study than the one named in the request"
        batch.store.discard(prep.sealed)
        return report
    # A project takes only the modalities it declares (core.dicom.validation): refused, not stored.
    if reason := modality_refusal(batch.project.modalities, prep.meta["modality"]):
        report.status, report.code, report.reason = "rejected", "modality_not_accepted", reason
        batch.store.discard(prep.sealed)
        return report
    batch.group.add(report, prep)  # indexed (or found a duplicate) when its group flushes
    return report


def _study(batch: _Batch, prep: Prepared) -> Study:
    uid = prep.uids["StudyInstanceUID"]
    study = batch.studies.get(uid)
    if study is None:
        study, _ = Study.objects.get_or_create(
            project=batch.project, study_uid=uid,
            defaults={"patient_pseudonym": prep.patient_pseudonym, "patient_age_years": prep.patient_age_years,
                      "study_date": prep.texts["StudyDate"], "description": prep.texts["StudyDescription"]},
        )
        batch.studies[uid] = study
    return study


def _series(batch: _Batch, study: Study, prep: Prepared) -> Series:
    uid = prep.uids["SeriesInstanceUID"]
    series = batch.series.get(uid)
    if series is None:
        meta = prep.meta
        series, _ = Series.objects.get_or_create(
            study=study, series_uid=uid,
            defaults={"modality": meta["modality"], "body_part": meta["body_part"], "mr_sequence": meta["mr_sequence"],
                      "description": prep.texts["SeriesDescription"], "number": meta["series_number"],
                      "frame_of_reference_uid": prep.uids["FrameOfReferenceUID"]},
        )
        batch.series[uid] = series
    return series


def _instance_row(batch: _Batch, prep: Prepared, obj, name) -> Instance:
    study = _study(batch, prep)
    series = _series(batch, study, prep)
    meta = prep.meta
    return Instance(
        project=batch.project, series=series, sop_instance_uid=prep.uids["SOPInstanceUID"],
        sop_class_uid=meta["sop_class_uid"], instance_number=meta["instance_number"],
        transfer_syntax_uid=prep.uids["TransferSyntaxUID"], rows=meta["rows"], columns=meta["columns"],
        frames=meta["frames"], position=meta["position"], orientation=meta["orientation"],
        pixel_spacing=meta["pixel_spacing"], slice_thickness=meta["slice_thickness"], image_type=meta["image_type"],
        size_bytes=obj.size, sha256=obj.sha256, storage_name=name,
        is_quarantined=bool(prep.burned_in_risk), quarantine_reason=prep.burned_in_risk[:200],
    )


def _keep_pseudonyms(batch: _Batch, prep: Prepared) -> None:
    ring = _keyring()
    original, uids = prep.original, prep.uids
    pairs = [
        (PseudonymMapEntry.Kind.PATIENT, prep.patient_pseudonym,
         f"{original.get('PatientID', '')}^{original.get('PatientName', '')}"),
        (PseudonymMapEntry.Kind.STUDY, uids["StudyInstanceUID"], original.get("StudyInstanceUID", "")),
        (PseudonymMapEntry.Kind.SERIES, uids["SeriesInstanceUID"], original.get("SeriesInstanceUID", "")),
        (PseudonymMapEntry.Kind.INSTANCE, uids["SOPInstanceUID"], original.get("SOPInstanceUID", "")),
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
        broadcast_on_commit(batch.project.pk, "ingest.finished", {
            "batch": batch.record.pk, "studies": len(studies), "accepted": report.accepted,
            "duplicate": report.duplicate, "rejected": report.rejected,
            "quarantined": sum(1 for f in report.files if f.quarantined)})

