"""Request id and audit context for every HTTP request; 503 while a backing service is down."""

from audit import context
from core import outages


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


class OutageMiddleware:
    """Answers a view that met an unreachable database, cache or job queue with 503 and Retry-After
    (core.outages), in the API's JSON error format, on every path: DRF hands such errors on
    (its handler, core.errors, answers only what the API decides), and so does the token check,
    which runs inside the view. The outage is logged once when it starts and once when it ends."""

    def __init__(self, get_response):
        self.get_response = get_response
        # Only the login views use the cache: it is back when one of those that failed answers.
        self._cache_paths: set[str] = set()

    def __call__(self, request):
        response = self.get_response(request)
        if self._cache_paths and request.path in self._cache_paths and response.status_code != 503:
            self._cache_paths.clear()
            outages.cache.succeeded()
        return response

    def process_exception(self, request, exc):
        service = outages.unavailable_service(exc)
        if service is None:
            return None
        if service == outages.DATABASE:
            outages.database.failed(exc)
        elif service == outages.CACHE:
            self._cache_paths.add(request.path)
            outages.cache.failed(exc)
        # QUEUE: core.jobs logged the broker's outage when it found it, and logs its end
        return outages.unavailable_response(service)


class NulInQueryMiddleware:
    """A NUL character in a query parameter is a 400: PostgreSQL text cannot hold one, so a filter
    on it would fail in the database (a 500) instead of saying what is wrong."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        if any("\x00" in key or any("\x00" in v for v in values) for key, values in request.GET.lists()):
            from django.http import JsonResponse

            from core.errors import error_body

            return JsonResponse(error_body("invalid", "Query parameters may not contain NUL characters."),
                                status=400)
        return self.get_response(request)
