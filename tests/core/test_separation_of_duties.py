"""Separation of duties: who grants the oversight roles, and which roles one person may combine on a project."""

import importlib
import logging
import threading

import pytest
from django.apps import apps
from django.core.management import call_command
from django.db import connections

from core.errors import DomainError
from core.memberships import grant_membership, may_grant, revoke_membership
from core.models import Membership
from core.roles import Perm, Role
from tests.conftest import PASSWORD
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db

report_migration = importlib.import_module("core.migrations.0005_report_reader_role_conflicts")


def _members_url(cast):
    return f"/api/projects/{cast.project.pk}/memberships/"


def _pseudonyms_url(cast):
    return f"/api/projects/{cast.project.pk}/pseudonyms/?kind=study&pseudonym=none"


@pytest.fixture
def plain_manager(cast):
    """A manager of the project who administers no organisation."""
    person = UserFactory(username="plain_manager", organization=cast.vendor)
    grant_membership(project=cast.project, user=person, role=Role.MANAGER, by=cast.superuser)
    return person


@pytest.fixture
def vendor_admin(cast):
    """An administrator of the vendor organisation who does not manage the project."""
    return UserFactory(username="vendor_admin", organization=cast.vendor, is_org_admin=True)


# --- who grants the privacy officer and auditor roles -------------------------------------

@pytest.mark.parametrize("role", [Role.PRIVACY_OFFICER, Role.AUDITOR])
def test_manager_cannot_grant_privacy_officer_or_auditor_to_anyone(cast, api, plain_manager, role):
    response = api(plain_manager).post(_members_url(cast), {"user": cast.qa.pk, "role": role}, format="json")
    assert response.status_code == 403
    assert response.json()["code"] == "grant_not_allowed"
    assert not cast.project.memberships.filter(user=cast.qa, role=role).exists()


def test_manager_cannot_grant_themselves_privacy_officer_and_read_the_pseudonym_map(cast, api):
    client = api(cast.manager)  # manages the project and administers the vendor organisation
    response = client.post(_members_url(cast), {"user": cast.manager.pk, "role": "privacy_officer"}, format="json")
    assert response.status_code == 403 and response.json()["code"] == "grant_not_allowed"
    assert client.get(_pseudonyms_url(cast)).status_code == 403


@pytest.mark.parametrize("role", [Role.PRIVACY_OFFICER, Role.AUDITOR])
def test_organisation_admin_who_manages_the_project_cannot_appoint_its_oversight(cast, api, role):
    response = api(cast.manager).post(_members_url(cast), {"user": cast.qa.pk, "role": role}, format="json")
    assert response.status_code == 403
    assert "managers" in response.json()["detail"]


def test_organisation_admin_grants_privacy_officer_and_the_grantee_reads_the_map(cast, api, vendor_admin):
    person = UserFactory(organization=cast.vendor)
    response = api(vendor_admin).post(_members_url(cast), {"user": person.pk, "role": "privacy_officer"},
                                      format="json")
    assert response.status_code == 201, response.content
    assert api(person).get(_pseudonyms_url(cast)).status_code == 404  # allowed in; no such pseudonym
    assert api(vendor_admin).get(_members_url(cast)).status_code == 200


@pytest.mark.parametrize("who", ["vendor_admin", "superuser"])
def test_nobody_grants_themselves_privacy_officer_or_auditor(cast, api, vendor_admin, who):
    person = vendor_admin if who == "vendor_admin" else cast.superuser
    for role in (Role.PRIVACY_OFFICER, Role.AUDITOR):
        response = api(person).post(_members_url(cast), {"user": person.pk, "role": role}, format="json")
        assert response.status_code == 403, role


def test_superuser_grants_auditor_to_someone_else(cast, api):
    person = UserFactory(organization=cast.client_org)
    response = api(cast.superuser).post(_members_url(cast), {"user": person.pk, "role": "auditor"}, format="json")
    assert response.status_code == 201


def test_manager_cannot_grant_themselves_any_role(cast, api, plain_manager):
    response = api(plain_manager).post(_members_url(cast), {"user": plain_manager.pk, "role": "qa"}, format="json")
    assert response.status_code == 403


def test_manager_cannot_reactivate_their_past_privacy_officer_role(cast, api, vendor_admin):
    membership = grant_membership(project=cast.project, user=cast.manager, role=Role.PRIVACY_OFFICER,
                                  by=vendor_admin)
    revoke_membership(membership, by=vendor_admin)
    response = api(cast.manager).patch(f"{_members_url(cast)}{membership.pk}/", {"is_active": True}, format="json")
    assert response.status_code == 403
    assert not Membership.objects.get(pk=membership.pk).is_active


def test_manager_cannot_dismiss_the_auditor(cast, api, plain_manager, vendor_admin):
    auditor = cast.project.memberships.get(user=cast.auditor)
    assert api(plain_manager).delete(f"{_members_url(cast)}{auditor.pk}/").status_code == 403
    assert api(vendor_admin).delete(f"{_members_url(cast)}{auditor.pk}/").status_code == 204


def test_admin_refuses_a_managers_privacy_officer_grant_with_the_reason(cast, client):
    client.login(username="manager", password=PASSWORD)
    response = client.post("/admin/core/membership/add/", {
        "user": cast.manager.pk, "project": cast.project.pk, "role": "privacy_officer", "subspecialties": "[]",
        "is_active": "on"})
    assert response.status_code == 200  # the form again, with the refusal
    assert b"Nobody grants themselves the privacy officer role." in response.content
    assert not cast.project.memberships.filter(user=cast.manager, role="privacy_officer").exists()


def test_admin_refuses_a_managers_dismissal_of_the_auditor(cast, client):
    client.login(username="manager", password=PASSWORD)
    auditor = cast.project.memberships.get(user=cast.auditor)
    response = client.post(f"/admin/core/membership/{auditor.pk}/change/", {"subspecialties": "[]",
                                                                           "is_active": ""})
    assert response.status_code == 200
    assert b"ends the auditor role" in response.content
    assert Membership.objects.get(pk=auditor.pk).is_active


def test_may_grant_is_the_one_rule(cast, plain_manager, vendor_admin):
    assert not may_grant(plain_manager, Role.PRIVACY_OFFICER, cast.qa, cast.project)
    assert not may_grant(cast.manager, Role.AUDITOR, cast.qa, cast.project)
    assert may_grant(vendor_admin, Role.AUDITOR, cast.qa, cast.project)
    assert may_grant(plain_manager, Role.ANNOTATOR, UserFactory(organization=cast.vendor), cast.project)
    assert not may_grant(cast.annotator, Role.ANNOTATOR, UserFactory(organization=cast.vendor), cast.project)


# --- readers hold no role that sees or oversees reads ------------------------------------

@pytest.mark.parametrize("role", [Role.QA, Role.MANAGER, Role.AUDITOR, Role.PRIVACY_OFFICER])
def test_reader_cannot_also_hold_a_role_that_sees_reads(cast, api, role):
    response = api(cast.superuser).post(_members_url(cast), {"user": cast.annotator.pk, "role": role},
                                        format="json")
    assert response.status_code == 400
    body = response.json()
    assert body["code"] == "role_conflict" and "reads on this project (annotator)" in body["detail"]
    assert not cast.annotator.has_perm(f"core.{Perm.VIEW_READS}", cast.project)


@pytest.mark.parametrize("holder", ["qa", "manager", "auditor", "privacy_officer"])
def test_qa_manager_or_oversight_cannot_also_read(cast, api, holder):
    person = cast.user(holder)
    response = api(cast.superuser).post(_members_url(cast), {"user": person.pk, "role": "radiologist",
                                                             "subspecialties": ["chest"]}, format="json")
    assert response.status_code == 400
    assert response.json()["code"] == "role_conflict"


def test_client_viewer_cannot_read(cast, api):
    response = api(cast.superuser).post(_members_url(cast), {"user": cast.client_viewer.pk, "role": "annotator"},
                                        format="json")
    assert response.status_code == 400


def test_reactivating_a_reader_role_beside_qa_is_refused(cast, api):
    person = UserFactory(organization=cast.vendor)
    reading = grant_membership(project=cast.project, user=person, role=Role.ANNOTATOR, by=cast.manager)
    revoke_membership(reading, by=cast.manager)
    grant_membership(project=cast.project, user=person, role=Role.QA, by=cast.manager)
    response = api(cast.manager).patch(f"{_members_url(cast)}{reading.pk}/", {"is_active": True}, format="json")
    assert response.status_code == 400 and response.json()["code"] == "role_conflict"


def test_an_ended_role_does_not_conflict(cast, api):
    person = UserFactory(organization=cast.vendor)
    qa = grant_membership(project=cast.project, user=person, role=Role.QA, by=cast.manager)
    revoke_membership(qa, by=cast.manager)
    response = api(cast.manager).post(_members_url(cast), {"user": person.pk, "role": "annotator"}, format="json")
    assert response.status_code == 201


def test_reading_on_one_project_and_qa_on_another_is_allowed(cast, api):
    from tests.factories import ProjectFactory

    other = ProjectFactory(name="Head CT", client=cast.client_org, vendor=cast.vendor)
    response = api(cast.manager).post(f"/api/projects/{other.pk}/memberships/",
                                      {"user": cast.annotator.pk, "role": "qa"}, format="json")
    assert response.status_code == 201


@pytest.mark.django_db(transaction=True)
def test_concurrent_reader_and_qa_grants_let_only_one_through(cast):
    person = UserFactory(organization=cast.vendor)
    barrier = threading.Barrier(2)
    outcomes = []

    def grant(role):
        try:
            barrier.wait()
            grant_membership(project=cast.project, user=person, role=role, by=cast.manager)
            outcomes.append("granted")
        except DomainError as exc:
            outcomes.append(exc.code)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=grant, args=(role,)) for role in (Role.ANNOTATOR, Role.QA)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes) == ["granted", "role_conflict"]
    assert Membership.objects.filter(user=person, project=cast.project, is_active=True).count() == 1


def test_migration_reports_conflicts_it_finds_and_changes_nothing(cast, caplog):
    # Made before the rule existed: written past core.memberships, as old data was.
    made = Membership.objects.create(user=cast.annotator, project=cast.project, role=Role.QA)
    with caplog.at_level(logging.WARNING, logger="radqueue.migrations"):
        report_migration.report(apps, None)
    out = caplog.text
    assert "Reader role conflicts: 1." in out
    assert f"project {cast.project.pk}: user {cast.annotator.pk} ({cast.annotator.pseudonym})" in out
    assert f"qa (membership {made.pk})" in out and "annotator (membership" in out
    assert "annotator@" not in out  # pseudonyms and ids only
    assert Membership.objects.get(pk=made.pk).is_active


def test_the_cast_breaks_no_rule(cast):
    assert report_migration.reader_role_conflicts(apps) == []


def test_the_demo_seed_breaks_no_rule(settings):
    settings.DEBUG = True
    call_command("seed_demo")
    assert Membership.objects.exists()
    assert report_migration.reader_role_conflicts(apps) == []
