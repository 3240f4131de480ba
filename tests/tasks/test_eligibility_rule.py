"""The reader-eligibility rule is one text (tasks/sql/eligibility.sql) that tasks.routing.eligibility
runs and the claim statement starts with. For random readers (roles, tiers, sub-specialties,
suspensions, calibration, ended memberships, open reads against the cap) on projects that ask for
different tiers and sub-specialties, what routing.eligibility says, what a claim actually takes and
the rule as docs/queue.md states it (written out here in Python) must agree project by project."""

from dataclasses import dataclass
from datetime import timedelta

import pytest
from django.db import transaction
from django.utils import timezone
from hypothesis import example, given, settings
from hypothesis import strategies as st

from core.errors import NotFound
from core.memberships import change_membership, grant_membership
from core.models import Membership, Project
from core.protocols import create_protocol_version
from core.roles import READER_ROLE_TIERS, Role, Tier
from tasks.creation import create_tasks
from tasks.models import QueueSlot, Read
from tasks.queue import OpenReadLimit, claim_for_reader, claim_next_read
from tasks.routing import eligibility
from tests.factories import ProjectFactory, UserFactory
from tests.tasks.conftest import add_ct_studies

pytestmark = pytest.mark.django_db

SUBSPECIALTIES = ["neuro", "chest", "msk"]
# One task more than the most open reads drawn (3), for each of the readers' claims: at or over the
# cap a free slot is still there, so only the rule can stop a claim.
STUDIES_PER_PROJECT = 4

# What each project's first reads ask for (tier, sub-specialty), through the protocol's rules.
PROJECT_RULES = {
    (Tier.ANNOTATOR, ""): {},
    (Tier.RADIOLOGIST, ""): {"first_read_tier": "radiologist"},
    (Tier.RADIOLOGIST, "neuro"): {"first_read_tier": "radiologist", "first_read_subspecialty": True,
                                  "subspecialty_rules": [{"modality": "CT", "subspecialty": "neuro"}]},
    (Tier.SUBSPECIALIST, "chest"): {"first_read_tier": "subspecialist", "first_read_subspecialty": True,
                                    "subspecialty_rules": [{"modality": "CT", "subspecialty": "chest"}]},
}


@dataclass(frozen=True)
class Held:
    role: str
    subspecialties: tuple[str, ...]
    active: bool
    suspended: bool
    calibrated: bool


@dataclass(frozen=True)
class ProjectSetting:
    active: bool
    requires_calibration: bool
    higher_take_lower: bool
    max_open_reads: int
    gold_rate: float  # 1.0: a gold check is due on every claim (there are none to hand out)


@dataclass(frozen=True)
class Place:
    """A reader's place on one project."""

    roles: tuple[Held, ...]  # empty: no membership; (qa,): a role that reads nothing
    open_reads: int
    lapsed: bool  # the open reads' leases have run out (they still count until the sweep ends them)


def mostly(value: bool):
    """True or False, ``value`` four times in five: most draws get past each of the rule's tests, so
    the later tests (tier, sub-specialty, calibration, the cap) are reached often."""
    return st.sampled_from([value] * 4 + [not value])


def _role(role: str):
    subs = st.just(()) if role == Role.ANNOTATOR else st.lists(
        st.sampled_from(SUBSPECIALTIES), min_size=1 if role == Role.SUBSPECIALIST else 0, max_size=2, unique=True
    ).map(tuple)
    return st.builds(Held, st.just(role), subs, active=mostly(True), suspended=mostly(False),
                     calibrated=st.booleans())


def _roles():
    readers = st.lists(st.sampled_from([Role.ANNOTATOR, Role.RADIOLOGIST, Role.SUBSPECIALIST]), min_size=1,
                       max_size=2, unique=True).flatmap(lambda roles: st.tuples(*[_role(r) for r in roles]))
    qa = st.just((Held(Role.QA, (), True, False, False),))
    return st.one_of(st.just(()), qa, *[readers] * 6)


PROJECT = st.builds(ProjectSetting, active=mostly(True), requires_calibration=st.booleans(),
                    higher_take_lower=st.booleans(), max_open_reads=st.integers(1, 3),
                    gold_rate=st.sampled_from([0.0, 0.0, 1.0]))
PLACE = st.builds(Place, roles=_roles(), open_reads=st.integers(0, 3), lapsed=st.booleans())
READERS = 3  # per example: three readers' places on the same projects


# A sub-specialist holding both sub-specialties on projects that let higher tiers take lower work:
# every project's slot is theirs (one example met whatever the draws are).
OPEN_TO_ALL = ProjectSetting(active=True, requires_calibration=False, higher_take_lower=True, max_open_reads=2,
                             gold_rate=0.0)
TAKES_ALL = Place(roles=(Held(Role.SUBSPECIALIST, ("chest", "neuro"), True, False, False),), open_reads=1,
                  lapsed=False)


def documented_rule(project: ProjectSetting, place: Place, slot: tuple[int, str]) -> tuple[bool, bool]:
    """(whether the project is in the reader's eligibility, whether a claim there takes the slot),
    as docs/queue.md and tasks.routing's docstring state the rule."""
    readers = [r for r in place.roles if r.role in READER_ROLE_TIERS and r.active]
    if not readers or not project.active or any(r.suspended for r in readers):
        return False, False
    tier, subspecialty = slot
    top = max(READER_ROLE_TIERS[r.role] for r in readers)
    held = {s for r in readers for s in r.subspecialties}
    calibrated = not project.requires_calibration or any(r.calibrated for r in readers)
    takes = (tier == top or (project.higher_take_lower and tier < top)) and (not subspecialty or subspecialty in held)
    return True, takes and calibrated and place.open_reads < project.max_open_reads


def _configure(project: Project, setting: ProjectSetting) -> None:
    Project.objects.filter(pk=project.pk).update(
        is_active=setting.active, requires_calibration=setting.requires_calibration,
        higher_tiers_take_lower_work=setting.higher_take_lower, max_open_reads=setting.max_open_reads,
        gold_rate=setting.gold_rate)


def _place_reader(reader, project: Project, place: Place, tasks, now) -> None:
    for role in place.roles:
        membership = grant_membership(project=project, user=reader, role=role.role,
                                      subspecialties=role.subspecialties)
        if role.calibrated:
            Membership.objects.filter(pk=membership.pk).update(calibrated_at=now)
        if role.suspended or not role.active:
            change_membership(membership, is_suspended=True if role.suspended else None,
                              is_active=None if role.active else False)
    lease = now - timedelta(minutes=1) if place.lapsed else now + timedelta(minutes=30)
    for task in tasks[:place.open_reads]:
        Read.objects.create(project=project, task=task, reader=reader, tier=Tier.ANNOTATOR,
                            claimed_at=now - timedelta(hours=1), lease_expires_at=lease)


def test_routing_eligibility_and_the_claim_follow_one_rule(cast):
    projects, tasks, slots = [], {}, {}
    for n, ((tier, subspecialty), rules) in enumerate(PROJECT_RULES.items()):
        project = ProjectFactory(name=f"Rule {n}", client=cast.client_org, vendor=cast.vendor, reads_per_task=2)
        create_protocol_version(project=project, name="v1", template="generic_findings", rules=rules)
        add_ct_studies(project, STUDIES_PER_PROJECT, seed=500 + 10 * n)
        tasks[project.pk] = create_tasks(project, by=None)
        assert set(QueueSlot.objects.filter(project=project).values_list("tier", "subspecialty")) == {
            (tier, subspecialty)}
        projects.append(project)
        slots[project.pk] = (tier, subspecialty)
    outcomes = set()
    n = len(projects)

    @settings(max_examples=50, deadline=None)
    @given(st.lists(PROJECT, min_size=n, max_size=n),
           st.lists(st.lists(PLACE, min_size=n, max_size=n), min_size=READERS, max_size=READERS))
    @example([OPEN_TO_ALL] * n, [[TAKES_ALL] * n] * READERS)
    def check(project_settings, places):
        with transaction.atomic():
            now = timezone.now()
            for project, setting in zip(projects, project_settings, strict=True):
                _configure(project, setting)
            for reader_places in places:
                reader = UserFactory(organization=cast.vendor)
                for project, place in zip(projects, reader_places, strict=True):
                    _place_reader(reader, project, place, tasks[project.pk], now)
                rules = {rule.project_id: rule for rule in eligibility(reader)}
                assert set(rules) <= {p.pk for p in projects}  # none on the cast's project: no membership there
                for project, setting, place in zip(projects, project_settings, reader_places, strict=True):
                    slot = slots[project.pk]
                    listed, claimable = documented_rule(setting, place, slot)
                    rule = rules.get(project.pk)
                    assert (rule is not None) == listed, (setting, place, rule)
                    routing_says = rule is not None and not rule.needs_calibration and not rule.at_limit and (
                        slot[0] in rule.tiers and (not slot[1] or slot[1] in rule.subspecialties))
                    try:
                        claim = claim_next_read(reader, project_id=project.pk)
                    except NotFound:  # no active membership left there: the project is not even visible
                        claim = None
                    assert (claim is not None) == routing_says == claimable, (setting, place, rule, claim)
                    if rule is not None:
                        assert rule.open_reads == place.open_reads
                    if claim is not None:
                        assert claim.read.tier == rule.reader_tier and claim.read.lease_expires_at == (
                            claim.read.claimed_at + timedelta(seconds=rule.lease_seconds))
                    elif rule is not None:
                        # Nothing claimed: the claim's answer names the open-read limit where that is why.
                        try:
                            claim_for_reader(reader, project_id=project.pk, another=True)
                            limited = False
                        except OpenReadLimit as error:
                            limited = True
                            assert len(error.held) == place.open_reads
                        assert limited == (place.open_reads >= setting.max_open_reads) == rule.at_limit
                    outcomes.add((listed, claimable))
            transaction.set_rollback(True)

    check()
    assert outcomes == {(False, False), (True, False), (True, True)}  # every kind of answer was met
