"""The fixed cast (healthchecks-style) and API clients that authenticate with real API tokens."""

from dataclasses import dataclass

import pytest
from django.db import connection
from knox.models import AuthToken
from rest_framework.test import APIClient

from core.memberships import grant_membership
from core.models import Organization, Project
from core.protocols import create_protocol_version
from core.roles import Role
from tests.factories import OrganizationFactory, ProjectFactory, UserFactory

PASSWORD = "correct-horse-battery"


@pytest.fixture(scope="session")
def django_db_setup(django_db_setup, django_db_blocker):
    # The audit table refuses TRUNCATE (migration audit 0002); the throw-away test database
    # lets the test runner flush it between transactional tests. Tests of the trigger turn it
    # off again on their own connection.
    with django_db_blocker.unblock():
        name = connection.settings_dict["NAME"]
        with connection.cursor() as cursor:
            cursor.execute(f'ALTER DATABASE "{name}" SET radqueue.audit_allow_truncate = \'on\'')
        connection.close()


@pytest.fixture(autouse=True)
def _private_data_dir(settings, tmp_path):
    """Each test stores its encrypted objects in its own folder, as its rows live in its own transaction."""
    settings.DATA_DIR = tmp_path / "data"
    from core.dicom.storage import reset_store

    reset_store()
    yield
    reset_store()


@pytest.fixture(autouse=True)
def _clear_cache():
    from django.core.cache import cache

    cache.clear()
    yield


@dataclass
class Cast:
    vendor: Organization
    client_org: Organization
    other_client: Organization
    other_vendor: Organization
    project: Project
    foreign_project: Project
    superuser: object
    manager: object
    annotator: object
    second_annotator: object
    radiologist: object
    neuro_subspecialist: object
    breast_subspecialist: object
    qa: object
    client_viewer: object
    auditor: object
    privacy_officer: object
    outsider: object
    foreign_manager: object

    def user(self, role: str):
        return None if role == "anonymous" else getattr(self, role)


@pytest.fixture
def cast(db) -> Cast:
    vendor = OrganizationFactory(name="Vendor", kind="vendor")
    client_org = OrganizationFactory(name="Client", kind="client")
    other_client = OrganizationFactory(name="Other client", kind="client")
    other_vendor = OrganizationFactory(name="Other vendor", kind="vendor")
    superuser = UserFactory(username="root", is_superuser=True, is_staff=True, organization=vendor)
    manager = UserFactory(username="manager", organization=vendor, is_org_admin=True, is_staff=True)
    project = ProjectFactory(name="Chest CT", client=client_org, vendor=vendor, modalities=["CT", "MR", "MG"])
    foreign_project = ProjectFactory(name="Elsewhere", client=other_client, vendor=other_vendor)
    create_protocol_version(project=project, name="v1", template="generic_findings", by=manager)
    create_protocol_version(project=foreign_project, name="v1", template="generic_findings")
    people = {}
    for username, role, subs, org in [
        ("manager", Role.MANAGER, [], vendor),
        ("annotator", Role.ANNOTATOR, [], vendor),
        ("second_annotator", Role.ANNOTATOR, [], vendor),
        ("radiologist", Role.RADIOLOGIST, ["chest"], vendor),
        ("neuro_subspecialist", Role.SUBSPECIALIST, ["neuro"], vendor),
        ("breast_subspecialist", Role.SUBSPECIALIST, ["breast"], vendor),
        ("qa", Role.QA, [], vendor),
        ("client_viewer", Role.CLIENT, [], client_org),
        ("auditor", Role.AUDITOR, [], vendor),
        ("privacy_officer", Role.PRIVACY_OFFICER, [], vendor),
    ]:
        user = manager if username == "manager" else UserFactory(username=username, organization=org)
        grant_membership(project=project, user=user, role=role, subspecialties=subs, by=superuser)
        people[username] = user
    outsider = UserFactory(username="outsider", organization=other_vendor)
    foreign_manager = UserFactory(username="foreign_manager", organization=other_vendor, is_org_admin=True)
    grant_membership(project=foreign_project, user=foreign_manager, role=Role.MANAGER, by=superuser)
    return Cast(vendor=vendor, client_org=client_org, other_client=other_client, other_vendor=other_vendor,
                project=project, foreign_project=foreign_project, superuser=superuser, outsider=outsider,
                foreign_manager=foreign_manager, **people)


def token_client(user) -> APIClient:
    client = APIClient()
    if user is not None:
        _, token = AuthToken.objects.create(user)
        client.credentials(HTTP_AUTHORIZATION=f"Token {token}")
    return client


@pytest.fixture
def api():
    return token_client


@pytest.fixture
def sent(monkeypatch):
    """The live-feed messages sent, as (group, event, data), once their transaction commits."""
    messages = []
    monkeypatch.setattr("core.broadcast._send", lambda group, message: messages.append(
        (group, message.get("event"), message.get("data"))))
    return messages
