"""Who may read what: the tier and sub-specialty a first read or an adjudication needs, and which
readers are eligible.

Defaults (a protocol version's ``rules`` override them):
- first reads: annotators (``"first_read_tier": "radiologist"`` asks for radiologists);
- adjudication: a radiologist, with the study's sub-specialty when one applies;
- sub-specialty of a study: mammography -> breast; PET/NM -> nuclear; a patient under 18 ->
  paediatric; brain/head CT and MR -> neuro; musculoskeletal body parts -> msk; else none.
  ``"subspecialty_rules": [{"modality": "MR", "body_part": "KNEE", "subspecialty": "msk"}, ...]``
  are tried first; ``"adjudication_subspecialty": false`` turns the default off.
Tiers rank annotator < radiologist < sub-specialist. A reader is eligible if an active, not
suspended member with a reader role of the tier (or a higher one where the project lets higher
tiers take lower work), holding the sub-specialty when one is required, and calibrated when the
project requires calibration.
"""

import functools
import json
from dataclasses import dataclass

from django.db import connection

from core.roles import READER_ROLE_TIERS, Subspecialty, Tier
from tasks.learning_seam import learning

BRAIN_PARTS = {"BRAIN", "HEAD", "SKULL", "HEADNECK", "NECK"}
MSK_PARTS = {"KNEE", "SHOULDER", "HIP", "ANKLE", "WRIST", "ELBOW", "HAND", "FOOT", "EXTREMITY", "LEG", "ARM",
             "FEMUR", "TIBIA", "HUMERUS", "PELVIS", "LSPINE", "CSPINE", "TSPINE", "SPINE", "JOINT"}
TIER_NAMES = {"annotator": Tier.ANNOTATOR, "radiologist": Tier.RADIOLOGIST, "subspecialist": Tier.SUBSPECIALIST}


@dataclass(frozen=True)
class Route:
    tier: int
    subspecialty: str = ""


@dataclass(frozen=True)
class StudyFacts:
    """What routing looks at: modalities, body parts (upper case) and the patient's age."""

    modalities: tuple[str, ...]
    body_parts: tuple[str, ...]
    patient_age_years: int | None


def _tier(value, default: int) -> int:
    if value is None:
        return default
    if isinstance(value, int) and value in Tier.values:
        return value
    try:
        return TIER_NAMES[str(value).lower()]
    except KeyError:
        raise ValueError(f"unknown tier {value!r}; use annotator, radiologist or subspecialist") from None


def study_subspecialty(facts: StudyFacts, rules: dict | None = None) -> str:
    """The sub-specialty that owns a study, or '' when none does."""
    modalities = {m.upper() for m in facts.modalities}
    parts = {p.upper().replace(" ", "") for p in facts.body_parts}
    for rule in (rules or {}).get("subspecialty_rules", []):
        if rule.get("modality") and rule["modality"].upper() not in modalities:
            continue
        if rule.get("body_part") and rule["body_part"].upper() not in parts:
            continue
        if "max_age" in rule and (facts.patient_age_years is None or facts.patient_age_years > rule["max_age"]):
            continue
        return rule["subspecialty"]
    if "MG" in modalities:
        return Subspecialty.BREAST
    if modalities & {"PT", "NM"}:
        return Subspecialty.NUCLEAR
    if facts.patient_age_years is not None and facts.patient_age_years < 18:
        return Subspecialty.PAEDIATRIC
    if modalities & {"CT", "MR"} and parts & BRAIN_PARTS:
        return Subspecialty.NEURO
    if parts & MSK_PARTS:
        return Subspecialty.MSK
    return ""


def first_read_route(facts: StudyFacts, rules: dict | None = None) -> Route:
    rules = rules or {}
    tier = _tier(rules.get("first_read_tier"), Tier.ANNOTATOR)
    # Sub-specialty applies to first reads only when radiologists read first and the protocol asks.
    subspecialty = ""
    if tier >= Tier.RADIOLOGIST and rules.get("first_read_subspecialty", False):
        subspecialty = study_subspecialty(facts, rules)
    return Route(tier, subspecialty)


def adjudication_route(facts: StudyFacts, rules: dict | None = None) -> Route:
    rules = rules or {}
    tier = _tier(rules.get("adjudication_tier"), Tier.RADIOLOGIST)
    subspecialty = study_subspecialty(facts, rules) if rules.get("adjudication_subspecialty", True) else ""
    if rules.get("adjudication_requires_subspecialist") and subspecialty:
        tier = Tier.SUBSPECIALIST
    return Route(tier, subspecialty)


@dataclass(frozen=True)
class Eligibility:
    """What a reader may claim on one project: the tiers of slots and the sub-specialties held."""

    project_id: int
    tiers: tuple[int, ...]
    subspecialties: tuple[str, ...]
    max_open_reads: int
    reader_tier: int
    lease_seconds: int
    needs_calibration: bool = False  # only calibration checks until the reader passes
    gold_rate: float = 0.0
    readers_see_model: bool = False  # not blind-to-model and suggestions on (learning.LearningConfig)


def eligibility(user, projects=None) -> list[Eligibility]:
    """The reader's eligibility on each of the given projects (project ids, or a queryset of
    projects; None: every project) where they may claim at all. The claim itself derives the same
    in its own statement (tasks/sql/claim.sql); this is for everything else."""
    if projects is not None and not isinstance(projects, list | tuple):
        projects = list(projects.values_list("pk", flat=True))
    if projects is not None and not projects:
        return []
    by_project: dict[int, list[tuple]] = {}
    with connection.cursor() as cursor:
        cursor.execute(_eligibility_text(), {
            "reader": user.pk, "projects": None if projects is None else [int(p) for p in projects],
            "reader_roles": [str(role) for role in READER_ROLE_TIERS]})
        for row in cursor.fetchall():
            by_project.setdefault(row[0], []).append(row)
    result = []
    for project_id, rows in by_project.items():
        (_, _, _, _, _, active, requires_calibration, higher_take_lower, max_open_reads, lease_seconds,
         gold_rate, readers_see_model) = rows[0]
        if not active or any(row[3] for row in rows):
            continue
        needs_calibration = bool(requires_calibration) and not any(row[4] for row in rows)
        top = max(READER_ROLE_TIERS[row[1]] for row in rows)
        tiers = tuple(t for t in Tier.values if t == top or (higher_take_lower and t < top))
        subs = tuple(sorted({s for row in rows for s in _json(row[2])}))
        result.append(Eligibility(project_id, tiers, subs, max_open_reads, int(top), lease_seconds,
                                  needs_calibration, gold_rate, bool(readers_see_model)))
    return result


# A reader's reader memberships with what their projects say (``projects`` NULL: on every project).
_ELIGIBILITY = """SELECT m.project_id, m.role, m.subspecialties, m.is_suspended, m.calibrated_at IS NOT NULL,
       p.is_active, p.requires_calibration, p.higher_tiers_take_lower_work, p.max_open_reads, p.lease_seconds,
       p.gold_rate, coalesce(lc.suggestions_enabled AND NOT lc.is_blind_to_model, false)
FROM core_membership m
JOIN core_project p ON p.id = m.project_id
LEFT JOIN {learning_config} lc ON lc.project_id = m.project_id
WHERE m.user_id = %(reader)s AND m.is_active AND m.role = ANY(%(reader_roles)s::text[])
  AND (%(projects)s::bigint[] IS NULL OR m.project_id = ANY(%(projects)s::bigint[]))
ORDER BY m.id"""


@functools.cache
def _eligibility_text() -> str:
    return _ELIGIBILITY.format(learning_config=learning().config_relation)


def _json(value):
    return json.loads(value) if isinstance(value, str | bytes) else (value or [])


def facts_of(study) -> StudyFacts:
    return StudyFacts(tuple(study.modalities or ()), tuple(study.body_parts or ()), study.patient_age_years)
