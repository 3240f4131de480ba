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
project requires calibration; a claim also needs the reader below the project's open-read limit.
That rule is one text, tasks/sql/eligibility.sql: ``eligibility`` runs it, and the claim statement
(tasks/sql/claim.sql) starts with it.
"""

import functools
from dataclasses import dataclass
from typing import NamedTuple

from django.db import connection

from core.roles import READER_ROLE_TIERS, Subspecialty, Tier
from tasks import sql
from tasks.learning_seam import learning
from tasks.states import ReadState

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
    open_reads: int = 0  # the reader's claimed reads there, lapsed or not, when this was asked

    @property
    def at_limit(self) -> bool:
        """The reader holds as many open reads as the project allows: no claim here."""
        return self.open_reads >= self.max_open_reads


def eligibility(user, projects=None) -> list[Eligibility]:
    """The reader's eligibility on each of the given projects (project ids, or a queryset of
    projects; None: every project) where they may claim at all, in the order of their first
    membership there. The rule is tasks/sql/eligibility.sql, the same text the claim statement
    (tasks/sql/claim.sql) starts with."""
    if projects is not None and not isinstance(projects, list | tuple):
        projects = list(projects.values_list("pk", flat=True))
    if projects is not None and not projects:
        return []
    with connection.cursor() as cursor:
        cursor.execute(_eligibility_statement(), {
            "reader": user.pk, "projects": None if projects is None else [int(p) for p in projects],
            "reader_roles": READER_ROLES, "role_tiers": ROLE_TIERS})
        rows = [_EligibleRow._make(row) for row in cursor.fetchall()]
    return [Eligibility(row.project_id, tuple(t for t in Tier.values if t == row.reader_tier
                                               or (row.takes_lower and t < row.reader_tier)),
                        tuple(sorted(row.subspecialties)), row.max_open_reads, int(row.reader_tier),
                        row.lease_seconds, bool(row.needs_calibration), row.gold_rate, bool(row.sees_model),
                        row.open_reads)
            for row in rows]


# The arguments the rule's roles and tiers take, in one order (eligibility.sql's reader_roles, role_tiers).
READER_ROLES = [str(role) for role in READER_ROLE_TIERS]
ROLE_TIERS = [int(tier) for tier in READER_ROLE_TIERS.values()]


class _EligibleRow(NamedTuple):
    project_id: int
    reader_tier: int
    takes_lower: bool
    subspecialties: list[str]
    needs_calibration: bool
    max_open_reads: int
    lease_seconds: int
    gold_rate: float
    sees_model: bool
    open_reads: int


@functools.cache
def eligibility_ctes() -> str:
    """The rule's CTEs (``membership``, ``eligible``) for the head of a WITH list, filled in once."""
    return sql.load("eligibility.sql", learning_config=learning().config_relation, claimed=ReadState.CLAIMED.value)


@functools.cache
def _eligibility_statement() -> str:
    columns = ", ".join(_EligibleRow._fields)
    return f"WITH {eligibility_ctes()}\nSELECT {columns} FROM eligible ORDER BY first_membership"


def facts_of(study) -> StudyFacts:
    return StudyFacts(tuple(study.modalities or ()), tuple(study.body_parts or ()), study.patient_age_years)
