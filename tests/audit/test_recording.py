"""What leaves an audit event: accesses, refusals, failures, logins, tokens and permission changes."""

import json

import pytest
from django.test import override_settings
from knox.models import AuthToken
from rest_framework.test import APIClient

from audit.models import AuditEvent
from audit.trail import verify_chains
from core.roles import Role
from tests.conftest import PASSWORD
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db


def _last(**filters) -> AuditEvent:
    return AuditEvent.objects.filter(**filters).latest("id")


def test_foreign_project_view_is_recorded_as_denied_404(cast, api):
    response = api(cast.outsider).get(f"/api/projects/{cast.foreign_project.pk}/")
    assert response.status_code == 404
    event = _last(action="view")
    assert event.outcome == "denied"
    assert event.actor_id == cast.outsider.pk
    assert (event.object_type, event.object_id) == ("core.project", str(cast.foreign_project.pk))
    assert event.project_id == cast.foreign_project.pk
    assert event.reason.startswith("404")
    assert event.extra == {"method": "GET", "path": f"/api/projects/{cast.foreign_project.pk}/", "status": 404}
    assert event.request_id == response["X-Request-ID"]


def test_anonymous_request_is_recorded_as_denied_401(cast, api):
    response = api(None).get("/api/projects/")
    assert response.status_code == 401
    event = _last(action="list")
    assert (event.outcome, event.actor_id, event.actor_roles) == ("denied", None, "")
    assert event.reason.startswith("401")


def test_list_and_view_are_recorded_with_the_echoed_request_id(cast, api):
    client = api(cast.annotator)
    response = client.get("/api/projects/", HTTP_X_REQUEST_ID="req-abc.123")
    assert response.status_code == 200 and response["X-Request-ID"] == "req-abc.123"
    listed = _last(action="list")
    assert (listed.outcome, listed.actor_id, listed.request_id) == ("allowed", cast.annotator.pk, "req-abc.123")
    assert listed.object_type == "core.project"

    response = client.get(f"/api/projects/{cast.project.pk}/", HTTP_USER_AGENT="pytest-agent/1")
    generated = response["X-Request-ID"]
    assert len(generated) == 32 and generated != "req-abc.123"
    viewed = _last(action="view")
    assert (viewed.request_id, viewed.object_id, viewed.project_id) == (generated, str(cast.project.pk),
                                                                        cast.project.pk)
    assert (viewed.actor_roles, viewed.actor_tier, viewed.user_agent) == ("annotator", 1, "pytest-agent/1")


def test_malformed_request_id_is_replaced(cast, api):
    response = api(cast.annotator).get("/api/projects/", HTTP_X_REQUEST_ID="bad id; drop table")
    assert response["X-Request-ID"] != "bad id; drop table"
    assert _last(action="list").request_id == response["X-Request-ID"]


def test_client_ip_is_remote_addr_unless_a_trusted_proxy_header_is_configured(cast, api):
    client = api(cast.annotator)
    # The proxy at 10.0.0.1 appended the address it saw the client connect from.
    headers = {"HTTP_X_FORWARDED_FOR": "203.0.113.7", "REMOTE_ADDR": "10.0.0.1"}
    client.get("/api/projects/", **headers)
    assert _last(action="list").client_ip == "10.0.0.1"
    with override_settings(TRUSTED_PROXY_IP_HEADER="HTTP_X_FORWARDED_FOR"):
        client.get("/api/projects/", **headers)
        assert _last(action="list").client_ip == "203.0.113.7"
        client.get("/api/projects/", HTTP_X_FORWARDED_FOR="not-an-ip", REMOTE_ADDR="10.0.0.2")
        assert _last(action="list").client_ip == "10.0.0.2"


def test_failed_validation_leaves_an_error_event_and_no_allowed_one(cast, api):
    before = set(AuditEvent.objects.values_list("id", flat=True))
    response = api(cast.manager).post(f"/api/projects/{cast.project.pk}/memberships/",
                                      {"user": cast.outsider.pk, "role": "not-a-role"}, format="json")
    assert response.status_code == 400
    new = list(AuditEvent.objects.exclude(id__in=before))
    assert [(e.action, e.outcome) for e in new] == [("create", "error")]
    assert new[0].reason.startswith("400 invalid") and new[0].extra["method"] == "POST"
    assert new[0].project_id == cast.project.pk and new[0].actor_id == cast.manager.pk
    assert verify_chains().ok


def test_forbidden_write_is_recorded_as_denied(cast, api):
    response = api(cast.annotator).patch(f"/api/projects/{cast.project.pk}/", {"description": "x"}, format="json")
    assert response.status_code == 403
    event = _last(action="update")
    assert (event.outcome, event.actor_id) == ("denied", cast.annotator.pk)
    assert event.reason.startswith("403 permission_denied")


def test_successful_write_is_recorded_once_by_its_service(cast, api):
    before = set(AuditEvent.objects.values_list("id", flat=True))
    response = api(cast.manager).patch(f"/api/projects/{cast.project.pk}/", {"description": "new"}, format="json")
    assert response.status_code == 200
    new = list(AuditEvent.objects.exclude(id__in=before))
    assert [(e.action, e.outcome, e.actor_id) for e in new] == [("update", "allowed", cast.manager.pk)]
    assert new[0].extra == {"fields": ["description"]}


def test_login_token_creation_and_revocation_are_recorded(cast):
    client = APIClient()
    response = client.post("/api/auth/token/", {"username": "annotator", "password": PASSWORD}, format="json")
    assert response.status_code == 200
    login = _last(action="login")
    created = _last(action="token_created")
    key = AuthToken.objects.get(user=cast.annotator).token_key
    assert (login.actor_id, login.outcome, login.extra) == (cast.annotator.pk, "allowed", {"channel": "api"})
    assert (created.actor_id, created.object_type, created.object_id) == (cast.annotator.pk, "knox.authtoken", key)

    client.credentials(HTTP_AUTHORIZATION=f"Token {response.json()['token']}")
    assert client.post("/api/auth/token/revoke/").status_code == 204
    revoked = _last(action="token_revoked")
    assert (revoked.actor_id, revoked.object_id) == (cast.annotator.pk, key)


def test_wrong_password_is_recorded_as_login_failed(cast):
    response = APIClient().post("/api/auth/token/", {"username": "annotator", "password": "not-the-password"},
                                format="json", REMOTE_ADDR="10.1.2.3")
    assert response.status_code == 400
    failed = _last(action="login_failed")
    assert (failed.outcome, failed.actor_id, failed.client_ip) == ("denied", None, "10.1.2.3")
    assert not AuditEvent.objects.filter(action="login").exists()


def test_revoke_all_is_recorded_with_the_count(cast, api):
    client = api(cast.annotator)
    AuthToken.objects.create(cast.annotator)
    assert client.post("/api/auth/token/revoke-all/").status_code == 204
    event = _last(action="token_revoked")
    assert (event.object_id, event.extra) == ("*", {"count": 2})


def test_membership_grant_and_revoke_record_permission_changes(cast, api):
    client = api(cast.manager)
    person = UserFactory(organization=cast.vendor)  # readers may not also be QA
    response = client.post(f"/api/projects/{cast.project.pk}/memberships/",
                           {"user": person.pk, "role": Role.QA}, format="json")
    assert response.status_code == 201
    granted = _last(action="permission_granted")
    assert (granted.actor_id, granted.project_id, granted.object_id) == (cast.manager.pk, cast.project.pk,
                                                                         str(response.json()["id"]))
    assert granted.extra == {"user": person.pseudonym, "role": "qa",
                             "permissions": ["view_progress", "view_project", "view_reads"]}
    assert client.delete(f"/api/projects/{cast.project.pk}/memberships/{response.json()['id']}/").status_code == 204
    revoked = _last(action="permission_revoked")
    assert revoked.extra["permissions"] == ["view_progress", "view_project", "view_reads"]
    assert verify_chains().ok


def test_no_event_holds_a_password_or_identifying_details(cast, api):
    client = APIClient()
    client.post("/api/auth/token/", {"username": "annotator", "password": "not-the-password"}, format="json")
    client.post("/api/auth/token/", {"username": "annotator", "password": PASSWORD}, format="json")
    created = api(cast.manager).post("/api/users/", {"username": "newbie", "password": "a-long-enough-password-77",
                                                     "email": "newbie@example.invalid", "first_name": "Jane"},
                                     format="json")
    assert created.status_code == 201
    api(cast.manager).get(f"/api/projects/{cast.project.pk}/memberships/")
    recorded = set(AuditEvent.objects.values_list("action", flat=True))
    assert {"login", "login_failed", "token_created", "create", "permission_granted", "list"} <= recorded
    for event in AuditEvent.objects.all():
        text = json.dumps(event.extra) + event.reason + event.object_id
        for secret in ("not-the-password", PASSWORD, "a-long-enough-password-77", "example.invalid", "Jane"):
            assert secret not in text, (event.action, text)
