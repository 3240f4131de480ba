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

from core.models import Membership
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


def eligibility(user, projects=None, *, claim_lock: tuple[int, int] | None = None) -> list[Eligibility]:
    """The reader's eligibility on each of the given projects (project ids, or a queryset of
    projects; None: every project) where they may claim at all.

    ``claim_lock`` (PostgreSQL, inside a transaction): the same statement also takes that
    transaction-level advisory lock (tasks.queue's per-reader claim lock), saving a round trip;
    the lock is held until the transaction ends. Memberships are read from a snapshot taken before
    the lock is granted, which is harmless: what the lock protects (the open-read count) is read
    by the next statement, with a new snapshot.
    """
    return eligibility_and_digest(user, projects, claim_lock=claim_lock)[0]


def eligibility_and_digest(user, projects=None, *, claim_lock: tuple[int, int] | None = None
                           ) -> tuple[list[Eligibility], str]:
    """eligibility() and the digest of the rows it was derived from ("" when there are none):
    ``digest_check`` recomputes it in a later statement, which tells whether the rules still hold
    without deriving them again (tasks.queue's cached claim rules)."""
    if projects is not None and not isinstance(projects, list | tuple):
        projects = list(projects.values_list("pk", flat=True))
    if projects is not None and not projects:
        return [], ""
    source = _eligibility_source(False, None if projects is None else len(projects), claim_lock is not None)
    params = _eligibility_params(user.pk, projects, typed=False)
    digest = ""
    # Every row carries the digest of them all, computed as digest_check computes it.
    digest_column = (f", md5(string_agg(ROW({_ELIGIBILITY_ROW})::text, ',') OVER "
                     f"(ORDER BY m.id ROWS BETWEEN UNBOUNDED PRECEDING AND UNBOUNDED FOLLOWING))")
    lock = ""
    if claim_lock is not None:
        # MATERIALIZED: evaluated exactly once, whatever the join order (when the reader has no
        # membership at all it may not run: then nothing is claimed and nothing needs locking).
        lock = "WITH claim_lock AS MATERIALIZED (SELECT pg_advisory_xact_lock(%s, %s))\n"
        params = [*claim_lock, *params]
    # Plain SQL: on the claim path the ORM's query building costs more than the query.
    sql = f"{lock}SELECT {_ELIGIBILITY_ROW}{digest_column} {source} ORDER BY m.id"
    by_project: dict[int, list[tuple]] = {}
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        for row in cursor.fetchall():
            by_project.setdefault(row[0], []).append(row)
            digest = row[12]
    result = []
    for project_id, rows in by_project.items():
        (_, _, _, _, _, active, requires_calibration, higher_take_lower, max_open_reads, lease_seconds,
         gold_rate, readers_see_model) = rows[0][:12]
        if not active or any(row[3] for row in rows):
            continue
        needs_calibration = bool(requires_calibration) and not any(row[4] for row in rows)
        top = max(READER_ROLE_TIERS[row[1]] for row in rows)
        tiers = tuple(t for t in Tier.values if t == top or (higher_take_lower and t < top))
        subs = tuple(sorted({s for row in rows for s in _json(row[2])}))
        result.append(Eligibility(project_id, tiers, subs, max_open_reads, int(top), lease_seconds,
                                  needs_calibration, gold_rate, bool(readers_see_model)))
    return result, digest


def digest_check(user_id: int, projects: list[int] | None) -> tuple[str, list]:
    """A scalar SQL expression (typed placeholders, for a prepared statement) with the digest
    eligibility_and_digest returns for the rows as they are when it runs, and its arguments."""
    return _digest_expression(projects is not None), _eligibility_params(user_id, projects, typed=True)


# The columns eligibility is derived from: one text for the query and the digest of its rows.
_ELIGIBILITY_ROW = ("m.project_id, m.role, m.subspecialties, m.is_suspended, m.calibrated_at IS NOT NULL, "
                    "p.is_active, p.requires_calibration, p.higher_tiers_take_lower_work, p.max_open_reads, "
                    "p.lease_seconds, p.gold_rate, "
                    "COALESCE(lc.suggestions_enabled AND NOT lc.is_blind_to_model, false)")


@functools.cache
def _digest_expression(on_projects: bool) -> str:
    source = _eligibility_source(True, None if not on_projects else 1)
    return f"(SELECT coalesce(md5(string_agg(ROW({_ELIGIBILITY_ROW})::text, ',' ORDER BY m.id)), '') {source})"


@functools.cache
def _eligibility_source(typed: bool, projects: int | None, locked: bool = False) -> str:
    """FROM and WHERE of a reader's reader memberships with their projects: on ``projects`` of them
    (how many ids follow the user's; typed: one array, whatever the number), or on every project
    (None); ``locked``: after the CTE claim_lock. Built once per shape (the claim path's hot text)."""
    memberships = Membership._meta.db_table
    project_table = Membership._meta.get_field("project").related_model._meta.db_table
    learning_table = learning().config_relation
    for role in READER_ROLE_TIERS:
        assert role.isidentifier(), role  # spliced into the text below as a literal
    roles = ", ".join(f"'{role}'" for role in READER_ROLE_TIERS)
    where = ""
    if projects is not None:
        where = (" AND m.project_id = ANY(%s::bigint[])" if typed
                 else f" AND m.project_id IN ({', '.join(['%s'] * projects)})")
    user = "%s::bigint" if typed else "%s"
    return (f"FROM {'claim_lock, ' if locked else ''}{memberships} m JOIN {project_table} p ON p.id = m.project_id "
            f"LEFT JOIN {learning_table} lc ON lc.project_id = m.project_id "
            f"WHERE m.user_id = {user} AND m.is_active AND m.role IN ({roles}){where}")


def _eligibility_params(user_id: int, projects: list[int] | None, *, typed: bool) -> list:
    """The arguments of _eligibility_source's text, in its order."""
    if projects is None:
        return [user_id]
    ids = [int(p) for p in projects]
    return [user_id, ids] if typed else [user_id, *ids]


def _json(value):
    return json.loads(value) if isinstance(value, str | bytes) else (value or [])


def facts_of(study) -> StudyFacts:
    return StudyFacts(tuple(study.modalities or ()), tuple(study.body_parts or ()), study.patient_age_years)
