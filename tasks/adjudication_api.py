"""Adjudication over REST: the next adjudication, the side-by-side view, resolve, release, a
project's list."""



from django.db.models import Q
from drf_spectacular.utils import (
    OpenApiParameter,
    OpenApiResponse,
    extend_schema,
)
from rest_framework import serializers, status, viewsets
from rest_framework.response import Response
from rest_framework.views import APIView

from audit.recorder import AuditedViewMixin
from core.api.pagination import page_of, paginated_response
from core.errors import NotFound
from core.roles import Perm
from core.selectors import get_project_for, projects_visible_to
from tasks import adjudication as adjudication_service
from tasks.api import (
    ProtocolSchemaSerializer,
    dicomweb_block,
    protocol_schema,
)
from tasks.learning_seam import learning
from tasks.models import Adjudication, Read
from tasks.states import ReadState

# --- adjudication ------------------------------------------------------------------------------

class SideBySideReadSerializer(serializers.ModelSerializer):
    """A read as the adjudicator sees it: unblinded, with a pseudonymous reader and their tier."""

    reader = serializers.CharField(source="reader.pseudonym")
    tier = serializers.CharField(source="get_tier_display")

    class Meta:
        model = Read
        fields = ["id", "reader", "tier", "submitted_at", "findings"]
        read_only_fields = fields


class AdjudicationSerializer(serializers.ModelSerializer):
    task = serializers.IntegerField(source="task.pk", read_only=True)
    study_uid = serializers.CharField(source="task.study.study_uid", read_only=True)
    reads = serializers.SerializerMethodField()
    protocol_version = serializers.SerializerMethodField()
    dicomweb = serializers.SerializerMethodField()
    model_output = serializers.SerializerMethodField()

    class Meta:
        model = Adjudication
        fields = ["id", "task", "project", "state", "study_uid", "tier", "subspecialty", "agreement", "reads",
                  "protocol_version", "dicomweb", "model_output", "lease_expires_at", "resolution", "rationale",
                  "resolved_at"]
        read_only_fields = fields

    def get_reads(self, adjudication) -> SideBySideReadSerializer(many=True):
        reads = adjudication.task.reads.filter(state=ReadState.SUBMITTED).select_related("reader").order_by("id")
        return SideBySideReadSerializer(reads, many=True).data

    def get_protocol_version(self, adjudication) -> ProtocolSchemaSerializer:
        return protocol_schema(adjudication.task.protocol_version)

    def get_dicomweb(self, adjudication) -> dict:
        return dicomweb_block(self.context["request"], adjudication.task,
                              root_path=f"/dicomweb/adjudications/{adjudication.pk}")

    def get_model_output(self, adjudication) -> dict | None:
        """The current model's output for the task; null when the project is blind-to-model."""
        return learning().model_output_for_adjudicator(adjudication.task)


class ResolveSerializer(serializers.Serializer):
    resolution = serializers.ChoiceField(["read", "edit", "new"])
    read = serializers.IntegerField(required=False, help_text="The chosen read (resolution = read).")
    findings = serializers.JSONField(required=False, help_text="The answer (resolution = edit or new).")
    rationale = serializers.CharField(max_length=5000, allow_blank=True)

    def validate(self, attrs):
        if attrs["resolution"] == "read" and "read" not in attrs:
            raise serializers.ValidationError({"read": ["Name the read you choose."]})
        if attrs["resolution"] != "read" and "findings" not in attrs:
            raise serializers.ValidationError({"findings": ["Give the findings."]})
        return attrs


class AdjudicationNextView(AuditedViewMixin, APIView):
    """Claim the most urgent adjudication you are eligible for (200), or 204 when there is none."""

    audit_object_type = "tasks.adjudication"

    def audit_action(self, request):
        return "claim"

    @extend_schema(request=None, responses={200: AdjudicationSerializer, 204: OpenApiResponse(description="None.")})
    def post(self, request):
        adjudication = adjudication_service.claim_next_adjudication(request.user)
        if adjudication is None:
            return Response(status=status.HTTP_204_NO_CONTENT)
        return Response(AdjudicationSerializer(adjudication, context={"request": request}).data)


class AdjudicationViewSet(AuditedViewMixin, viewsets.GenericViewSet):
    """Your claimed adjudications (managers see their projects'), and resolving them."""

    audit_object_type = "tasks.adjudication"
    queryset = Adjudication.objects.none()
    serializer_class = AdjudicationSerializer

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):
            return Adjudication.objects.none()
        user = self.request.user
        managed = projects_visible_to(user, Perm.MANAGE).values("pk")
        member_of = projects_visible_to(user).values("pk")
        return Adjudication.objects.filter(Q(adjudicator=user, project_id__in=member_of)
                                           | Q(project_id__in=managed)).select_related(
            "task__study", "task__series", "task__protocol_version")

    def audit_target(self):
        return None, self.kwargs.get("pk", ""), ""

    def retrieve(self, request, pk=None):
        adjudication = self.get_queryset().filter(pk=pk).first()
        if adjudication is None:
            raise NotFound("No such adjudication.")
        return Response(AdjudicationSerializer(adjudication, context={"request": request}).data)

    @extend_schema(request=ResolveSerializer, responses={200: AdjudicationSerializer})
    def resolve(self, request, pk=None):
        data = ResolveSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        v = data.validated_data
        adjudication = adjudication_service.resolve_adjudication(
            pk, request.user, resolution=v["resolution"], rationale=v["rationale"], read_id=v.get("read"),
            findings=v.get("findings"))
        return Response(AdjudicationSerializer(adjudication, context={"request": request}).data)

    @extend_schema(request=None, responses={200: AdjudicationSerializer})
    def release(self, request, pk=None):
        adjudication = adjudication_service.release_adjudication(pk, request.user)
        return Response(AdjudicationSerializer(adjudication, context={"request": request}).data)


class ProjectAdjudicationListView(AuditedViewMixin, APIView):
    """A project's adjudications by state (managers and QA)."""

    audit_object_type = "tasks.adjudication"

    @extend_schema(parameters=[OpenApiParameter("state", str, enum=Adjudication.State.values)],
                   responses=page_of(AdjudicationSerializer), operation_id="api_projects_adjudications_list")
    def get(self, request, project_pk):
        project = get_project_for(request.user, project_pk, Perm.VIEW_READS)
        qs = Adjudication.objects.filter(project=project).select_related("task__study", "task__protocol_version")
        if state := request.query_params.get("state"):
            qs = qs.filter(state=state)
        return paginated_response(request, self, qs.order_by("id"), AdjudicationSerializer,
                                  context={"request": request})
