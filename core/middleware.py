"""Request id and audit context for every HTTP request."""

from audit import context


class RequestIdMiddleware:
    """Sets the audit context (request id, client IP, user agent) and echoes X-Request-ID."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        ctx = context.context_from_meta(request.META)
        request.request_id = ctx.request_id
        token = context.enter(ctx)
        try:
            response = self.get_response(request)
        finally:
            context.leave(token)
        response["X-Request-ID"] = ctx.request_id
        return response
