"""Routing: the tier and sub-specialty each read needs, by default and by protocol rule."""

import pytest

from core.roles import Tier
from tasks.routing import Route, StudyFacts, adjudication_route, first_read_route, study_subspecialty


def facts(*modalities, parts=(), age=50):
    return StudyFacts(tuple(modalities), tuple(parts), age)


@pytest.mark.parametrize("study,expected", [
    (facts("MG"), "breast"),
    (facts("MR", parts=["BRAIN"]), "neuro"),
    (facts("CT", parts=["HEAD"]), "neuro"),
    (facts("MR", parts=["KNEE"]), "msk"),
    (facts("CR", parts=["SHOULDER"]), "msk"),
    (facts("CT", parts=["CHEST"], age=9), "paediatric"),
    (facts("PT", "CT"), "nuclear"),
    (facts("NM"), "nuclear"),
    (facts("CT", parts=["CHEST"]), ""),
    (facts("CT", parts=["ABDOMEN"], age=None), ""),
])
def test_default_subspecialty_rules(study, expected):
    assert study_subspecialty(study) == expected


def test_mammography_stays_with_breast_even_for_a_young_patient():
    assert study_subspecialty(facts("MG", age=17)) == "breast"


def test_protocol_rules_come_first():
    rules = {"subspecialty_rules": [{"modality": "CT", "body_part": "CHEST", "subspecialty": "chest"}]}
    assert study_subspecialty(facts("CT", parts=["CHEST"]), rules) == "chest"
    assert study_subspecialty(facts("CT", parts=["HEAD"]), rules) == "neuro"


def test_first_reads_go_to_annotators_by_default_and_to_radiologists_when_asked():
    assert first_read_route(facts("MG")) == Route(Tier.ANNOTATOR, "")
    route = first_read_route(facts("MG"), {"first_read_tier": "radiologist", "first_read_subspecialty": True})
    assert route.tier == Tier.RADIOLOGIST and route.subspecialty == "breast"


def test_adjudication_needs_a_radiologist_with_the_subspecialty():
    assert adjudication_route(facts("MR", parts=["BRAIN"])) == Route(Tier.RADIOLOGIST, "neuro")
    assert adjudication_route(facts("CT", parts=["CHEST"])) == Route(Tier.RADIOLOGIST, "")
    strict = adjudication_route(facts("MG"), {"adjudication_requires_subspecialist": True})
    assert strict == Route(Tier.SUBSPECIALIST, "breast")
    assert adjudication_route(facts("MG"), {"adjudication_subspecialty": False}).subspecialty == ""


def test_unknown_tier_in_rules_is_refused():
    with pytest.raises(ValueError, match="unknown tier"):
        first_read_route(facts("CT"), {"first_read_tier": "wizard"})
