"""Keeps credentials out of access logs: a token in a query string (`?token=`, refused since the
feed takes it as a subprotocol, but an old client may still send one) is still a live credential,
and uvicorn's and gunicorn's access lines print the full path."""

import logging
import re

_TOKEN_IN_QUERY = re.compile(r"([?&](?:token|access_token|auth)=)[^&\s\"']*", re.IGNORECASE)
ACCESS_LOGGERS = ("uvicorn.access", "uvicorn.error", "gunicorn.access", "gunicorn.error", "django.server",
                  "django.request")


def redact(text: str) -> str:
    return _TOKEN_IN_QUERY.sub(r"\1[redacted]", text)


class RedactQueryTokens(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):
            record.msg = redact(record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(redact(a) if isinstance(a, str) else a for a in record.args)
        elif isinstance(record.args, dict):
            record.args = {k: redact(v) if isinstance(v, str) else v for k, v in record.args.items()}
        return True


def install() -> None:
    """Idempotent: adds the filter to every logger that writes request lines."""
    for name in ACCESS_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, RedactQueryTokens) for f in logger.filters):
            logger.addFilter(RedactQueryTokens())
