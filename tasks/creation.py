"""Tasks from ingested studies, under the project's current protocol version.

Gold and calibration tasks are routed to radiologists (``"gold_first_read_tier"`` overrides);
their consensus becomes the reference that checks are scored against (tasks.gold).

Protocol rules used here: ``"unit": "study" | "series"`` (default study); ``"modalities"`` (only
series of these); ``"required_sequences": ["FLAIR", "T1_POST"]`` (MR: a study missing one is
flagged, not queued); and the routing rules (tasks.routing). A task with k reads gets k queue
slots carrying the first-read route.
"""

from collections import Counter

from django.db import transaction

from audit.trail import record_event
from core.dicom.models import Series, Study
from core.errors import DomainError
from core.models import Project, User
from core.protocols import mark_protocol_version_used
from tasks.models import QueueSlot, Task
from tasks.progress import announce_progress
from tasks.routing import adjudication_route, facts_of, first_read_route
from tasks.states import TaskState


def _units(study: Study, rules: dict) -> list[Series | None]:
    modalities = {m.upper() for m in rules.get("modalities", [])}
    series = [s for s in study.series.all() if not modalities or s.modality.upper() in modalities]
    if rules.get("unit", "study") == "series":
        return series
    return [None] if series else []


def _missing_sequences(study: Study, rules: dict) -> list[str]:
    required = [s.upper() for s in rules.get("required_sequences", [])]
    present = {s.mr_sequence for s in study.series.all() if s.modality == "MR"}
    return [s for s in required if s not in present]


@transaction.atomic
def create_tasks(project: Project, *, by: User | None, studies=None, kind: str = Task.Kind.PRODUCTION,
                 reads_required: int | None = None) -> list[Task]:
    """Create the missing tasks for the project's studies (or the given ones); idempotent."""
    version = project.current_protocol_version()
    if version is None:
        raise DomainError("The project has no protocol version yet; create one first.", code="no_protocol")
    rules = version.rules or {}
    studies = (studies if studies is not None else Study.objects.filter(project=project)).prefetch_related("series")
    k = reads_required or project.reads_per_task
    existing = set(Task.objects.filter(protocol_version=version, kind=kind).values_list("study_id", "series_id"))
    created = []
    for study in studies:
        if study.project_id != project.pk:
            raise DomainError("A study of another project was given.", code="wrong_project")
        facts = facts_of(study)
        first, adjudicate = first_read_route(facts, rules), adjudication_route(facts, rules)
        if kind != Task.Kind.PRODUCTION:
            # Gold and calibration references are read by radiologists (tasks.gold).
            first = first_read_route(facts, {"first_read_tier": rules.get("gold_first_read_tier", "radiologist")})
        missing = _missing_sequences(study, rules)
        for series in _units(study, rules):
            if (study.pk, series.pk if series else None) in existing:
                continue
            task = Task(project=project, protocol_version=version, study=study, series=series, kind=kind,
                        reads_required=k, first_read_tier=first.tier, first_read_subspecialty=first.subspecialty,
                        adjudication_tier=adjudicate.tier, adjudication_subspecialty=adjudicate.subspecialty,
                        created_by=by)
            if missing:
                task.state = TaskState.FLAGGED
                task.flag_reason = f"missing required MR sequence(s): {', '.join(missing)}"
            created.append(task)
    Task.objects.bulk_create(created, batch_size=1000)  # sets primary keys (RETURNING) on both backends
    slots = [QueueSlot(project=project, task=t, priority=t.priority, tier=t.first_read_tier,
                       subspecialty=t.first_read_subspecialty)
             for t in created if t.state == TaskState.QUEUED for _ in range(t.reads_required)]
    QueueSlot.objects.bulk_create(slots, batch_size=2000)
    if created:
        mark_protocol_version_used(version)
        if kind == Task.Kind.PRODUCTION:
            announce_progress(project.pk, **Counter(t.state for t in created))
        record_event("create", actor=by, project=project, object_type="tasks.task", protocol_version=version.number,
                     extra={"tasks": len(created), "kind": kind,
                            "flagged": sum(1 for t in created if t.state == TaskState.FLAGGED)})
    return created
