"""OpenAPI extensions (registered when core's app is ready)."""

from drf_spectacular.extensions import OpenApiAuthenticationExtension


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


def document_common_errors(result, generator, request, public):
    """drf-spectacular postprocessing hook: the API's error format, and its common error answers on
    every /api/ operation that does not document them itself (a generated client then knows them)."""
    result.setdefault("components", {}).setdefault("schemas", {})["Error"] = ERROR_SCHEMA
    for path, operations in result.get("paths", {}).items():
        if not path.startswith("/api/"):
            continue
        for operation in operations.values():
            if not isinstance(operation, dict) or "responses" not in operation:
                continue
            for status, description in COMMON_ERRORS.items():
                operation["responses"].setdefault(status, {
                    "description": description,
                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}})
    return result
