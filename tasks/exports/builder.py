"""Build every export file of a delivered batch and store them encrypted; tasks.batches records them
on the batch (or the failure), in the background job tasks.build_batch_delivery (eager in tests and
the embedded default). Idempotent: file names are fixed per batch and task, so a rebuild overwrites them.
"""

import hashlib
import json

from core.dicom.storage import get_store
from tasks.exports import csv_export, json_export, manifest, nifti, seg, sr
from tasks.exports.sources import sources_of
from tasks.models import Task


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
