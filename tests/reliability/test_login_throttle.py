"""Both of the token endpoint's 429s say when to come back (Retry-After, in seconds)."""

import pytest
from django.test import override_settings
from rest_framework.test import APIClient

from core.auth import LoginRateThrottle
from tests.conftest import PASSWORD

pytestmark = pytest.mark.django_db


def _login(client, username, password):
    return client.post("/api/auth/token/", {"username": username, "password": password}, format="json")


@override_settings(LOGIN_THROTTLE_ATTEMPTS=3, LOGIN_THROTTLE_WINDOW=240)
def test_the_failed_login_counters_429_carries_retry_after(cast):
    client = APIClient()
    for _ in range(3):
        assert _login(client, "annotator", "wrong-password").status_code == 400
    response = _login(client, "annotator", PASSWORD)
    assert response.status_code == 429 and response.json()["code"] == "throttled"
    assert response["Retry-After"] == "240"


def test_the_request_rates_429_carries_retry_after(cast, monkeypatch):
    monkeypatch.setattr(LoginRateThrottle, "THROTTLE_RATES", {"login": "2/min"})
    client = APIClient()
    assert [_login(client, "annotator", PASSWORD).status_code for _ in range(2)] == [200, 200]
    response = _login(client, "annotator", PASSWORD)
    assert response.status_code == 429 and response.json()["code"] == "throttled"
    assert 0 < int(response["Retry-After"]) <= 60
