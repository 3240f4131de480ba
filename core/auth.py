"""API tokens (django-rest-knox: stored as SHA-512 digests, with expiry and revocation), login
throttling shared by the token endpoint and the admin login, and the login audit events.
"""

import hashlib

from django.conf import settings
from django.contrib.admin.forms import AdminAuthenticationForm
from django.contrib.auth import authenticate
from django.core.cache import cache
from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone
from drf_spectacular.utils import OpenApiResponse, extend_schema
from knox.models import AuthToken
from rest_framework import status
from rest_framework.permissions import AllowAny
from rest_framework.response import Response
from rest_framework.throttling import ScopedRateThrottle
from rest_framework.views import APIView

from audit.context import client_ip_of
from audit.trail import record_event
from core.api.serializers import TokenRequestSerializer, TokenResponseSerializer, UserSerializer
from core.errors import DomainError

# --- throttling -----------------------------------------------------------------------------

def _keys(username: str, ip: str | None) -> list[str]:
    name = hashlib.sha256(username.lower().encode()).hexdigest()[:32]
    return [f"login-fail:user:{name}", f"login-fail:ip:{ip or 'unknown'}"]


def login_blocked(username: str, ip: str | None) -> bool:
    limit = settings.LOGIN_THROTTLE_ATTEMPTS
    return any((cache.get(k) or 0) >= limit for k in _keys(username, ip))


def note_login_failure(username: str, ip: str | None) -> None:
    for key in _keys(username, ip):
        cache.add(key, 0, settings.LOGIN_THROTTLE_WINDOW)
        try:
            cache.incr(key)
        except ValueError:  # expired between add and incr
            cache.set(key, 1, settings.LOGIN_THROTTLE_WINDOW)


def clear_login_failures(username: str) -> None:
    cache.delete(_keys(username, None)[0])


class TooManyAttempts(DomainError):
    status_code = 429
    default_code = "throttled"


def _too_many() -> TooManyAttempts:
    # Retry-After: the whole window, the longest the counter can still refuse (Django's cache API
    # cannot tell how much of it is left).
    return TooManyAttempts(
        f"Too many failed logins; try again in {settings.LOGIN_THROTTLE_WINDOW // 60} minutes.",
        retry_after=settings.LOGIN_THROTTLE_WINDOW,
    )


class ThrottledLoginFormMixin:
    """A Django login form that refuses further attempts once a username or address is throttled
    (recorded as a denied login on ``login_channel``) and counts each failed attempt."""

    login_channel = ""

    def throttled_message(self) -> str:
        return str(_too_many().detail)

    def clean(self):
        username = self.cleaned_data.get("username") or ""
        ip = client_ip_of(self.request.META) if self.request else None
        if login_blocked(username, ip):
            record_event("login_failed", outcome="denied", reason="throttled", extra={"channel": self.login_channel})
            raise ValidationError(self.throttled_message(), code="throttled")
        try:
            return super().clean()
        except ValidationError:
            note_login_failure(username, ip)
            raise


class ThrottledAdminAuthenticationForm(ThrottledLoginFormMixin, AdminAuthenticationForm):
    """The admin login form, throttled like the token endpoint."""

    login_channel = "admin"


# --- token endpoints ------------------------------------------------------------------------

class LoginRateThrottle(ScopedRateThrottle):
    """The token endpoint's request rate, per client address as the trail records it. DRF's own
    get_ident keys on the whole X-Forwarded-For, which the client writes: a new left-most entry
    per attempt would open a new bucket each time."""

    def get_ident(self, request):
        return client_ip_of(request.META) or "unknown"


class ObtainTokenView(APIView):
    """Exchange a username and password for an API token (``Authorization: Token <key>``)."""

    authentication_classes = []
    permission_classes = [AllowAny]
    throttle_classes = [LoginRateThrottle]
    throttle_scope = "login"

    @extend_schema(request=TokenRequestSerializer, responses={
        200: TokenResponseSerializer, 400: OpenApiResponse(description="Wrong username or password."),
        429: OpenApiResponse(description="Too many failed attempts."),
    })
    def post(self, request):
        data = TokenRequestSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        username, password = data.validated_data["username"], data.validated_data["password"]
        ip = client_ip_of(request.META)
        if login_blocked(username, ip):
            record_event("login_failed", outcome="denied", reason="throttled", extra={"channel": "api"})
            raise _too_many()
        user = authenticate(request._request, username=username, password=password)
        if user is None:
            note_login_failure(username, ip)
            raise DomainError("Wrong username or password.", code="invalid_credentials")
        clear_login_failures(username)
        with transaction.atomic():
            instance, token = AuthToken.objects.create(user)
            record_event("login", actor=user, extra={"channel": "api"})
            record_event("token_created", actor=user, object_type="knox.authtoken", object_id=instance.token_key)
        return Response({"token": token, "expiry": instance.expiry, "user": UserSerializer(user).data})


class RevokeTokenView(APIView):
    """Revoke the token this request was made with."""

    @extend_schema(request=None, responses={204: OpenApiResponse(description="Token revoked.")})
    def post(self, request):
        if not isinstance(request.auth, AuthToken):
            raise DomainError("This request was not made with an API token.", code="not_token_auth")
        with transaction.atomic():
            key = request.auth.token_key
            request.auth.delete()
            record_event("token_revoked", actor=request.user, object_type="knox.authtoken", object_id=key)
        return Response(status=status.HTTP_204_NO_CONTENT)


class RevokeAllTokensView(APIView):
    """Revoke every API token of the caller (all devices)."""

    @extend_schema(request=None, responses={204: OpenApiResponse(description="All tokens revoked.")})
    def post(self, request):
        with transaction.atomic():
            count, _ = AuthToken.objects.filter(user=request.user).delete()
            record_event("token_revoked", actor=request.user, object_type="knox.authtoken", object_id="*",
                         extra={"count": count})
        return Response(status=status.HTTP_204_NO_CONTENT)


# --- audit of session logins (admin) ---------------------------------------------------------

def on_user_logged_in(sender, request, user, **kwargs):
    record_event("login", actor=user, extra={"channel": "session"})


def on_user_login_failed(sender, credentials, request=None, **kwargs):
    # Credentials may hold a mistyped password; only the fact of the failure is kept.
    record_event("login_failed", outcome="denied", reason="wrong credentials")


def purge_expired_tokens() -> int:
    """Delete every expired API token; returns how many."""
    count, _ = AuthToken.objects.filter(expiry__lt=timezone.now()).delete()
    return count
