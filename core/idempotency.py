"""The Idempotency-Key header: one rule for every endpoint that takes it, and its OpenAPI description.

A key is 1 to 100 visible ASCII characters (``!`` to ``~``: a UUID, say). A longer key is refused
rather than cut: a stored prefix never equals the full key a retry sends, so the retry would be
refused instead of answered with the first result. Control characters, spaces and non-ASCII are
refused too: HTTP servers and proxies disagree about them, so the key a retry arrives with could
differ from the first. An absent or empty header means no key.
"""

import re

from drf_spectacular.utils import OpenApiParameter

from core.errors import DomainError

HEADER = "Idempotency-Key"
MAX_LENGTH = 100  # the width of the column that stores it (tasks.Read.idempotency_key)
_VALID = re.compile(rf"[!-~]{{1,{MAX_LENGTH}}}")

PARAMETER = OpenApiParameter(
    HEADER, {"type": "string", "minLength": 1, "maxLength": MAX_LENGTH, "pattern": f"^[!-~]{{1,{MAX_LENGTH}}}$"},
    OpenApiParameter.HEADER,
    description=f"Makes retries safe: a retry with the same key returns the first result. 1 to {MAX_LENGTH} "
                "visible ASCII characters (no spaces); a longer key or other characters are refused with 400 "
                "`invalid_idempotency_key` and nothing is stored.")


def checked_key(key: str | None) -> str:
    """The key as given ("" for none); DomainError (400) for one no retry could match exactly."""
    if not key:
        return ""
    if isinstance(key, str) and _VALID.fullmatch(key):
        return key
    problem = (f"At most {MAX_LENGTH} characters; this one has {len(key)}."
               if isinstance(key, str) and len(key) > MAX_LENGTH else "Only visible ASCII characters, '!' to '~'.")
    raise DomainError(f"An {HEADER} is 1 to {MAX_LENGTH} visible ASCII characters, without spaces; nothing was "
                      "stored.", code="invalid_idempotency_key", errors={HEADER: [problem]})


def key_from(request) -> str:
    """The request's checked Idempotency-Key ("" when it sends none)."""
    return checked_key(request.headers.get(HEADER, ""))
