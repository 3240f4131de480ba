"""The JSON export: every task's consensus findings, linked to Study / Series / SOP Instance UIDs and frames.

Schema ``radqueue.delivery.findings`` version FINDINGS_SCHEMA_VERSION (documented in README,
"Delivery batches and exports"). Findings are the normalised form tasks.findings.validation produces:
2D geometry in DICOM SCOORD pixel coordinates (x = column, y = row, the top-left corner of the
image at 0,0, so pixel centres at +0.5), ``slice`` the 0-based index along the series' slice
normal, ``frame`` 1-based; masks are run lengths over C-order (slice, row, column) voxels starting
with a run of zeros; patient coordinates in DICOM LPS millimetres.
"""

import json

FINDINGS_SCHEMA = "radqueue.delivery.findings"
FINDINGS_SCHEMA_VERSION = "1.0"


def findings_document(batch, tasks: list) -> dict:
    """The document: batch, then per task its UIDs, consensus method and findings."""
    return {
        "schema": FINDINGS_SCHEMA, "schema_version": FINDINGS_SCHEMA_VERSION,
        "batch": {"id": batch.pk, "name": batch.name, "project": batch.project_id},
        "conventions": {"patient_coordinates": "DICOM LPS mm", "pixel_coordinates": "DICOM SCOORD (column, row)",
                        "slice": "0-based index along the slice normal", "frame": "1-based",
                        "mask_rle": "C-order (slice, row, column) run lengths starting with zeros"},
        "tasks": [{
            "task": task.pk, "study_uid": task.study.study_uid,
            "series_uid": task.series.series_uid if task.series_id else None,
            "protocol_version": task.protocol_version.number,
            "consensus": {"method": task.consensus.method, "findings": task.consensus.findings},
        } for task in tasks],
    }


def findings_json(batch, tasks: list) -> bytes:
    return json.dumps(findings_document(batch, tasks), indent=1, sort_keys=True).encode()
