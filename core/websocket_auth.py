"""Websocket authentication with the API's knox tokens (or the browser's Django session).

Browsers cannot set an Authorization header on a websocket, so the token travels as a subprotocol:
the client offers ``["radqueue", "token.<token>"]`` and the server answers ``radqueue``. Never in
the URL: a token in the query string (``?token=``) is refused like a bad one, because URLs are
written to access logs (nginx's, uvicorn's), and a token lives for hours (core.log_redaction
blanks it there anyway). A presented token wins over the session; a presented but invalid or
expired token leaves the connection anonymous (the consumer closes it with 4401) rather than
falling back to a session cookie. ``current_user`` looks the same credentials up again later, so a
socket outlives neither its token nor its session. A handshake that meets an outage (the token's or
the session's lookup with PostgreSQL down) is accepted and closed with 1013, try again later
(FeedOutageGuard), as the feed closes its open sockets in one.
"""

import contextlib
from importlib import import_module
from types import SimpleNamespace
from urllib.parse import parse_qs, urlsplit

from channels.auth import AuthMiddlewareStack
from channels.db import database_sync_to_async
from channels.security.websocket import WebsocketDenier
from django.conf import settings
from django.contrib.auth import get_user
from django.contrib.auth.models import AnonymousUser
from django.http.request import split_domain_port, validate_host
from rest_framework.exceptions import AuthenticationFailed

from core import outages

SUBPROTOCOL = "radqueue"
TOKEN_PREFIX = "token."
CLOSE_TRY_AGAIN_LATER = 1013  # RFC 6455, section 7.4.1: a service the server needs is unavailable


def presented_token(scope) -> str | None:
    """The token from the offered subprotocols; None when none was given, and "" (which no user
    has) when the URL carries one: that socket stays anonymous whatever its session says."""
    if "token" in parse_qs(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True):
        return ""
    for protocol in scope.get("subprotocols") or []:
        if protocol.startswith(TOKEN_PREFIX):
            return protocol[len(TOKEN_PREFIX):]
    return None


@database_sync_to_async
def user_for_token(token: str):
    from core.authentication import TokenAuthentication

    if not token:
        return AnonymousUser()
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
    """Session and user from the cookie first, then a presented token overrides them; an outage
    on the way is a close with 1013."""
    return FeedOutageGuard(AuthMiddlewareStack(TokenAuthMiddleware(app)))


class FeedOutageGuard:
    """Closes a socket with 1013 (try again later) when its handshake meets an unreachable
    PostgreSQL or Redis: the credentials' lookup above the consumer, or the consumer's own first
    queries. The handshake is accepted first, because a close before it cannot carry a code: the
    client would see an HTTP 500 (an error raised to the server) or 403 (a close), and not know to
    come back. The outage is logged once, not per socket."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "websocket":
            return await self.app(scope, receive, send)
        seen = {"connect": False, "accept": False}

        async def receiving():
            message = await receive()
            seen["connect"] = seen["connect"] or message["type"] == "websocket.connect"
            return message

        async def sending(message):
            if message["type"] == "websocket.close" and message.get("code") == CLOSE_TRY_AGAIN_LATER \
                    and not seen["accept"]:
                if not seen["connect"]:
                    await receiving()  # ASGI: the connect event comes before the answer to it
                offered = SUBPROTOCOL in (scope.get("subprotocols") or [])
                # A browser that offered subprotocols fails a handshake that picks none.
                await send({"type": "websocket.accept", "subprotocol": SUBPROTOCOL if offered else None})
                seen["accept"] = True
            seen["accept"] = seen["accept"] or message["type"] == "websocket.accept"
            await send(message)

        try:
            return await self.app(scope, receiving, sending)
        except Exception as exc:
            if not outages.note_feed_outage(exc):
                raise
            with contextlib.suppress(OSError, RuntimeError):  # unless the client has gone already
                await sending({"type": "websocket.close", "code": CLOSE_TRY_AGAIN_LATER})


class BrowserOriginValidator:
    """Refuses sockets opened by pages of other sites (cross-site websocket hijacking of a session).

    Browsers always send ``Origin`` on a websocket, and it must be the site itself (``same_origin``)
    or the handshake is refused (403). A client that sends none is not a browser page and carries
    no ambient credentials (scripts present a token), so it is let through, unlike channels'
    AllowedHostsOriginValidator. Channels' validators compare the host alone, so a page served
    over plain http, or by another service on another port of the same host, could ride the
    session; this compares scheme, host and port, as Django's CSRF check compares a form's Origin.
    """

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] == "websocket":
            headers = _headers(scope)
            if "origin" in headers and not same_origin(scope, headers["origin"]):
                return await WebsocketDenier()(scope, receive, send)
        return await self.app(scope, receive, send)


_DEFAULT_PORTS = {"http": 80, "https": 443}


def _headers(scope) -> dict[str, str]:
    return {name.decode("latin-1").lower(): value.decode("latin-1") for name, value in scope.get("headers", [])}


def _origin(scheme: str, netloc: str) -> tuple[str, str, int] | None:
    """(scheme, host, port) with the scheme's default port filled in; None when it is not one."""
    try:
        parsed = urlsplit(f"{scheme}://{netloc}")
        port = parsed.port or _DEFAULT_PORTS.get(scheme)
    except ValueError:
        return None
    if not parsed.hostname or port is None or parsed.path or parsed.query or parsed.username is not None:
        return None
    return scheme, parsed.hostname.lower(), port


def socket_scheme(scope, headers: dict[str, str]) -> str:
    """``https`` or ``http``: what the page that may open this socket was served over.

    The proxy's header decides when it is present, as for Django's ``request.is_secure()``
    (SECURE_PROXY_SSL_HEADER); otherwise the server's own scheme (uvicorn sets ``wss`` from
    X-Forwarded-Proto of a trusted proxy, too)."""
    if settings.SECURE_PROXY_SSL_HEADER:
        header, secure_value = settings.SECURE_PROXY_SSL_HEADER
        value = headers.get(header.removeprefix("HTTP_").replace("_", "-").lower())
        if value is not None:
            return "https" if value.split(",", 1)[0].strip() == secure_value else "http"
    return "https" if scope.get("scheme") in ("wss", "https") else "http"


def same_origin(scope, origin: str) -> bool:
    """Whether a browser page of ``origin`` may open this socket: the socket's own scheme, host
    (one of ALLOWED_HOSTS) and port, or one of CSRF_TRUSTED_ORIGINS (``*.`` wildcards as Django's)."""
    headers = _headers(scope)
    scheme, _, netloc = origin.partition("://")
    presented = _origin(scheme.lower(), netloc)
    if presented is None:  # "null" (a sandboxed page or file://) and anything malformed
        return False
    host = headers.get("host", "")
    domain, _ = split_domain_port(host)
    allowed_hosts = settings.ALLOWED_HOSTS or ([".localhost", "127.0.0.1", "[::1]"] if settings.DEBUG else [])
    if domain and validate_host(domain, allowed_hosts) and presented == _origin(socket_scheme(scope, headers), host):
        return True
    for trusted in settings.CSRF_TRUSTED_ORIGINS:
        trusted_scheme, _, trusted_netloc = trusted.partition("://")
        if trusted_netloc.startswith("*."):
            wildcard = _origin(trusted_scheme.lower(), trusted_netloc[1:].lstrip("."))
            if wildcard is not None and (presented[0], presented[2]) == (wildcard[0], wildcard[2]) \
                    and (presented[1] == wildcard[1] or presented[1].endswith("." + wildcard[1])):
                return True
        elif presented == _origin(trusted_scheme.lower(), trusted_netloc):
            return True
    return False
