"""Managers set the queue's, quality checks' and de-identification settings through the API."""

from datetime import timedelta

import pytest
from django.utils import timezone

from audit.models import AuditEvent
from core.memberships import grant_membership
from core.models import Project
from tests.factories import UserFactory
from tests.tasks.conftest import add_ct_studies

pytestmark = pytest.mark.django_db


def _url(project):
    return f"/api/projects/{project.pk}/settings/"


@pytest.fixture
def plain_manager(cast):
    person = UserFactory(username="plain_manager", organization=cast.vendor)
    grant_membership(project=cast.project, user=person, role="manager", by=cast.superuser)
    return person


def test_manager_reads_the_settings(cast, api):
    body = api(cast.manager).get(_url(cast.project)).json()
    assert body["lease_seconds"] == 1800 and body["max_open_reads"] == 3 and body["gold_rate"] == 0.0
    assert body["keep_pseudonym_map"] is False and body["is_deid_frozen"] is False


def test_manager_sets_queue_and_quality_settings_and_the_change_is_audited(cast, api, plain_manager):
    changes = {"gold_rate": 0.1, "lease_seconds": 600, "max_open_reads": 5, "gold_threshold": 0.7,
               "calibration_threshold": 0.9, "gold_window": 20, "requires_calibration": True}
    response = api(plain_manager).patch(_url(cast.project), changes, format="json")
    assert response.status_code == 200, response.content
    assert {k: response.json()[k] for k in changes} == changes
    project = Project.objects.get(pk=cast.project.pk)
    assert (project.gold_rate, project.lease_seconds, project.max_open_reads) == (0.1, 600, 5)
    event = AuditEvent.objects.filter(action="update", object_type="core.project", actor_id=plain_manager.pk).get()
    assert event.extra["settings"]["lease_seconds"] == {"from": 1800, "to": 600}
    assert event.extra["settings"]["gold_rate"] == {"from": 0.0, "to": 0.1}


def test_a_new_lease_applies_to_the_next_claim(cast, api):
    add_ct_studies(cast.project, 1)
    from tasks.creation import create_tasks

    create_tasks(cast.project, by=cast.manager)
    assert api(cast.manager).patch(_url(cast.project), {"lease_seconds": 120}, format="json").status_code == 200
    before = timezone.now()
    claimed = api(cast.annotator).post("/api/queue/next/", {}, format="json")
    assert claimed.status_code == 200
    from tasks.models import Read

    read = Read.objects.get(reader=cast.annotator, project=cast.project)
    assert before + timedelta(seconds=100) < read.lease_expires_at < before + timedelta(seconds=140)


@pytest.mark.parametrize("body,field", [
    ({"gold_rate": 1.5}, "gold_rate"),
    ({"gold_rate": -0.1}, "gold_rate"),
    ({"lease_seconds": 5}, "lease_seconds"),
    ({"max_open_reads": 0}, "max_open_reads"),
    ({"gold_threshold": 2}, "gold_threshold"),
    ({"calibration_threshold": "high"}, "calibration_threshold"),
    ({"deid_private_creator_allowlist": [""]}, "deid_private_creator_allowlist"),
    ({"deid_clean_descriptors": "maybe"}, "deid_clean_descriptors"),
])
def test_out_of_range_settings_are_400_naming_the_field(cast, api, body, field):
    response = api(cast.manager).patch(_url(cast.project), body, format="json")
    assert response.status_code == 400
    assert field in response.json()["errors"]


def test_deid_options_change_until_a_study_is_ingested_then_are_frozen(cast, api):
    client = api(cast.manager)
    ok = client.patch(_url(cast.project), {"deid_clean_descriptors": True,
                                           "deid_private_creator_allowlist": ["SIEMENS CSA HEADER"]}, format="json")
    assert ok.status_code == 200
    add_ct_studies(cast.project, 1)
    assert client.get(_url(cast.project)).json()["is_deid_frozen"] is True
    frozen = client.patch(_url(cast.project), {"deid_retain_modified_dates": True}, format="json")
    assert frozen.status_code == 400
    assert frozen.json()["code"] == "deid_frozen" and "deid_retain_modified_dates" in frozen.json()["errors"]
    assert not Project.objects.get(pk=cast.project.pk).deid_retain_modified_dates
    # Sending back the values in force is no change; queue settings still change.
    same = client.patch(_url(cast.project), {"deid_clean_descriptors": True, "max_open_reads": 4}, format="json")
    assert same.status_code == 200 and same.json()["max_open_reads"] == 4


def test_manager_cannot_decide_to_keep_the_pseudonym_map(cast, api, plain_manager):
    response = api(plain_manager).patch(_url(cast.project), {"keep_pseudonym_map": True}, format="json")
    assert response.status_code == 403
    assert response.json()["code"] == "org_admin_only"
    assert not Project.objects.get(pk=cast.project.pk).keep_pseudonym_map


@pytest.mark.parametrize("who", ["manager", "superuser", "vendor_admin"])
def test_organisation_administrators_decide_to_keep_the_pseudonym_map(cast, api, who):
    person = (UserFactory(organization=cast.vendor, is_org_admin=True) if who == "vendor_admin"
              else cast.user(who))
    response = api(person).patch(_url(cast.project), {"keep_pseudonym_map": True}, format="json")
    assert response.status_code == 200
    assert Project.objects.get(pk=cast.project.pk).keep_pseudonym_map


def test_administrator_of_another_vendor_cannot_reach_the_settings(cast, api):
    response = api(cast.foreign_manager).patch(_url(cast.project), {"keep_pseudonym_map": True}, format="json")
    assert response.status_code == 404


@pytest.mark.parametrize("who", ["qa", "annotator", "client_viewer", "privacy_officer"])
def test_other_roles_cannot_change_settings(cast, api, who):
    response = api(cast.user(who)).patch(_url(cast.project), {"gold_rate": 0.5}, format="json")
    assert response.status_code == 403
    assert Project.objects.get(pk=cast.project.pk).gold_rate == 0.0
