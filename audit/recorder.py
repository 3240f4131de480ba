"""The request recorder: every API request on project data leaves an access event.

Successful writes are recorded by the service that makes them, inside its transaction. This
recorder adds the accesses: every read (list, view, download) and every refused or failed
request, writes included (a 404 for an object the caller may not see is recorded as denied).
"""

from audit.models import AuditEvent
from audit.trail import record_event

SAFE_METHODS = {"GET", "HEAD"}
ACTION_BY_VIEW_ACTION = {
    "list": "list", "retrieve": "view", "create": "create", "update": "update",
    "partial_update": "update", "destroy": "delete",
}


def outcome_for(status: int) -> str:
    if status < 400:
        return AuditEvent.Outcome.ALLOWED
    if status in (401, 403, 404):
        return AuditEvent.Outcome.DENIED
    return AuditEvent.Outcome.ERROR


def is_recorded(request, response) -> bool:
    """Whether record_request records this request: a read, or a refused or failed request (a
    successful write was recorded by the service that made it, in its own transaction)."""
    return request.method in SAFE_METHODS or response.status_code >= 400


def record_request(request, response, *, action: str, object_type: str, object_id="", project_id=None,
                   study_uid: str = "", protocol_version: int | None = None, extra: dict | None = None) -> None:
    """Record a read access, or a refusal or failure of any request."""
    status = response.status_code
    if not is_recorded(request, response):
        return
    reason = ""
    if status >= 400:
        data = getattr(response, "data", None)
        if isinstance(data, dict):
            reason = f"{status} {data.get('code', '')}: {data.get('detail', '')}"
        else:
            reason = str(status)
    user = getattr(request, "user", None)
    try:
        project_id = int(project_id) if project_id not in (None, "") else None
    except (TypeError, ValueError):
        project_id = None
    if project_id is not None and not 0 < project_id < 2**63:
        project_id = None  # client input no project can have (a claim's body): the column is a bigint
    record_event(
        action, actor=user, project_id=project_id, object_type=object_type, object_id=object_id,
        study_uid=study_uid, protocol_version=protocol_version, outcome=outcome_for(status), reason=reason,
        extra={**(extra or {}), "method": request.method, "path": request.path[:200], "status": status},
    )


class AuditedViewMixin:
    """For DRF views: records the access after the response is built.

    ``audit_object_type`` names what the view serves; ``audit_project_kwarg`` the URL kwarg that
    holds the project id (``pk`` on the project view itself).
    """

    audit_object_type = ""
    audit_project_kwarg = "project_pk"

    def audit_action(self, request) -> str:
        action = getattr(self, "action", None)
        if action in ACTION_BY_VIEW_ACTION:
            return ACTION_BY_VIEW_ACTION[action]
        if action:
            return action
        return "list" if request.method in SAFE_METHODS else "update"

    def audit_target(self) -> tuple:
        """(project id, object id, study UID) of the request."""
        kwargs = getattr(self, "kwargs", {})
        object_id = kwargs.get(getattr(self, "lookup_url_kwarg", None) or getattr(self, "lookup_field", "pk"), "")
        return kwargs.get(self.audit_project_kwarg), object_id, ""

    def audit_protocol_version(self) -> int | None:
        """The protocol version the request is served under, where it is served under one."""
        return None

    def audit_extra(self) -> dict:
        """What the request's event records beyond the target (the read a DICOMweb root serves, say)."""
        return {}

    def finalize_response(self, request, response, *args, **kwargs):
        response = super().finalize_response(request, response, *args, **kwargs)
        if not is_recorded(request, response):
            return response  # nor its target looked up (a view's may parse the body)
        project_id, object_id, study_uid = self.audit_target()
        record_request(request, response, action=self.audit_action(request), object_type=self.audit_object_type,
                       object_id=object_id, project_id=project_id, study_uid=study_uid,
                       protocol_version=self.audit_protocol_version(), extra=self.audit_extra())
        return response
