"""The reader's workstation (tasks.reader_pages has the views): what the worklist lists, the findings
panel a protocol version makes, and the panel's own answers merged into a read's draft.

The draft has two writers: the viewer, whose SEG and SR saves (STOW-RS into the read's root,
tasks.read_objects) replace their objects' findings in it, and the panel, whose answers are the
classifications, ordinal grades and typed measurement values. Each replaces only its own findings,
on the locked read, so neither drops what the other saved however their requests interleave.
"""

from __future__ import annotations

from dataclasses import dataclass

from django.db import transaction
from django.utils import timezone

from core.errors import DomainError
from core.models import LabelEntry, Project
from core.roles import Perm
from core.selectors import projects_visible_to
from tasks import reads, selectors
from tasks.models import Read

CHOICE_KINDS = {LabelEntry.Kind.CLASSIFICATION, LabelEntry.Kind.ORDINAL}
# The fields a panel answer may carry; a finding with anything else (a line, a mask...) is the viewer's.
PANEL_FIELDS = {"label", "value", "unit"}
GEOMETRY = ("mask", "bbox", "bbox3d", "polygon", "line", "point", "point_mm")


@dataclass(frozen=True)
class Field:
    """One field of the findings panel: a choice (categories) or a typed measurement value."""

    key: str
    display_name: str
    kind: str
    categories: list
    unit: str

    @property
    def is_choice(self) -> bool:
        return self.kind in CHOICE_KINDS


def panel_fields(version) -> list[Field]:
    """The panel's fields in protocol order: classifications and grades with their categories,
    measurements as a number in their unit (a drawn one comes from the viewer instead)."""
    return [Field(e.key, e.display_name, e.kind, list(e.categories), e.unit) for e in version.entries.all()
            if e.kind in CHOICE_KINDS or e.kind == LabelEntry.Kind.MEASUREMENT]


def drawn_entries(version) -> list[LabelEntry]:
    """Labels drawn in the viewer (masks, boxes, outlines, points, measured lines)."""
    return [e for e in version.entries.all() if e.kind not in CHOICE_KINDS]


def is_panel_finding(finding, panel_keys: set[str]) -> bool:
    return isinstance(finding, dict) and finding.get("label") in panel_keys and set(finding) <= PANEL_FIELDS


def panel_answers(draft, fields: list[Field]) -> dict[str, object]:
    """The panel's current answers in a draft, by label."""
    keys = {f.key for f in fields}
    return {f["label"]: f.get("value") for f in reads.draft_findings(draft) if is_panel_finding(f, keys)}


def saved_objects(draft, version) -> list[dict]:
    """What the viewer saved into the draft (segments, boxes, measured lines...), for the panel's list."""
    names = {e.key: e.display_name for e in version.entries.all()}
    keys = {f.key for f in panel_fields(version)}
    saved = []
    for finding in reads.draft_findings(draft):
        if not isinstance(finding, dict) or is_panel_finding(finding, keys):
            continue
        shape = next((g for g in GEOMETRY if g in finding), "")
        saved.append({"label": finding.get("label", ""), "name": names.get(finding.get("label"), finding.get("label")),
                      "shape": shape.replace("_", " "), "value": finding.get("value")})
    return saved


def _answer(field: Field, raw) -> dict | None:
    """The finding for one answer; None clears it. DomainError naming the field when it cannot be."""
    if raw in (None, ""):
        return None
    if field.is_choice:
        allowed = [str(c.get("value")) for c in field.categories]
        if str(raw) not in allowed:
            raise DomainError(f"{field.display_name}: {raw!r} is not one of its categories.",
                              errors={field.key: [f"Choose one of {', '.join(allowed)}."]})
        return {"label": field.key, "value": str(raw)}
    try:
        value = float(raw)
    except (TypeError, ValueError):
        raise DomainError(f"{field.display_name}: a number is needed.",
                          errors={field.key: ["A number is needed."]}) from None
    if value != value or value in (float("inf"), float("-inf")):
        raise DomainError(f"{field.display_name}: a finite number is needed.",
                          errors={field.key: ["A finite number is needed."]})
    return {"label": field.key, "value": value, **({"unit": field.unit} if field.unit else {})}


@transaction.atomic
def save_panel_answers(read_id, user, answers) -> Read:
    """Replace the panel's findings in the read's draft with ``answers`` ({label: value}; an empty
    value clears the label), keeping every other finding (the viewer's) as the locked draft has it.
    400 naming each unknown label or bad value; 404/409 as a draft save (tasks.reads.save_draft)."""
    if not isinstance(answers, dict):
        raise DomainError("Answers are an object of label to value.", errors={"answers": ["Expected an object."]})
    read = reads.get_read_for_update(read_id, user)  # the viewer's STOW waits on this lock, or we on it
    fields = {f.key: f for f in panel_fields(read.task.protocol_version)}
    errors, answered = {}, []
    for key, raw in answers.items():
        field = fields.get(key)
        if field is None:
            errors[str(key)[:64]] = ["Not a classification, grade or measurement of this protocol."]
            continue
        try:
            finding = _answer(field, raw)
        except DomainError as refusal:
            errors.update(refusal.errors)
            continue
        if finding is not None:
            answered.append(finding)
    if errors:
        raise DomainError("Some answers cannot be saved.", errors=errors)
    kept = [f for f in reads.draft_findings(read.draft) if not is_panel_finding(f, set(fields))]
    # Labels the request left out keep their answer: two tabs or a late autosave never clear each other.
    untouched = [f for f in reads.draft_findings(read.draft)
                 if is_panel_finding(f, set(fields)) and f["label"] not in answers]
    findings = untouched + answered + kept
    draft = {**read.draft, "findings": findings} if isinstance(read.draft, dict) else findings
    return reads.save_draft(read.pk, user, draft)


@dataclass(frozen=True)
class ProjectWork:
    project: Project
    reads: list


def worklist(user) -> list[ProjectWork]:
    """The reader's projects with the reads they hold open on each, oldest first. Nothing tells a
    gold or calibration check from production work: a read shows its task, study and lease only."""
    held = list(selectors.open_reads_of(user).select_related("task__study").order_by("claimed_at", "id"))
    now = timezone.now()
    by_project: dict[int, list] = {}
    for read in held:
        by_project.setdefault(read.project_id, []).append(
            {"id": read.pk, "task": read.task_id, "study_uid": read.task.study.study_uid,
             "claimed_at": read.claimed_at, "lease_expires_at": read.lease_expires_at,
             "lapsed": read.lease_expires_at is not None and read.lease_expires_at <= now})
    projects = projects_visible_to(user, Perm.READ).order_by("name")
    return [ProjectWork(p, by_project.get(p.pk, [])) for p in projects]
