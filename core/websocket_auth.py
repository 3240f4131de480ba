"""Websocket authentication with the API's knox tokens (or the browser's Django session).

Browsers cannot set an Authorization header on a websocket, so the token travels either in the
query string (``?token=<token>``) or as a subprotocol: the client offers ``["radqueue",
"token.<token>"]`` and the server answers ``radqueue``. A presented token wins over the session; a
presented but invalid or expired token leaves the connection anonymous (the consumer closes it
with 4401) rather than falling back to a session cookie. ``current_user`` looks the same
credentials up again later, so a socket outlives neither its token nor its session.
"""

from importlib import import_module
from types import SimpleNamespace
from urllib.parse import parse_qs

from channels.auth import AuthMiddlewareStack
from channels.db import database_sync_to_async
from channels.security.websocket import OriginValidator
from django.conf import settings
from django.contrib.auth import get_user
from django.contrib.auth.models import AnonymousUser
from rest_framework.exceptions import AuthenticationFailed

SUBPROTOCOL = "radqueue"
TOKEN_PREFIX = "token."


def presented_token(scope) -> str | None:
    """The token from the query string or the offered subprotocols; None when none was given."""
    query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
    if query.get("token"):
        return query["token"][0]
    for protocol in scope.get("subprotocols") or []:
        if protocol.startswith(TOKEN_PREFIX):
            return protocol[len(TOKEN_PREFIX):]
    return None


@database_sync_to_async
def user_for_token(token: str):
    from core.authentication import TokenAuthentication

    try:
        user, _ = TokenAuthentication().authenticate_credentials(token.encode("utf-8"))
    except (AuthenticationFailed, UnicodeError):
        return AnonymousUser()
    return user


async def current_user(scope):
    """Who the socket's credentials name now, looked up afresh: the presented token, or else the
    session. A deleted or expired token, a session logged out or a deactivated account give
    AnonymousUser (the feed re-checks its sockets with this; a socket's scope is set once)."""
    token = presented_token(scope)
    if token is not None:
        return await user_for_token(token)
    session = scope.get("session")
    key = getattr(session, "session_key", None) if session is not None else None
    if not key:
        return AnonymousUser()
    return await _session_user(key)


@database_sync_to_async
def _session_user(session_key: str):
    engine = import_module(settings.SESSION_ENGINE)
    # django.contrib.auth.get_user checks the account is active and the session's password hash.
    return get_user(SimpleNamespace(session=engine.SessionStore(session_key=session_key)))


class TokenAuthMiddleware:
    """Sets ``scope["user"]`` from a presented knox token; without one the session user stays."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        token = presented_token(scope)
        if token is not None:
            scope = dict(scope, user=await user_for_token(token), auth_method="token")
        return await self.app(scope, receive, send)


def FeedAuthStack(app):  # noqa: N802 (named like channels' AuthMiddlewareStack)
    """Session and user from the cookie first, then a presented token overrides them."""
    return AuthMiddlewareStack(TokenAuthMiddleware(app))


class BrowserOriginValidator(OriginValidator):
    """Refuses sockets opened by pages of other sites (cross-site websocket hijacking of a session).

    Browsers always send ``Origin`` on a websocket, so a foreign one is refused. A client that sends
    none is not a browser page and carries no ambient credentials (scripts present a token), so it
    is let through, unlike channels' AllowedHostsOriginValidator.
    """

    def valid_origin(self, parsed_origin):
        return parsed_origin is None or self.validate_origin(parsed_origin)


def AllowedHostsBrowserOriginValidator(app):  # noqa: N802 (named like channels' validators)
    hosts = settings.ALLOWED_HOSTS or (["localhost", "127.0.0.1", "[::1]"] if settings.DEBUG else [])
    return BrowserOriginValidator(app, hosts)
