"""The request context an audit event takes its client IP, user agent and request id from."""

import contextvars
import ipaddress
import re
import uuid
from dataclasses import dataclass, field

from django.conf import settings


@dataclass
class RequestContext:
    request_id: str = ""
    client_ip: str | None = None
    user_agent: str = ""
    roles_cache: dict = field(default_factory=dict)


_current: contextvars.ContextVar[RequestContext | None] = contextvars.ContextVar("radqueue_request", default=None)
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


def current() -> RequestContext | None:
    return _current.get()


def client_ip_of(meta: dict) -> str | None:
    """The client's address: REMOTE_ADDR, or, behind trusted proxies, the entry the outermost one added.

    Proxies append to X-Forwarded-For, so everything left of what our own proxies wrote is whatever
    the client sent (spoofable). With ``TRUSTED_PROXY_HOPS`` proxies in front of us, the client is
    the hops-th entry from the right; a shorter list means every entry came from our proxies, and
    the left-most is the client. An entry that is not an address falls back to REMOTE_ADDR.
    """
    header = settings.TRUSTED_PROXY_IP_HEADER
    candidates = []
    if header:
        entries = [part.strip() for part in meta.get(header, "").split(",") if part.strip()]
        if entries:
            hops = max(1, settings.TRUSTED_PROXY_HOPS)
            candidates.append(entries[-min(hops, len(entries))])
    candidates.append(meta.get("REMOTE_ADDR", ""))
    for value in candidates:
        try:
            return str(ipaddress.ip_address(value))
        except ValueError:
            continue
    return None


def context_from_meta(meta: dict) -> RequestContext:
    given = meta.get("HTTP_X_REQUEST_ID", "")
    return RequestContext(
        request_id=given if _REQUEST_ID.match(given) else uuid.uuid4().hex,
        client_ip=client_ip_of(meta),
        user_agent=meta.get("HTTP_USER_AGENT", "")[:300],
    )


def enter(ctx: RequestContext):
    return _current.set(ctx)


def leave(token) -> None:
    _current.reset(token)
