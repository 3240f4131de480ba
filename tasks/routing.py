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

from dataclasses import dataclass

from core.models import Membership
from core.roles import READER_ROLE_TIERS, Subspecialty, Tier

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


def eligibility(user, projects) -> list[Eligibility]:
    """The reader's eligibility on each of the given projects where they may claim at all."""
    by_project: dict[int, list[Membership]] = {}
    memberships = Membership.objects.filter(user=user, project__in=projects, is_active=True,
                                            role__in=list(READER_ROLE_TIERS)).select_related("project")
    for membership in memberships:
        by_project.setdefault(membership.project_id, []).append(membership)
    result = []
    for project_id, memberships in by_project.items():
        project = memberships[0].project
        if not project.is_active or any(m.is_suspended for m in memberships):
            continue
        needs_calibration = project.requires_calibration and not any(m.calibrated_at for m in memberships)
        top = max(READER_ROLE_TIERS[m.role] for m in memberships)
        tiers = tuple(t for t in Tier.values if t == top or (project.higher_tiers_take_lower_work and t < top))
        subs = tuple(sorted({s for m in memberships for s in m.subspecialties}))
        result.append(Eligibility(project_id, tiers, subs, project.max_open_reads, int(top), project.lease_seconds,
                                  needs_calibration, project.gold_rate))
    return result


def facts_of(study) -> StudyFacts:
    return StudyFacts(tuple(study.modalities or ()), tuple(study.body_parts or ()), study.patient_age_years)
