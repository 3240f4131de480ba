import pytest
from django.core.management import call_command

from core.models import Membership, Project, User
from core.roles import Role
from tests.conftest import PASSWORD

pytestmark = pytest.mark.django_db


def test_manager_sees_only_their_projects_in_the_admin(cast, client):
    client.login(username="manager", password=PASSWORD)
    listing = client.get("/admin/core/project/")
    assert listing.status_code == 200
    assert b"Chest CT" in listing.content and b"Elsewhere" not in listing.content
    assert client.get(f"/admin/core/project/{cast.foreign_project.pk}/change/").status_code in (302, 404)


def test_admin_membership_change_goes_through_the_service(cast, client):
    client.login(username="manager", password=PASSWORD)
    membership = cast.project.memberships.get(user=cast.annotator)
    response = client.post(f"/admin/core/membership/{membership.pk}/change/",
                           {"subspecialties": "[]", "is_active": ""})
    assert response.status_code == 302
    annotator = User.objects.get(pk=cast.annotator.pk)
    assert not annotator.has_perm("core.read_studies", cast.project)


def test_reader_without_staff_cannot_use_the_admin(cast, client):
    client.login(username="annotator", password=PASSWORD)
    assert client.get("/admin/core/project/").status_code == 302


def test_seed_demo_creates_every_role_and_is_idempotent(settings):
    settings.DEBUG = True
    call_command("seed_demo")
    call_command("seed_demo")
    project = Project.objects.get()
    roles = set(Membership.objects.filter(project=project).values_list("role", flat=True))
    assert roles == set(Role.values)
    assert project.protocol_versions.count() == 1
    assert project.studies.count() == 3  # two chest CTs and a brain MR, de-identified and indexed
    assert project.tasks.filter(state="queued").count() == 3


def test_seed_demo_prints_the_address_the_server_will_answer_on(settings):
    import io

    settings.DEBUG = True
    out = io.StringIO()
    call_command("seed_demo", url="http://127.0.0.1:8123", stdout=out)
    assert "curl -s -X POST http://127.0.0.1:8123/api/auth/token/" in out.getvalue()
    assert ":8000" not in out.getvalue()


def test_seed_demo_refuses_in_production(settings):
    from django.core.management.base import CommandError

    settings.DEBUG = False
    with pytest.raises(CommandError):
        call_command("seed_demo")
