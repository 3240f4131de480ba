"""OpenAPI extensions (registered when core's app is ready)."""

import inspect

from drf_spectacular import openapi
from drf_spectacular.extensions import OpenApiAuthenticationExtension

from core.roles import Subspecialty


class AutoSchema(openapi.AutoSchema):
    """drf-spectacular's AutoSchema, except where an operation's description comes from: the action's or
    the view's own docstring, written for the API's users, never one inherited from a base class or
    mixin (drf-spectacular falls back on those, and AuditedViewMixin's describes how auditing works)."""

    def get_description(self) -> str:
        action = getattr(self.view, getattr(self.view, "action", None) or self.method.lower(), None)
        action_doc = getattr(action, "__doc__", None) if callable(action) else None
        view_doc = self.view.__class__.__dict__.get("__doc__")
        return inspect.cleandoc(action_doc or view_doc or "")

    def get_operation(self, *args, **kwargs):
        # One DICOMweb view class serves several roots (core.dicom.scopes): each root's operations get
        # ids of their own, or a generated client would see one operation id twice.
        operation = super().get_operation(*args, **kwargs)
        scope = getattr(self.view, "scope_class", None)
        if operation and scope is not None and scope.operation_prefix:
            operation["operationId"] = f"{scope.operation_prefix}_{operation['operationId']}"
            operation["description"] = "\n\n".join(filter(None, (scope.schema_note, operation.get("description"))))
            if self.method == "POST":
                # Not ingest: the scope stores into itself (a read's draft) or refuses.
                operation["parameters"] = [p for p in operation.get("parameters", []) if p.get("name") != "project"]
                operation["summary"] = scope.stow_summary
                kept = {code: r for code, r in operation["responses"].items() if code in ("401", "403", "404", "415")}
                operation["responses"] = {**scope.stow_responses, **kept}
        return operation


class TokenAuthenticationScheme(OpenApiAuthenticationExtension):
    target_class = "core.authentication.TokenAuthentication"
    name = "tokenAuth"

    def get_security_definition(self, auto_schema):
        return {"type": "apiKey", "in": "header", "name": "Authorization",
                "description": "An API token from POST /api/auth/token/, sent as `Token <key>`."}


ERROR_SCHEMA = {
    "type": "object",
    "description": "Every error (core.errors): a machine-readable code, a human detail, and field errors.",
    "properties": {
        "code": {"type": "string", "example": "not_found"},
        "detail": {"type": "string", "example": "No such project."},
        "errors": {"type": "object", "additionalProperties": {"type": "array", "items": {"type": "string"}}},
    },
    "required": ["code", "detail", "errors"],
}
# The answers any API operation may give besides its own: bad input, no or a revoked token, a role
# without the permission, an object out of reach or an id that does not exist (ids beyond bigint too).
COMMON_ERRORS = {
    "400": "The request is invalid; `errors` says which field and why.",
    "401": "No valid API token.",
    "403": "Your role on the project does not allow this.",
    "404": "No such object, or not one you can reach.",
}


ERROR_CONTENT = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}


def document_common_errors(result, generator, request, public):
    """drf-spectacular postprocessing hook: the API's error format, its common error answers on every
    /api/ and /dicomweb/ operation that does not document them itself (a generated client then knows
    them), and that format as the body of every error answer documented with a description only."""
    result.setdefault("components", {}).setdefault("schemas", {})["Error"] = ERROR_SCHEMA
    for path, operations in result.get("paths", {}).items():
        if not path.startswith(("/api/", "/dicomweb/")):
            continue
        for operation in operations.values():
            if not isinstance(operation, dict) or "responses" not in operation:
                continue
            for status, description in COMMON_ERRORS.items():
                operation["responses"].setdefault(status, {"description": description, "content": ERROR_CONTENT})
            for status, response in operation["responses"].items():
                if status.startswith("4") and "content" not in response:
                    response["content"] = ERROR_CONTENT
    return result


# A protocol version's `rules` (core.protocols.validate_rules checks them; tasks.creation, tasks.routing
# and tasks.consensus read them). Every key is optional; a missing one takes its default.
_TIER = {"type": "string", "enum": ["annotator", "radiologist", "subspecialist"]}
_RATIO = {"type": "number", "minimum": 0, "maximum": 1}
AGREEMENT_RULES_SCHEMA = {
    "type": "object",
    "description": "When k reads of a task agree, per label kind (tasks.consensus); a disagreement opens an "
                   "adjudication.",
    "properties": {
        "grade_within": {"type": "integer", "minimum": 0, "default": 0, "description": (
            "ordinal: the most steps of the ordered categories between two reads' grades.")},
        "dice": {**_RATIO, "default": 0.7, "description": "mask: the least pairwise Dice of the readers' masks."},
        "iou": {**_RATIO, "default": 0.5, "description": (
            "bbox and polygon: the least IoU at which each box of a read is matched in every other read.")},
        "landmark_mm": {"type": "number", "minimum": 0, "default": 5.0, "description": (
            "landmark: the farthest matched points may lie apart, in mm (pixels where there is no spacing).")},
        "measurement_rel": {"type": "number", "minimum": 0, "default": 0.1, "description": (
            "measurement: the largest relative difference between two reads' values.")},
    },
    "additionalProperties": False,
}
PROTOCOL_RULES_SCHEMA = {
    "type": "object",
    "description": "What tasks are made of the project's studies, who reads and adjudicates them, and when reads "
                   "agree. Every key is optional.",
    "properties": {
        "agreement": AGREEMENT_RULES_SCHEMA,
        "unit": {"type": "string", "enum": ["study", "series"], "default": "study",
                 "description": "One task per study, or one per series."},
        "modalities": {"type": "array", "items": {"type": "string"}, "description": (
            "Only series of these modalities make tasks (all when absent).")},
        "required_sequences": {"type": "array", "items": {"type": "string"}, "description": (
            "MR sequences a study must have; a study lacking one is flagged, not queued.")},
        "first_read_tier": {**_TIER, "default": "annotator", "description": "The tier first reads need."},
        "first_read_subspecialty": {"type": "boolean", "default": False, "description": (
            "First reads need the study's sub-specialty (only when radiologists or above read first).")},
        "gold_first_read_tier": {**_TIER, "default": "radiologist", "description": (
            "The tier of gold and calibration references' reads.")},
        "adjudication_tier": {**_TIER, "default": "radiologist", "description": "The tier adjudications need."},
        "adjudication_subspecialty": {"type": "boolean", "default": True, "description": (
            "Adjudications need the study's sub-specialty, where one applies.")},
        "adjudication_requires_subspecialist": {"type": "boolean", "default": False, "description": (
            "Adjudications of a study with a sub-specialty need a sub-specialist.")},
        "panel_policy": {"type": "object", "required": ["uncertainty_threshold"], "additionalProperties": False,
                         "description": (
            "Reads spent where the model is unsure (tasks.panels), off unless enabled: after a scoring job, a "
            "queued production task with no read taken whose model uncertainty is at least the threshold gets "
            "one more first read (at most 3) or radiologists as first readers; confident tasks keep the "
            "protocol's reads and tier, never fewer. Gold and calibration tasks are never changed."),
            "properties": {
                "enabled": {"type": "boolean", "default": False},
                "uncertainty_threshold": {"type": "number", "minimum": 0, "description": (
                    "In the scoring strategy's units (entropy, margin, least confidence or MC-dropout).")},
                "action": {"type": "string", "enum": ["extra_read", "radiologist_first_read"],
                           "default": "extra_read"}}},
        "subspecialty_rules": {"type": "array", "description": (
            "Tried in order before the built-in ones (mammography: breast, PET/NM: nuclear, under 18: "
            "paediatric, brain CT/MR: neuro, musculoskeletal parts: msk): the first rule whose conditions all "
            "hold names the study's sub-specialty."), "items": {
            "type": "object", "required": ["subspecialty"], "additionalProperties": False, "properties": {
                "modality": {"type": "string", "example": "MR"},
                "body_part": {"type": "string", "example": "KNEE"},
                "max_age": {"type": "integer", "minimum": 0, "description": "Patients up to this age (years)."},
                "subspecialty": {"type": "string", "enum": Subspecialty.values}}}},
    },
    "example": {
        "agreement": {"grade_within": 1, "dice": 0.8, "iou": 0.5, "landmark_mm": 3.0, "measurement_rel": 0.1},
        "unit": "study", "first_read_tier": "radiologist", "adjudication_requires_subspecialist": True,
        "subspecialty_rules": [{"modality": "MR", "body_part": "KNEE", "subspecialty": "msk"}],
    },
}
