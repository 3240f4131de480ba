"""Ids in URLs are bounded to what a PostgreSQL bigint holds, so a larger one is a 404 like any id
that does not exist, on every endpoint, instead of the database's out-of-range error (a 500).

``<id:pk>`` in path() routes; ``IdRouter`` for viewsets, whose default lookup is the same pattern.
"""

from django.urls import register_converter
from rest_framework.routers import SimpleRouter

# 18 digits are always below 2**63 - 1; ids of 19 digits are never reached.
ID_PATTERN = "[0-9]{1,18}"


class IdConverter:
    regex = ID_PATTERN

    def to_python(self, value: str) -> int:
        return int(value)

    def to_url(self, value) -> str:
        return str(int(value))


register_converter(IdConverter, "id")


class IdRouter(SimpleRouter):
    """A SimpleRouter whose viewsets' lookups are bounded ids unless they set ``lookup_value_regex``."""

    def get_lookup_regex(self, viewset, lookup_prefix=""):
        lookup_field = getattr(viewset, "lookup_field", "pk")
        lookup_url_kwarg = getattr(viewset, "lookup_url_kwarg", None) or lookup_field
        value = getattr(viewset, "lookup_value_regex", ID_PATTERN)
        return f"(?P<{lookup_prefix}{lookup_url_kwarg}>{value})"
