"""The provenance manifest that goes with every delivery.

Per task: protocol version, reads (count and each reader's tier and pseudonym, never a name),
consensus method, adjudicator tier, the prioritisation model's version (null until the learning
module scores tasks), and the de-identification profiles and options of its instances. Per
delivery: software version, project de-identification options, and the SHA-256 of every file.
"""

from importlib import metadata

from core.dicom.models import DeidRecord
from core.roles import Tier
from tasks.learning_seam import learning
from tasks.models import Read
from tasks.states import ReadState

MANIFEST_SCHEMA = "radqueue.delivery.manifest"
MANIFEST_SCHEMA_VERSION = "1.0"


def software_version() -> str:
    try:
        return f"radqueue {metadata.version('radqueue')}"
    except metadata.PackageNotFoundError:
        return "radqueue (unpackaged)"


def _deid(tasks: list) -> tuple[dict, list[dict]]:
    by_study: dict[int, list[dict]] = {}
    seen: set[tuple[int, str, str]] = set()
    records = (DeidRecord.objects.filter(instance__series__study__in={t.study_id for t in tasks})
               .values_list("instance__series__study_id", "profile_version", "options"))
    for study_id, profile, options in records:
        key = (study_id, profile, repr(sorted((options or {}).items())))
        if key not in seen:
            seen.add(key)
            by_study.setdefault(study_id, []).append({"profile": profile, "options": options})
    profiles = []
    for entries in by_study.values():
        for entry in entries:
            if entry not in profiles:
                profiles.append(entry)
    return by_study, profiles


def provenance(batch, tasks: list) -> dict:
    """Everything the manifest says except the files (added by the builder once they exist)."""
    task_ids = [t.pk for t in tasks]
    reads: dict[int, list[dict]] = {}
    for task_id, tier, pseudonym in (Read.objects.filter(task_id__in=task_ids, state=ReadState.SUBMITTED,
                                                         is_check=False)
                                     .order_by("id").values_list("task_id", "tier", "reader__pseudonym")):
        reads.setdefault(task_id, []).append({"reader": pseudonym, "tier": Tier(tier).label})
    models = learning().model_versions(task_ids)
    deid_by_study, profiles = _deid(tasks)
    project = batch.project
    entries = []
    for task in tasks:
        adjudication = getattr(task.consensus, "adjudication", None)
        entries.append({
            "task": task.pk, "study_uid": task.study.study_uid,
            "series_uid": task.series.series_uid if task.series_id else None,
            "protocol_version": task.protocol_version.number, "protocol_name": task.protocol_version.name,
            "reads": len(reads.get(task.pk, [])), "readers": reads.get(task.pk, []),
            "consensus_method": task.consensus.method,
            "adjudicator_tier": (Tier(adjudication.adjudicator_tier).label
                                 if adjudication is not None and adjudication.adjudicator_tier else None),
            "model_version": models.get(task.pk),
            "deidentification": deid_by_study.get(task.study_id, []),
        })
    return {
        "schema": MANIFEST_SCHEMA, "schema_version": MANIFEST_SCHEMA_VERSION, "software_version": software_version(),
        "batch": {"id": batch.pk, "name": batch.name, "project": project.pk,
                  "delivered_at": batch.delivered_at.isoformat() if batch.delivered_at else None},
        "protocol_versions": sorted({t.protocol_version.number for t in tasks}),
        "deidentification": {"profiles": profiles, "project_options": {
            "retain_modified_dates": project.deid_retain_modified_dates,
            "retain_patient_characteristics": project.deid_retain_patient_characteristics,
            "clean_descriptors": project.deid_clean_descriptors,
            "retain_device_identity": project.deid_retain_device_identity,
            "private_creator_allowlist": project.deid_private_creator_allowlist}},
        "tasks": entries,
    }
