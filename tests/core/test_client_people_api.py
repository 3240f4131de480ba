"""Whom a manager may add to a project, and how a vendor's administrators onboard a client's people."""

import pytest

from audit.models import AuditEvent
from core.models import User
from tests.conftest import PASSWORD
from tests.factories import OrganizationFactory, ProjectFactory, UserFactory

pytestmark = pytest.mark.django_db

NEW_PASSWORD = "a-long-enough-password-77"


def _members_url(cast):
    return f"/api/projects/{cast.project.pk}/memberships/"


def _people_url(org):
    return f"/api/organizations/{org.pk}/people/"


# --- managers add people of the project's organisations only -------------------------------

def test_manager_cannot_add_a_person_of_another_organisation(cast, api):
    response = api(cast.manager).post(_members_url(cast), {"user": cast.outsider.pk, "role": "annotator"},
                                      format="json")
    assert response.status_code == 400
    assert response.json()["code"] == "unknown_user"
    assert b"outsider" not in response.content
    assert not cast.project.memberships.filter(user=cast.outsider).exists()


def test_unknown_foreign_and_inactive_ids_get_the_same_answer(cast, api):
    client = api(cast.manager)
    inactive = UserFactory(organization=cast.vendor, is_active=False)
    missing = User.objects.order_by("-pk").first().pk + 1000
    answers = [client.post(_members_url(cast), {"user": pk, "role": "annotator"}, format="json")
               for pk in (cast.outsider.pk, missing, inactive.pk, cast.foreign_manager.pk)]
    assert {a.status_code for a in answers} == {400}
    assert len({a.content for a in answers}) == 1


def test_manager_adds_people_of_the_vendor_and_of_the_client(cast, api):
    client = api(cast.manager)
    reader = UserFactory(organization=cast.vendor)
    viewer = UserFactory(organization=cast.client_org)
    assert client.post(_members_url(cast), {"user": reader.pk, "role": "annotator"}, format="json").status_code == 201
    assert client.post(_members_url(cast), {"user": viewer.pk, "role": "client"}, format="json").status_code == 201


def test_admin_lists_only_people_of_the_managed_projects_organisations(cast, client):
    client.login(username="manager", password=PASSWORD)
    form = client.get("/admin/core/membership/add/")
    assert form.status_code == 200
    assert b">annotator<" in form.content and b">client_viewer<" in form.content
    assert b"outsider" not in form.content and b"foreign_manager" not in form.content


# --- a vendor's administrators create the people of the clients it serves ------------------

def test_vendor_admin_creates_a_client_viewer_who_is_then_onboarded(cast, api):
    admin = api(cast.manager)  # administers the vendor that runs the client's project
    response = admin.post(_people_url(cast.client_org), {"username": "client_two", "email": "two@client.invalid",
                                                         "password": NEW_PASSWORD}, format="json")
    assert response.status_code == 201, response.content
    assert NEW_PASSWORD.encode() not in response.content and "password" not in response.json()
    person = User.objects.get(username="client_two")
    assert person.organization == cast.client_org and not person.is_org_admin
    event = AuditEvent.objects.filter(action="create", object_type="core.user", object_id=str(person.pk)).get()
    assert event.actor_id == cast.manager.pk and event.extra["organization"] == cast.client_org.pk
    granted = admin.post(_members_url(cast), {"user": person.pk, "role": "client"}, format="json")
    assert granted.status_code == 201
    token = api(None).post("/api/auth/token/", {"username": "client_two", "password": NEW_PASSWORD}, format="json")
    assert token.status_code == 200
    viewer = api(person)
    assert viewer.get(f"/api/projects/{cast.project.pk}/progress/").status_code == 200


def test_vendor_admin_creates_people_of_their_own_organisation_too(cast, api):
    response = api(cast.manager).post(_people_url(cast.vendor), {"username": "reader_two", "password": NEW_PASSWORD},
                                      format="json")
    assert response.status_code == 201
    assert User.objects.get(username="reader_two").organization == cast.vendor


def test_vendor_admin_cannot_create_people_of_a_client_it_does_not_serve(cast, api):
    response = api(cast.manager).post(_people_url(cast.other_client), {"username": "x_person",
                                                                       "password": NEW_PASSWORD}, format="json")
    assert response.status_code == 404
    assert not User.objects.filter(username="x_person").exists()


def test_vendor_admin_serving_a_client_without_membership_sees_it(cast, api):
    """The served clients are the vendor's projects' clients, whether or not the admin is a member."""
    admin = UserFactory(organization=cast.vendor, is_org_admin=True)
    client_org = OrganizationFactory(name="Third client", kind="client")
    ProjectFactory(name="Spine MR", client=client_org, vendor=cast.vendor)
    response = api(admin).post(_people_url(client_org), {"username": "third_viewer", "password": NEW_PASSWORD},
                               format="json")
    assert response.status_code == 201


def test_vendor_admin_cannot_make_a_client_administrator(cast, api):
    response = api(cast.manager).post(_people_url(cast.client_org), {
        "username": "client_boss", "password": NEW_PASSWORD, "is_org_admin": True}, format="json")
    assert response.status_code == 403
    assert not User.objects.filter(username="client_boss").exists()


@pytest.mark.parametrize("who", ["qa", "client_viewer", "annotator"])
def test_people_who_administer_nothing_cannot_create_people(cast, api, who):
    response = api(cast.user(who)).post(_people_url(cast.client_org), {"username": "sneaky",
                                                                       "password": NEW_PASSWORD}, format="json")
    assert response.status_code == 403


def test_a_manager_who_administers_no_organisation_cannot_create_people(cast, api):
    from core.memberships import grant_membership

    manager = UserFactory(organization=cast.vendor)
    grant_membership(project=cast.project, user=manager, role="manager", by=cast.superuser)
    response = api(manager).post(_people_url(cast.client_org), {"username": "sneaky", "password": NEW_PASSWORD},
                                 format="json")
    assert response.status_code == 403


def test_weak_password_and_taken_username_are_400(cast, api):
    client = api(cast.manager)
    weak = client.post(_people_url(cast.client_org), {"username": "weakling", "password": "1234567890"},
                       format="json")
    assert weak.status_code == 400 and "password" in weak.json()["errors"]
    assert b"1234567890" not in weak.content
    taken = client.post(_people_url(cast.client_org), {"username": "annotator", "password": NEW_PASSWORD},
                        format="json")
    assert taken.status_code == 400 and taken.json()["code"] == "username_taken"
