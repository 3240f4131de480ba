"""The client address the audit trail and the login throttle use, behind proxies that append."""

import pytest
from django.test import override_settings
from rest_framework.test import APIClient

from audit.models import AuditEvent
from tests.conftest import PASSWORD

pytestmark = pytest.mark.django_db

BEHIND_ONE_PROXY = override_settings(TRUSTED_PROXY_IP_HEADER="HTTP_X_FORWARDED_FOR", TRUSTED_PROXY_HOPS=1)


def _login(client, username, password, forwarded_for):
    return client.post("/api/auth/token/", {"username": username, "password": password}, format="json",
                       HTTP_X_FORWARDED_FOR=forwarded_for, REMOTE_ADDR="10.0.0.1")


@BEHIND_ONE_PROXY
def test_a_spoofed_left_most_forwarded_entry_is_not_recorded_as_the_client(cast, api):
    # The client sent "X-Forwarded-For: 198.51.100.66"; the proxy appended the real peer.
    api(cast.annotator).get("/api/projects/", HTTP_X_FORWARDED_FOR="198.51.100.66, 203.0.113.7",
                            REMOTE_ADDR="10.0.0.1")
    assert AuditEvent.objects.filter(action="list").latest("id").client_ip == "203.0.113.7"


@override_settings(TRUSTED_PROXY_IP_HEADER="HTTP_X_FORWARDED_FOR", TRUSTED_PROXY_HOPS=2)
def test_with_two_trusted_hops_the_client_is_the_second_entry_from_the_right(cast, api):
    api(cast.annotator).get("/api/projects/", HTTP_X_FORWARDED_FOR="198.51.100.66, 203.0.113.7, 192.0.2.10",
                            REMOTE_ADDR="10.0.0.1")
    assert AuditEvent.objects.filter(action="list").latest("id").client_ip == "203.0.113.7"


@BEHIND_ONE_PROXY
@override_settings(LOGIN_THROTTLE_ATTEMPTS=3)
def test_rotating_a_spoofed_forwarded_entry_does_not_escape_the_address_throttle(cast):
    client = APIClient()
    for n, name in enumerate(("a1", "a2", "a3")):
        assert _login(client, name, "wrong-password", f"198.51.100.{n}, 203.0.113.7").status_code == 400
    response = _login(client, "radiologist", PASSWORD, "198.51.100.99, 203.0.113.7")
    assert response.status_code == 429


@BEHIND_ONE_PROXY
@override_settings(LOGIN_THROTTLE_ATTEMPTS=3)
def test_a_spoofed_entry_cannot_lock_out_another_address(cast):
    client = APIClient()
    for name in ("a1", "a2", "a3"):
        _login(client, name, "wrong-password", "192.0.2.50, 203.0.113.7")
    # 192.0.2.50 itself, arriving through the proxy, is not throttled by what 203.0.113.7 did.
    assert _login(client, "radiologist", PASSWORD, "192.0.2.50").status_code == 200


@pytest.mark.parametrize("proxied", [True, False])
def test_the_login_request_rate_is_per_client_address_not_per_forwarded_header(cast, monkeypatch, settings, proxied):
    from core.auth import LoginRateThrottle

    # DRF keyed this rate on the whole X-Forwarded-For: a new spoofed entry per try was a new bucket.
    monkeypatch.setattr(LoginRateThrottle, "THROTTLE_RATES", {"login": "3/min"})
    settings.LOGIN_THROTTLE_ATTEMPTS = 100
    settings.TRUSTED_PROXY_IP_HEADER = "HTTP_X_FORWARDED_FOR" if proxied else ""
    client = APIClient()
    for n in range(3):
        assert _login(client, f"a{n}", "wrong-password", f"198.51.100.{n}, 203.0.113.7").status_code == 400
    assert _login(client, "radiologist", PASSWORD, "198.51.100.99, 203.0.113.7").status_code == 429
    # Another client behind the same proxy (or, unproxied, another peer) has its own bucket.
    other = client.post("/api/auth/token/", {"username": "radiologist", "password": PASSWORD}, format="json",
                        HTTP_X_FORWARDED_FOR="192.0.2.8", REMOTE_ADDR="10.0.0.1" if proxied else "10.0.0.2")
    assert other.status_code == 200
