"""Versioned label schemas / protocols.

A protocol version is editable until a task first uses it; from then on it is immutable and
changes go into a new version (copied from the last one or from a shipped template).
"""

import json
from functools import cache
from pathlib import Path

from django.db import transaction
from django.db.models import Max
from django.utils import timezone

from core.errors import DomainError, NotFound
from core.models import LabelEntry, Project, ProtocolVersion, User
from core.panel_rule import ACTIONS as PANEL_ACTIONS
from core.panel_rule import EXTRA_READ
from core.roles import Subspecialty, Tier

TEMPLATE_DIR = Path(__file__).resolve().parent / "schema_templates"
KINDS_WITH_CATEGORIES = {LabelEntry.Kind.CLASSIFICATION, LabelEntry.Kind.ORDINAL}
ENTRY_FIELDS = ("key", "display_name", "kind", "categories", "unit", "coding_scheme", "code_value", "code_meaning")


@cache
def schema_templates() -> dict[str, dict]:
    """The shipped templates (BI-RADS, Lung-RADS, PI-RADS, generic findings) by key."""
    templates = {}
    for path in sorted(TEMPLATE_DIR.glob("*.json")):
        data = json.loads(path.read_text())
        templates[data["key"]] = data
    return templates


def get_template(key: str) -> dict:
    try:
        return schema_templates()[key]
    except KeyError:
        raise NotFound(f"No schema template {key!r}.") from None


def validate_entries(entries) -> list[dict]:
    """Check a list of label entries; return them normalised. Raises DomainError naming the field."""
    if not isinstance(entries, list) or not entries:
        raise DomainError("A label schema needs at least one entry.", errors={"entries": ["Give a non-empty list."]})
    errors: dict[str, list[str]] = {}
    seen: set[str] = set()
    clean = []
    for i, raw in enumerate(entries):
        where = f"entries[{i}]"
        if not isinstance(raw, dict):
            errors[where] = ["Each entry is an object."]
            continue
        entry = {f: raw.get(f, [] if f == "categories" else "") for f in ENTRY_FIELDS}
        problems = []
        key = entry["key"]
        if not isinstance(key, str) or not key:
            problems.append("key is required.")
        elif key in seen:
            problems.append(f"key {key!r} is used twice.")
        seen.add(key)
        if entry["kind"] not in LabelEntry.Kind.values:
            problems.append(f"kind must be one of {', '.join(LabelEntry.Kind.values)}.")
        if entry["coding_scheme"] not in LabelEntry.CodingScheme.values:
            problems.append(f"coding_scheme must be one of {', '.join(LabelEntry.CodingScheme.values)}.")
        for f in ("display_name", "code_value", "code_meaning"):
            if not isinstance(entry[f], str) or not entry[f]:
                problems.append(f"{f} is required.")
        categories = entry["categories"]
        if entry["kind"] in KINDS_WITH_CATEGORIES:
            if not isinstance(categories, list) or not categories:
                problems.append("classification and ordinal entries need an ordered list of categories.")
            else:
                values = [c.get("value") if isinstance(c, dict) else None for c in categories]
                if any(not isinstance(v, str) or not v for v in values):
                    problems.append("each category is an object with a string 'value' (and a 'meaning').")
                elif len(set(values)) != len(values):
                    problems.append("category values must be distinct.")
        elif categories:
            problems.append(f"{entry['kind']} entries take no categories.")
        if entry["kind"] == LabelEntry.Kind.MEASUREMENT and not entry["unit"]:
            problems.append("measurement entries need a UCUM unit (mm, mm2, ml, [hnsf'U]).")
        if problems:
            errors[where] = problems
        clean.append(entry)
    if errors:
        raise DomainError("The label schema is not valid.", code="invalid_schema", errors=errors)
    return clean


TIER_NAMES = ("annotator", "radiologist", "subspecialist")
AGREEMENT_BOUNDS = {"grade_within": (0, None), "dice": (0, 1), "iou": (0, 1), "landmark_mm": (0, None),
                    "measurement_rel": (0, None)}
PANEL_POLICY_KEYS = ("enabled", "uncertainty_threshold", "action")
RULE_CONDITIONS = {"modality", "body_part", "max_age", "subspecialty"}


def _number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and value == value  # not NaN


def validate_rules(rules) -> dict:
    """Check a protocol version's rules (their keys are described in core.schema.PROTOCOL_RULES_SCHEMA)
    before anything stores them: task creation, routing and agreement read them later and must not
    meet a value they cannot use. Keys this does not know are kept as they are. Raises DomainError
    naming each bad key."""
    if not isinstance(rules, dict):
        raise DomainError("rules must be an object.", errors={"rules": ["Expected an object."]})
    errors: dict[str, list[str]] = {}
    agreement = rules.get("agreement", {})
    if not isinstance(agreement, dict):
        errors["rules.agreement"] = ["Expected an object."]
    else:
        for key, value in agreement.items():
            if key not in AGREEMENT_BOUNDS:
                errors[f"rules.agreement.{key}"] = [f"Unknown; known: {', '.join(AGREEMENT_BOUNDS)}."]
                continue
            low, high = AGREEMENT_BOUNDS[key]
            whole = key == "grade_within"
            if not _number(value) or (whole and not isinstance(value, int)) or value < low or (
                    high is not None and value > high):
                errors[f"rules.agreement.{key}"] = [
                    f"Expected a {'whole ' if whole else ''}number from {low}" + (f" to {high}." if high else " up.")]
    if rules.get("unit", "study") not in ("study", "series"):
        errors["rules.unit"] = ["Expected study or series."]
    for key in ("modalities", "required_sequences"):
        value = rules.get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            errors[f"rules.{key}"] = ["Expected a list of strings."]
    for key in ("first_read_tier", "gold_first_read_tier", "adjudication_tier"):
        value = rules.get(key)
        if value is not None and not (isinstance(value, str) and value.lower() in TIER_NAMES) and not (
                isinstance(value, int) and not isinstance(value, bool) and value in Tier.values):
            errors[f"rules.{key}"] = [f"Expected one of {', '.join(TIER_NAMES)}."]
    for key in ("first_read_subspecialty", "adjudication_subspecialty", "adjudication_requires_subspecialist"):
        if key in rules and not isinstance(rules[key], bool):
            errors[f"rules.{key}"] = ["Expected true or false."]
    policy = rules.get("panel_policy")
    if policy is not None:
        if not isinstance(policy, dict):
            errors["rules.panel_policy"] = ["Expected an object."]
        else:
            problems = [f"{key}: unknown; known: {', '.join(PANEL_POLICY_KEYS)}." for key in policy
                        if key not in PANEL_POLICY_KEYS]
            if not isinstance(policy.get("enabled", False), bool):
                problems.append("enabled: expected true or false.")
            threshold = policy.get("uncertainty_threshold")
            if not _number(threshold) or threshold < 0:
                problems.append("uncertainty_threshold: expected a number from 0 up.")
            if policy.get("action", EXTRA_READ) not in PANEL_ACTIONS:
                problems.append(f"action: expected one of {', '.join(PANEL_ACTIONS)}.")
            if problems:
                errors["rules.panel_policy"] = problems
    subspecialty_rules = rules.get("subspecialty_rules", [])
    if not isinstance(subspecialty_rules, list):
        errors["rules.subspecialty_rules"] = ["Expected a list of rules."]
        subspecialty_rules = []
    for i, rule in enumerate(subspecialty_rules):
        where = f"rules.subspecialty_rules[{i}]"
        if not isinstance(rule, dict):
            errors[where] = ["Expected an object with a subspecialty."]
            continue
        problems = [f"{key}: unknown; known: {', '.join(sorted(RULE_CONDITIONS))}." for key in rule
                    if key not in RULE_CONDITIONS]
        if rule.get("subspecialty") not in Subspecialty.values:
            problems.append(f"subspecialty: expected one of {', '.join(Subspecialty.values)}.")
        problems += [f"{key}: expected a string." for key in ("modality", "body_part")
                     if key in rule and not isinstance(rule[key], str)]
        if "max_age" in rule and not _number(rule["max_age"]):
            problems.append("max_age: expected a number of years.")
        if problems:
            errors[where] = problems
    if errors:
        raise DomainError("The protocol's rules are not valid.", code="invalid_rules", errors=errors)
    return rules


def _write_entries(version: ProtocolVersion, entries: list[dict]) -> None:
    version.entries.all().delete()
    LabelEntry.objects.bulk_create(
        [LabelEntry(version=version, position=i, **e) for i, e in enumerate(entries)]
    )


@transaction.atomic
def create_protocol_version(*, project: Project, name: str, entries=None, rules=None, notes: str = "",
                            template: str | None = None, by: User | None = None) -> ProtocolVersion:
    """A new version: explicit entries, a template's, or (neither given) a copy of the latest."""
    # Lock the project row so two concurrent creators cannot take the same number.
    Project.objects.select_for_update().filter(pk=project.pk).first()
    latest = project.protocol_versions.order_by("-number").first()
    if entries is None and template:
        entries = get_template(template)["entries"]
    elif entries is None and latest is not None:
        entries = [{f: getattr(e, f) for f in ENTRY_FIELDS} for e in latest.entries.all()]
        rules = latest.rules if rules is None else rules
    entries = validate_entries(entries)
    if rules is not None:
        validate_rules(rules)
    number = (project.protocol_versions.aggregate(n=Max("number"))["n"] or 0) + 1
    version = ProtocolVersion.objects.create(
        project=project, number=number, name=name, notes=notes, rules=rules or {}, created_by=by
    )
    _write_entries(version, entries)
    _record("create", version, by)
    return version


@transaction.atomic
def update_protocol_version(version: ProtocolVersion, *, by: User | None = None, **changes) -> ProtocolVersion:
    """Edit a version that no task has used yet; a used one is refused (400, protocol_version_locked)."""
    version = ProtocolVersion.objects.select_for_update().get(pk=version.pk)
    if version.is_locked:
        raise DomainError(
            f"Protocol version {version.number} has been used by tasks and cannot change; create a new version.",
            code="protocol_version_locked",
        )
    if "entries" in changes:
        _write_entries(version, validate_entries(changes.pop("entries")))
    if "rules" in changes:
        validate_rules(changes["rules"])
    for field in ("name", "notes", "rules"):
        if field in changes:
            setattr(version, field, changes[field])
    version.save()
    _record("update", version, by)
    return version


def mark_protocol_version_used(version: ProtocolVersion) -> None:
    """Lock the version: called when a task is first created under it. Idempotent."""
    ProtocolVersion.objects.filter(pk=version.pk, used_at__isnull=True).update(used_at=timezone.now())


def _record(action: str, version: ProtocolVersion, by) -> None:
    from audit.trail import record_event

    record_event(action, actor=by, project=version.project, obj=version, protocol_version=version.number)
