"""Querying the audit trail: managers and auditors, scoped to projects where they hold view_audit."""

from datetime import timedelta

import django_filters
from django import forms
from rest_framework import mixins, serializers, viewsets

from audit.models import AuditEvent
from audit.recorder import AuditedViewMixin
from core.roles import Perm
from core.selectors import projects_visible_to


class AuditEventSerializer(serializers.ModelSerializer):
    class Meta:
        model = AuditEvent
        fields = ["id", "shard", "seq", "occurred_at", "actor_id", "actor_roles", "actor_tier", "action",
                  "object_type", "object_id", "project_id", "study_uid", "protocol_version", "client_ip",
                  "user_agent", "request_id", "outcome", "reason", "extra", "prev_hash", "hash"]
        read_only_fields = fields


class BoundedOffsetDateTimeField(django_filters.fields.IsoDateTimeField):
    """An ISO 8601 date-time whose offset PostgreSQL takes (up to 15:59; Python's go to 23:59, and a
    larger one reached the database as a 500)."""

    def to_python(self, value):
        parsed = super().to_python(value)
        if parsed is not None and parsed.utcoffset() is not None and abs(parsed.utcoffset()) >= timedelta(hours=16):
            raise forms.ValidationError("Time-zone offset must be within -15:59 and +15:59.", code="invalid")
        return parsed


class BoundedOffsetDateTimeFilter(django_filters.IsoDateTimeFilter):
    field_class = BoundedOffsetDateTimeField


class AuditEventFilter(django_filters.FilterSet):
    since = BoundedOffsetDateTimeFilter(field_name="occurred_at", lookup_expr="gte")
    until = BoundedOffsetDateTimeFilter(field_name="occurred_at", lookup_expr="lt")
    project = django_filters.NumberFilter(field_name="project_id")
    user = django_filters.NumberFilter(field_name="actor_id")
    study = django_filters.CharFilter(field_name="study_uid")

    class Meta:
        model = AuditEvent
        fields = ["action", "outcome", "object_type", "object_id", "request_id"]


class AuditEventViewSet(AuditedViewMixin, mixins.ListModelMixin, mixins.RetrieveModelMixin,
                        viewsets.GenericViewSet):
    """Audit events (filter by study, user, project, action, outcome, time): newest first."""

    serializer_class = AuditEventSerializer
    filterset_class = AuditEventFilter
    # Ids a bigint holds (core.url_ids, which audit may not import): a larger one is a 404, not a 500
    lookup_value_regex = "[0-9]{1,18}"
    audit_object_type = "audit.auditevent"
    audit_project_kwarg = "none"

    def get_queryset(self):
        user = self.request.user
        qs = AuditEvent.objects.order_by("-occurred_at", "-id")
        if user.is_superuser:
            return qs
        project_ids = list(projects_visible_to(user, Perm.VIEW_AUDIT).values_list("pk", flat=True))
        return qs.filter(project_id__in=project_ids)

    def audit_target(self):
        return self.request.query_params.get("project"), self.kwargs.get("pk", ""), ""
