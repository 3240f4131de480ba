"""Managers' views of the queue over REST: tasks (list, create, cancel), reassigning a read, gold
references, the workforce and the concordance report."""


from datetime import timedelta

import django_filters
from django.db.models import Prefetch
from django.http import HttpResponse
from django.utils.dateparse import parse_datetime
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import (
    OpenApiParameter,
    OpenApiResponse,
    PolymorphicProxySerializer,
    extend_schema,
    extend_schema_field,
)
from rest_framework import mixins, serializers, status, viewsets
from rest_framework.response import Response
from rest_framework.views import APIView

from audit.recorder import AuditedViewMixin
from core.errors import DomainError, Forbidden, NotFound
from core.models import User
from core.roles import READER_ROLE_TIERS, Perm
from core.selectors import get_project_for
from tasks import creation, gold, reads, reports, selectors
from tasks.api import (
    ManagedReadSerializer,
)
from tasks.models import Read, Task
from tasks.progress import workforce_by_tier
from tasks.states import ReadState, TaskState

# --- managers' queue views -------------------------------------------------------------------

class TaskSerializer(serializers.ModelSerializer):
    study_uid = serializers.CharField(source="study.study_uid", read_only=True)
    series_uid = serializers.SerializerMethodField()
    protocol_version = serializers.IntegerField(source="protocol_version.number", read_only=True)
    panel_set_by_policy = serializers.SerializerMethodField(help_text=(
        "True when the protocol's panel policy (rules.panel_policy, tasks.panels) set reads_required or "
        "first_read_tier from the model's uncertainty; panel_decision says why."))
    panel_decision = serializers.JSONField(read_only=True, help_text=(
        "null, or {reason, action, uncertainty, threshold, base_reads_required, base_first_read_tier}."))

    class Meta:
        model = Task
        fields = ["id", "project", "kind", "state", "flag_reason", "study_uid", "series_uid", "protocol_version",
                  "reads_required", "reads_submitted", "first_read_tier", "first_read_subspecialty",
                  "adjudication_tier", "adjudication_subspecialty", "priority", "client_priority", "created_at",
                  "completed_at", "panel_set_by_policy", "panel_decision"]
        read_only_fields = fields

    @extend_schema_field(OpenApiTypes.BOOL)
    def get_panel_set_by_policy(self, task) -> bool:
        return task.panel_decision is not None

    def get_series_uid(self, task) -> str | None:
        return task.series.series_uid if task.series_id else None


class TaskDetailSerializer(TaskSerializer):
    reads = ManagedReadSerializer(many=True, read_only=True, help_text=(
        "The reads you may see (tasks.selectors.reader_visibility): managers every read, open ones with "
        "drafts; QA submitted reads only, by pseudonym."))

    class Meta(TaskSerializer.Meta):
        fields = [*TaskSerializer.Meta.fields, "reads"]
        read_only_fields = fields


class TaskFilter(django_filters.FilterSet):
    modality = django_filters.CharFilter(method="filter_modality")
    study = django_filters.CharFilter(field_name="study__study_uid")
    holder = django_filters.NumberFilter(method="filter_holder", help_text="Tasks with an open read by this user.")

    class Meta:
        model = Task
        fields = ["state", "kind"]

    def filter_modality(self, queryset, name, value):
        return queryset.filter(study__modalities__icontains=f'"{value.upper()}"')

    def filter_holder(self, queryset, name, value):
        return queryset.filter(reads__reader_id=value, reads__state=ReadState.CLAIMED)


class CreateTasksSerializer(serializers.Serializer):
    kind = serializers.ChoiceField(Task.Kind.choices, default=Task.Kind.PRODUCTION)
    studies = serializers.ListField(child=serializers.IntegerField(), required=False,
                                    help_text="Study ids (default: every study of the project).")


class CreateTasksResponseSerializer(serializers.Serializer):
    created = serializers.IntegerField()
    queued = serializers.IntegerField()
    flagged = serializers.IntegerField()


class ReassignSerializer(serializers.Serializer):
    reader = serializers.PrimaryKeyRelatedField(queryset=User.objects.filter(is_active=True))


class ProjectTaskViewSet(AuditedViewMixin, mixins.ListModelMixin, viewsets.GenericViewSet):
    """A project's tasks by state, with who holds which read (managers and QA)."""

    serializer_class = TaskSerializer
    filterset_class = TaskFilter
    audit_object_type = "tasks.task"
    queryset = Task.objects.none()

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):
            return Task.objects.none()
        project = get_project_for(self.request.user, self.kwargs["project_pk"], Perm.VIEW_READS)
        self.visibility = selectors.reader_visibility(self.request.user, project)
        if "holder" in self.request.query_params and not self.visibility.others_open_reads:
            # Who holds open work is for those who see open reads (managers), not QA.
            raise Forbidden("Only managers see who holds open reads.")
        return selectors.tasks_for_managers(self.request.user, project).order_by("id")

    @extend_schema(responses=TaskDetailSerializer)
    def retrieve(self, request, project_pk=None, pk=None):
        tasks = self.get_queryset()
        reads = Read.objects.filter(self.visibility.reads()).select_related("reader").order_by("id")
        task = tasks.prefetch_related(Prefetch("reads", queryset=reads)).filter(pk=pk).first()
        if task is None:
            raise NotFound("No such task.")
        visibility = self.visibility
        return Response(TaskDetailSerializer(task, context={"reader_visibility": lambda _: visibility}).data)

    @extend_schema(request=CreateTasksSerializer, responses={201: CreateTasksResponseSerializer})
    def create_tasks(self, request, project_pk=None):
        project = get_project_for(request.user, project_pk, Perm.MANAGE)
        data = CreateTasksSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        studies = None
        if "studies" in data.validated_data:
            studies = project.studies.filter(pk__in=data.validated_data["studies"])
            if studies.count() != len(set(data.validated_data["studies"])):
                raise NotFound("Some of those studies are not in this project.")
        tasks = creation.create_tasks(project, by=request.user, studies=studies, kind=data.validated_data["kind"])
        flagged = sum(1 for t in tasks if t.state == TaskState.FLAGGED)
        return Response({"created": len(tasks), "queued": len(tasks) - flagged, "flagged": flagged},
                        status=status.HTTP_201_CREATED)

    @extend_schema(request=None, responses={200: TaskSerializer})
    def cancel(self, request, project_pk=None, pk=None):
        project = get_project_for(request.user, project_pk, Perm.MANAGE)
        return Response(TaskSerializer(reads.cancel_task(pk, by=request.user, project=project)).data)


class ReassignReadView(AuditedViewMixin, APIView):
    """Move a claimed read to another eligible reader (managers)."""

    audit_object_type = "tasks.read"

    @extend_schema(request=ReassignSerializer, responses={200: ManagedReadSerializer})
    def post(self, request, project_pk, pk):
        project = get_project_for(request.user, project_pk, Perm.MANAGE)
        if not Read.objects.filter(pk=pk, project=project).exists():
            raise NotFound("No such read.")
        data = ReassignSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        read = reads.reassign_read(pk, data.validated_data["reader"], by=request.user)
        visibility = selectors.reader_visibility(request.user, project)
        return Response(ManagedReadSerializer(read, context={"reader_visibility": lambda _: visibility}).data)


# --- gold references and the workforce --------------------------------------------------------

class ReferenceSerializer(serializers.Serializer):
    findings = serializers.JSONField(help_text="The reference findings (validated like a read).")


class ReferenceView(AuditedViewMixin, APIView):
    """Import the reference of a gold or calibration task (managers)."""

    audit_object_type = "tasks.consensus"

    @extend_schema(request=ReferenceSerializer, responses={201: OpenApiResponse(description="Reference stored.")})
    def post(self, request, project_pk, pk):
        project = get_project_for(request.user, project_pk, Perm.MANAGE)
        task = Task.objects.filter(project=project, pk=pk).first()
        if task is None:
            raise NotFound("No such task.")
        data = ReferenceSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        consensus = gold.import_reference(task, data.validated_data["findings"], by=request.user)
        return Response({"task": task.pk, "consensus": consensus.pk, "method": consensus.method},
                        status=status.HTTP_201_CREATED)


class WorkforceMemberSerializer(serializers.Serializer):
    """One reader's row: for managers (by username) and QA (by pseudonym)."""

    reader = serializers.CharField(help_text="Username for managers; the pseudonym for QA.")
    role = serializers.CharField()
    tier = serializers.CharField(allow_null=True)
    subspecialties = serializers.ListField(child=serializers.CharField())
    calibrated = serializers.BooleanField()
    suspended = serializers.BooleanField()
    suspension_reason = serializers.CharField()
    gold_checks = serializers.IntegerField()
    rolling_gold_score = serializers.FloatField(allow_null=True)


class WorkforceTierSerializer(serializers.Serializer):
    """One reader tier's aggregates: what clients get instead of rows per reader."""

    tier = serializers.CharField()
    readers = serializers.IntegerField()
    calibrated = serializers.IntegerField(help_text="Readers of the tier who are calibrated.")
    suspended = serializers.IntegerField()
    gold_checked = serializers.IntegerField(help_text="Readers of the tier with a rolling gold score.")
    mean_rolling_gold_score = serializers.FloatField(allow_null=True)


class WorkforceView(AuditedViewMixin, APIView):
    """Calibration and gold status of the project's readers: a row per reader for managers (by
    username) and QA (by pseudonym); for clients a row per tier, aggregates only."""

    audit_object_type = "core.membership"

    @extend_schema(responses=PolymorphicProxySerializer(
        component_name="WorkforceRow", serializers=[WorkforceMemberSerializer, WorkforceTierSerializer],
        resource_type_field_name=None, many=True))
    def get(self, request, project_pk):
        project = get_project_for(request.user, project_pk, Perm.VIEW_PROGRESS)
        visibility = selectors.reader_visibility(request.user, project)
        if not visibility.per_reader:
            return Response(WorkforceTierSerializer(workforce_by_tier(project), many=True).data)
        rows = []
        memberships = (project.memberships.filter(is_active=True, role__in=list(READER_ROLE_TIERS))
                       .select_related("user").order_by("user__username", "role"))
        for m in memberships:
            score, count = gold.rolling_gold_score(m.user_id, project.pk, project.gold_window)
            rows.append({"reader": visibility.name_of(m.user), "role": m.role,
                         "tier": m.tier.label if m.tier else None, "subspecialties": m.subspecialties,
                         "calibrated": m.calibrated_at is not None or not project.requires_calibration,
                         "suspended": m.is_suspended, "suspension_reason": m.suspension_reason,
                         "gold_checks": count, "rolling_gold_score": round(score, 4) if score is not None else None})
        return Response(WorkforceMemberSerializer(rows, many=True).data)


class ConcordanceRowSerializer(serializers.Serializer):
    modality = serializers.CharField()
    finding_class = serializers.CharField(help_text="The label (protocol entry key).")
    kind = serializers.CharField(help_text="The label's kind: classification, ordinal, mask, bbox, ...")
    comparison = serializers.ChoiceField(["reader_vs_reader", "reader_vs_consensus", "model_vs_consensus"])
    metric = serializers.ChoiceField(["kappa", "weighted_kappa", "dice", "agreement_rate"], help_text=(
        "kappa: Cohen's kappa, unweighted (classification; the model's classes). weighted_kappa: Cohen's kappa "
        "with quadratic weights, (i - j)^2 between the positions i and j of the ordered categories, as "
        "scikit-learn's cohen_kappa_score(weights='quadratic') (ordinal grades). dice: mean Dice (masks). "
        "agreement_rate: the share of pairs that agree under the protocol's agreement rules (boxes, polygons, "
        "landmarks, measurements). A label a read did not use counts as the category \"(absent)\" for kappa and "
        "as disagreement elsewhere."))
    n = serializers.IntegerField(help_text="Pairs compared.")
    value = serializers.FloatField(allow_null=True, help_text="null where the metric is undefined for the data "
                                                              "(e.g. kappa when both readers used one category).")
    ci95 = serializers.ListField(child=serializers.FloatField(allow_null=True), min_length=2, max_length=2,
                                 help_text="Bootstrap 95% interval [low, high]; null ends where undefined.")
    model_version = serializers.IntegerField(required=False, help_text="model_vs_consensus rows only.")


class ScorecardSerializer(serializers.Serializer):
    reader = serializers.CharField(help_text="Username (managers) or pseudonym (QA).")
    reads = serializers.IntegerField()
    agreement_with_consensus = serializers.FloatField(allow_null=True)
    mean_active_minutes = serializers.FloatField()


class TierScorecardSerializer(serializers.Serializer):
    tier = serializers.CharField()
    readers = serializers.IntegerField()
    reads = serializers.IntegerField()
    agreement_with_consensus = serializers.FloatField(allow_null=True)
    mean_active_minutes = serializers.FloatField()


class ConcordanceReportSerializer(serializers.Serializer):
    project = serializers.IntegerField()
    batch = serializers.IntegerField(allow_null=True)
    since = serializers.CharField(allow_null=True)
    until = serializers.CharField(allow_null=True)
    tasks = serializers.IntegerField(help_text="Tasks that reached consensus in [since, until).")
    rows = ConcordanceRowSerializer(many=True)
    scorecards = ScorecardSerializer(many=True, required=False, help_text=(
        "Per reader: managers and QA only (absent for clients)."))
    scorecards_by_tier = TierScorecardSerializer(many=True)
    model_version = serializers.IntegerField(allow_null=True)


class ConcordanceView(AuditedViewMixin, APIView):
    """Concordance per modality x finding class (JSON, or CSV with ?output=csv); scorecards per reader
    for managers (by username) and QA (by pseudonym), per tier only for clients."""

    audit_object_type = "tasks.report"

    def audit_action(self, request):
        return "export" if request.query_params.get("output") == "csv" else "view"

    @extend_schema(parameters=[OpenApiParameter("since", OpenApiTypes.DATETIME),
                               OpenApiParameter("until", OpenApiTypes.DATETIME),
                               OpenApiParameter("output", str, enum=["json", "csv"])],
                   responses={(200, "application/json"): OpenApiResponse(ConcordanceReportSerializer, description=(
                       "The report over the tasks that reached consensus in [since, until); with output=csv "
                       "its rows as text/csv (modality, finding_class, kind, comparison, metric, n, value, "
                       "ci95_low, ci95_high).")),
                              (200, "text/csv"): OpenApiTypes.STR})
    def get(self, request, project_pk):
        project = get_project_for(request.user, project_pk, Perm.VIEW_PROGRESS)
        bounds = {}
        for name in ("since", "until"):
            if value := request.query_params.get(name):
                try:
                    parsed = parse_datetime(value)
                except ValueError:  # well-formed, but no such date, time or offset (+25:00)
                    parsed = None
                if parsed is None:
                    raise DomainError(f"{name} must be an ISO 8601 date-time.", errors={name: ["Not a date-time."]})
                # PostgreSQL takes offsets up to 15:59 only (Python up to 23:59): a larger one was a 500
                if parsed.utcoffset() is not None and abs(parsed.utcoffset()) >= timedelta(hours=16):
                    raise DomainError(f"{name}'s time-zone offset must be within -15:59 and +15:59.",
                                      errors={name: ["Time-zone offset out of range."]})
                bounds[name] = parsed
        visibility = selectors.reader_visibility(request.user, project)
        report = reports.concordance_report(project, named=visibility.naming == selectors.Naming.USERNAME, **bounds)
        report = reports.as_seen_by(report, visibility)
        if request.query_params.get("output") == "csv":
            response = HttpResponse(reports.report_csv(report), content_type="text/csv")
            response["Content-Disposition"] = f'attachment; filename="concordance-project-{project.pk}.csv"'
            return response
        return Response(report)
