"""One application error type, and the one DRF exception handler that turns errors into JSON.

Every error body is ``{"code": "...", "detail": "...", "errors": {field: [messages]}}``.
"""

from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import DatabaseError
from django.http import Http404
from rest_framework import exceptions as drf
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler
from rest_framework.views import set_rollback


class DomainError(Exception):
    """A refused domain action: a stable machine-readable ``code``, a human ``detail``."""

    status_code = 400
    default_code = "invalid"

    def __init__(self, detail: str, *, code: str | None = None, errors: dict | None = None,
                 status: int | None = None, retry_after: int | None = None):
        super().__init__(detail)
        self.detail = detail
        self.code = code or self.default_code
        self.errors = errors or {}
        self.retry_after = retry_after  # seconds, sent as Retry-After (a 429 or 503 says when to come back)
        if status is not None:
            self.status_code = status


class NotFound(DomainError):
    status_code = 404
    default_code = "not_found"


class Forbidden(DomainError):
    status_code = 403
    default_code = "permission_denied"


class Conflict(DomainError):
    status_code = 409
    default_code = "conflict"


def _flatten(detail) -> dict:
    if isinstance(detail, dict):
        return {k: _messages(v) for k, v in detail.items()}
    return {"non_field_errors": _messages(detail)}


def _messages(value):
    if isinstance(value, dict):
        return {k: _messages(v) for k, v in value.items()}
    if isinstance(value, list):
        if all(isinstance(v, str) for v in value):
            return [str(v) for v in value]
        return [_messages(v) for v in value]
    return [str(value)]


def error_body(code: str, detail: str, errors: dict | None = None) -> dict:
    return {"code": code, "detail": detail, "errors": errors or {}}


# PostgreSQL aborted the transaction because it met another one head-on (a deadlock, which it
# detects and breaks, or a serialization failure): nothing of it was stored, and a retry works.
# Rare on the queue: a claim taking over a lapsed read at the moment its old holder submits it.
RETRYABLE_PGCODES = {"40P01": "deadlock_detected", "40001": "serialization_failure"}


def exception_handler(exc, context):
    if isinstance(exc, DatabaseError) and getattr(exc.__cause__, "pgcode", None) in RETRYABLE_PGCODES:
        set_rollback()
        return Response(error_body("concurrent_change", "Another request changed the same records at the same "
                                   "moment; nothing of this request was stored. Retry it."),
                        status=409, headers={"Retry-After": "1"})
    if isinstance(exc, DomainError):
        headers = {"Retry-After": str(exc.retry_after)} if exc.retry_after is not None else None
        return Response(error_body(exc.code, exc.detail, exc.errors), status=exc.status_code, headers=headers)
    if isinstance(exc, DjangoValidationError):
        errors = exc.message_dict if hasattr(exc, "error_dict") else {"non_field_errors": exc.messages}
        return Response(error_body("invalid", "Invalid input.", errors), status=400)
    if isinstance(exc, Http404):
        exc = drf.NotFound("Not found.")
    elif isinstance(exc, DjangoPermissionDenied):
        exc = drf.PermissionDenied()
    response = drf_exception_handler(exc, context)
    if response is None:
        return None
    if isinstance(exc, drf.ValidationError):
        response.data = error_body("invalid", "Invalid input.", _flatten(exc.detail))
    elif isinstance(exc, drf.APIException):
        detail = exc.detail
        code = getattr(detail, "code", None) or exc.default_code
        response.data = error_body(str(code), str(detail))
    return response
