import pytest
from django.db import transaction

from core.errors import DomainError
from core.memberships import grant_membership, revoke_membership
from core.roles import Perm, Role
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db


def test_granting_a_role_gives_its_permissions_and_revoking_withdraws_them(cast):
    reader = UserFactory(organization=cast.vendor)
    membership = grant_membership(project=cast.project, user=reader, role="annotator", by=cast.manager)
    assert reader.has_perm(f"core.{Perm.READ}", cast.project)
    assert not reader.has_perm(f"core.{Perm.MANAGE}", cast.project)
    revoke_membership(membership, by=cast.manager)
    reader = type(reader).objects.get(pk=reader.pk)
    assert not reader.has_perm(f"core.{Perm.READ}", cast.project)
    assert not reader.has_perm(f"core.{Perm.VIEW}", cast.project)


def test_permissions_are_the_union_of_active_roles(cast):
    person = UserFactory(organization=cast.vendor)
    grant_membership(project=cast.project, user=person, role="annotator", by=cast.manager)
    radiologist = grant_membership(project=cast.project, user=person, role="radiologist", by=cast.manager)
    assert person.has_perm(f"core.{Perm.ADJUDICATE}", cast.project)
    revoke_membership(radiologist, by=cast.manager)
    person = type(person).objects.get(pk=person.pk)
    assert person.has_perm(f"core.{Perm.READ}", cast.project)
    assert not person.has_perm(f"core.{Perm.ADJUDICATE}", cast.project)


def test_a_rolled_back_grant_leaves_no_permission(cast):
    person = UserFactory(organization=cast.vendor)
    with pytest.raises(RuntimeError), transaction.atomic():
        grant_membership(project=cast.project, user=person, role="manager", by=cast.manager)
        raise RuntimeError("later step failed")
    person = type(person).objects.get(pk=person.pk)
    assert not person.has_perm(f"core.{Perm.MANAGE}", cast.project)
    assert not cast.project.memberships.filter(user=person).exists()


def test_client_role_only_for_the_projects_client_organisation(cast):
    with pytest.raises(DomainError):
        grant_membership(project=cast.project, user=cast.outsider, role="client", by=cast.manager)
    with pytest.raises(DomainError):
        grant_membership(project=cast.project, user=cast.client_viewer, role="annotator", by=cast.manager)


def test_subspecialist_needs_a_known_subspecialty(cast, api):
    person = UserFactory(organization=cast.vendor)
    url = f"/api/projects/{cast.project.pk}/memberships/"
    client = api(cast.manager)
    assert client.post(url, {"user": person.pk, "role": "subspecialist"}, format="json").status_code == 400
    bad = client.post(url, {"user": person.pk, "role": "subspecialist", "subspecialties": ["dental"]}, format="json")
    assert bad.status_code == 400 and "subspecialties" in bad.json()["errors"]
    ok = client.post(url, {"user": person.pk, "role": "subspecialist", "subspecialties": ["breast"]}, format="json")
    assert ok.status_code == 201 and ok.json()["tier"] == "Sub-specialist"


def test_readers_see_only_their_own_membership_and_clients_see_no_reader_identities(cast, api):
    url = f"/api/projects/{cast.project.pk}/memberships/"
    mine = api(cast.annotator).get(url).json()["results"]
    assert [m["username"] for m in mine] == ["annotator"]
    theirs = api(cast.client_viewer).get(url).json()["results"]
    assert [m["username"] for m in theirs] == ["client_viewer"]
    assert len(api(cast.manager).get(url).json()["results"]) == 10


def test_deactivated_member_loses_access_at_once(cast, api):
    client = api(cast.radiologist)
    assert client.get(f"/api/projects/{cast.project.pk}/").status_code == 200
    membership = cast.project.memberships.get(user=cast.radiologist)
    response = api(cast.manager).delete(f"/api/projects/{cast.project.pk}/memberships/{membership.pk}/")
    assert response.status_code == 204
    assert client.get(f"/api/projects/{cast.project.pk}/").status_code == 404


def test_the_last_manager_cannot_end_their_own_membership_and_lock_the_project_out(cast, api):
    project = cast.project
    mine = project.memberships.get(user=cast.manager, role=Role.MANAGER)
    client = api(cast.manager)
    answer = client.delete(f"/api/projects/{project.pk}/memberships/{mine.pk}/")
    assert answer.status_code == 409 and answer.json()["code"] == "last_manager", answer.content
    mine.refresh_from_db()
    assert mine.is_active
    assert client.patch(f"/api/projects/{project.pk}/memberships/{mine.pk}/", {"is_active": False},
                        format="json").status_code == 409
    # With a second manager appointed, stepping down is allowed; the other one is then the last.
    other = UserFactory(username="deputy", organization=project.vendor)
    theirs = grant_membership(project=project, user=other, role=Role.MANAGER, by=cast.superuser)
    assert client.delete(f"/api/projects/{project.pk}/memberships/{mine.pk}/").status_code == 204
    assert api(other).delete(f"/api/projects/{project.pk}/memberships/{theirs.pk}/").json()["code"] == "last_manager"


def test_a_superuser_may_end_the_last_manager_when_retiring_a_project(cast, api):
    mine = cast.project.memberships.get(user=cast.manager, role=Role.MANAGER)
    answer = api(cast.superuser).delete(f"/api/projects/{cast.project.pk}/memberships/{mine.pk}/")
    assert answer.status_code == 204
