from drf_spectacular.utils import inline_serializer
from rest_framework import serializers
from rest_framework.pagination import PageNumberPagination


class Pagination(PageNumberPagination):
    page_size_query_param = "page_size"
    max_page_size = 500


def paginated_response(request, view, queryset, serializer_class, **serializer_kwargs):
    """A page of ``queryset`` serialised, with the standard next/previous/count envelope."""
    paginator = Pagination()
    page = paginator.paginate_queryset(queryset, request, view=view)
    return paginator.get_paginated_response(serializer_class(page, many=True, **serializer_kwargs).data)


def page_of(serializer_class):
    """The OpenAPI response of ``paginated_response``: the page envelope around the serializer's items."""
    name = serializer_class.__name__.removesuffix("Serializer")
    return inline_serializer(name=f"{name}Page", fields={
        "count": serializers.IntegerField(),
        "next": serializers.URLField(allow_null=True),
        "previous": serializers.URLField(allow_null=True),
        "results": serializer_class(many=True),
    })
