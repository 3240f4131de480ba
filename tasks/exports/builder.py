"""Build every export file of a delivered batch, store them encrypted, and record them on the batch.

Runs in the background job tasks.jobs.build_batch_exports_job (eager in tests and the embedded
default). Idempotent: file names are fixed per batch and task, so a rebuild overwrites them. A
failure marks the batch's exports failed with the reason; it never leaves the batch half-recorded.
"""

import hashlib
import json
import logging

from django.db import transaction
from django.utils import timezone

from audit.trail import record_event
from core.broadcast import broadcast_on_commit
from core.dicom.storage import get_store
from tasks.exports import csv_export, json_export, manifest, nifti, seg, sr
from tasks.exports.sources import sources_of
from tasks.models import Batch, Task

log = logging.getLogger(__name__)


def object_prefix(batch) -> str:
    return f"exports/project-{batch.project_id}/batch-{batch.pk}"


def batch_tasks(batch) -> list[Task]:
    return list(batch.tasks.select_related("study", "series", "protocol_version", "consensus__adjudication")
                .order_by("id"))


class _Files:
    def __init__(self, batch):
        self.batch, self.entries = batch, []

    def put(self, name: str, fmt: str, data: bytes, task: int | None = None, **extra) -> None:
        stored = get_store().put_bytes(f"{object_prefix(self.batch)}/{name}", data)
        self.entries.append({"name": name, "format": fmt, "task": task, "size": len(data),
                             "sha256": hashlib.sha256(data).hexdigest(), "object": stored.name, **extra})


def build_files(batch) -> list[dict]:
    """Build and store every file; return their entries, the manifest (with every other file's SHA-256) last."""
    tasks = batch_tasks(batch)
    files = _Files(batch)
    files.put("findings.json", "json", json_export.findings_json(batch, tasks))
    files.put("classifications.csv", "csv", csv_export.classifications_csv(tasks))
    for task in tasks:
        sources = sources_of(task)
        for n, (series_uid, data) in enumerate(seg.segmentations(task, sources), start=1):
            files.put(f"task-{task.pk}-seg-{n}.dcm", "dicom-seg", data, task.pk, series_uid=series_uid)
        report = sr.measurement_report(task, sources)
        if report is not None:
            files.put(f"task-{task.pk}-sr.dcm", "dicom-sr", report, task.pk)
        for index, finding, data in nifti.nifti_masks(task, sources):
            files.put(f"task-{task.pk}-finding-{index}-{finding['label']}.nii.gz", "nifti", data, task.pk,
                      series_uid=finding["mask"]["series_uid"])
    document = manifest.provenance(batch, tasks) | {
        "files": [{k: e[k] for k in ("name", "format", "task", "size", "sha256")} for e in files.entries]}
    files.put("manifest.json", "manifest", json.dumps(document, indent=1, sort_keys=True).encode())
    return files.entries


def build_batch_exports(batch_id: int) -> Batch:
    """Build the batch's exports and record them (state ready), or record why they failed (state failed)."""
    batch = Batch.objects.select_related("project").get(pk=batch_id)
    try:
        entries = build_files(batch)
    except Exception as exc:  # recorded on the batch for the manager; the job itself does not retry blindly
        log.exception("exports of batch %s failed", batch_id)
        with transaction.atomic():
            Batch.objects.filter(pk=batch_id).update(export_state=Batch.ExportState.FAILED,
                                                     export_error=f"{type(exc).__name__}: {exc}"[:500])
            record_event("export", project_id=batch.project_id, obj=batch, outcome="error",
                         reason=type(exc).__name__, extra={"change": "build"})
        batch.refresh_from_db()
        return batch
    with transaction.atomic():
        Batch.objects.filter(pk=batch_id).update(export_state=Batch.ExportState.READY, exports=entries,
                                                 export_error="", exports_built_at=timezone.now())
        record_event("export", project_id=batch.project_id, obj=batch,
                     extra={"change": "build", "files": len(entries)})
        broadcast_on_commit(batch.project_id, "batch.exports_ready", {"batch": batch.pk, "files": len(entries)})
    batch.refresh_from_db()
    return batch
