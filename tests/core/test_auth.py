from datetime import timedelta

import pytest
from django.test import override_settings
from django.utils import timezone
from knox.models import AuthToken
from rest_framework.test import APIClient

from tests.conftest import PASSWORD

pytestmark = pytest.mark.django_db


def _login(client, username, password):
    return client.post("/api/auth/token/", {"username": username, "password": password}, format="json")


def test_token_obtained_with_password_authenticates_and_is_stored_hashed(cast):
    client = APIClient()
    response = _login(client, "annotator", PASSWORD)
    assert response.status_code == 200
    token = response.json()["token"]
    stored = AuthToken.objects.get(user=cast.annotator)
    assert token not in (stored.digest, stored.token_key) and len(stored.digest) == 128
    client.credentials(HTTP_AUTHORIZATION=f"Token {token}")
    assert client.get("/api/me/").json()["user"]["username"] == "annotator"


def test_wrong_password_is_a_clear_400(cast):
    response = _login(APIClient(), "annotator", "not-the-password")
    assert response.status_code == 400
    assert response.json()["code"] == "invalid_credentials"


def test_expired_token_is_refused(cast):
    instance, token = AuthToken.objects.create(cast.annotator, expiry=timedelta(hours=1))
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {token}")
    assert client.get("/api/me/").status_code == 200
    AuthToken.objects.filter(pk=instance.pk).update(expiry=timezone.now() - timedelta(seconds=1))
    assert client.get("/api/me/").status_code == 401


def test_revoked_token_is_refused_and_other_tokens_survive(cast):
    _, first = AuthToken.objects.create(cast.annotator)
    _, second = AuthToken.objects.create(cast.annotator)
    a, b = APIClient(), APIClient()
    a.credentials(HTTP_AUTHORIZATION=f"Token {first}")
    b.credentials(HTTP_AUTHORIZATION=f"Token {second}")
    assert a.post("/api/auth/token/revoke/").status_code == 204
    assert a.get("/api/me/").status_code == 401
    assert b.get("/api/me/").status_code == 200


def test_revoke_all_ends_every_session(cast):
    tokens = [AuthToken.objects.create(cast.annotator)[1] for _ in range(3)]
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {tokens[0]}")
    assert client.post("/api/auth/token/revoke-all/").status_code == 204
    for token in tokens:
        c = APIClient()
        c.credentials(HTTP_AUTHORIZATION=f"Token {token}")
        assert c.get("/api/me/").status_code == 401


@override_settings(LOGIN_THROTTLE_ATTEMPTS=3)
def test_login_is_throttled_after_repeated_failures_even_with_the_right_password(cast):
    client = APIClient()
    for _ in range(3):
        assert _login(client, "annotator", "wrong-password").status_code == 400
    response = _login(client, "annotator", PASSWORD)
    assert response.status_code == 429
    assert response.json()["code"] == "throttled"


@override_settings(LOGIN_THROTTLE_ATTEMPTS=3)
def test_throttling_by_address_covers_guessing_across_usernames(cast):
    client = APIClient()
    for name in ("a1", "a2", "a3"):
        _login(client, name, "wrong-password")
    assert _login(client, "radiologist", PASSWORD).status_code == 429


@override_settings(LOGIN_THROTTLE_ATTEMPTS=2)
def test_admin_login_shares_the_throttle(cast, client):
    for _ in range(2):
        client.post("/admin/login/", {"username": "manager", "password": "wrong-password"})
    response = client.post("/admin/login/", {"username": "manager", "password": PASSWORD})
    assert response.status_code == 200  # the form is shown again, with the error
    assert b"Too many failed logins" in response.content
    assert "_auth_user_id" not in client.session


def test_admin_session_login_works_for_staff(cast, client):
    response = client.post("/admin/login/?next=/admin/", {"username": "manager", "password": PASSWORD})
    assert response.status_code == 302
    assert client.get("/admin/").status_code == 200


def test_expired_tokens_are_purged_by_the_job(cast):
    from core.jobs import purge_expired_tokens_job

    expired, _ = AuthToken.objects.create(cast.annotator)
    live, _ = AuthToken.objects.create(cast.annotator)
    AuthToken.objects.filter(pk=expired.pk).update(expiry=timezone.now() - timedelta(seconds=1))
    assert purge_expired_tokens_job() == 1
    assert list(AuthToken.objects.filter(user=cast.annotator)) == [live]
