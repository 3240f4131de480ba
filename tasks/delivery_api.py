"""Delivery batches over REST: list / create, add tasks, deliver, the batch's concordance report and cost
report, and streamed downloads of its exports.

Managers create and deliver; whoever may see progress (managers, QA, the client) lists batches, reads
their reports and downloads their exports. Nothing here names a reader: reports and manifests use
pseudonyms and tiers, and clients get a report's scorecards per tier only (tasks.selectors).
"""

from django.http import HttpResponse, StreamingHttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema, extend_schema_field
from rest_framework import serializers, status
from rest_framework.response import Response
from rest_framework.views import APIView

from audit.recorder import AuditedViewMixin
from core.api.pagination import page_of, paginated_response
from core.dicom.storage import get_store
from core.errors import Conflict, NotFound
from core.roles import Perm
from core.selectors import get_project_for
from tasks import batches, costs, reports
from tasks.models import Batch
from tasks.selectors import reader_visibility

CONTENT_TYPES = {"json": "application/json", "manifest": "application/json", "csv": "text/csv",
                 "dicom-seg": "application/dicom", "dicom-sr": "application/dicom", "nifti": "application/gzip"}
STREAM_CHUNK = 1 << 20


def _batch(request, project_pk, pk, perm: str) -> Batch:
    project = get_project_for(request.user, project_pk, perm)
    try:
        return Batch.objects.select_related("project").get(project=project, pk=pk)
    except (Batch.DoesNotExist, ValueError, TypeError):
        raise NotFound("No such batch.") from None


class ExportFileSerializer(serializers.Serializer):
    name = serializers.CharField()
    format = serializers.ChoiceField(choices=sorted(CONTENT_TYPES))
    task = serializers.IntegerField(allow_null=True)
    size = serializers.IntegerField()
    sha256 = serializers.CharField()
    url = serializers.SerializerMethodField()

    def get_url(self, entry) -> str:
        batch = self.context["batch"]
        return f"/api/projects/{batch.project_id}/batches/{batch.pk}/exports/{entry['name']}/"


class BatchSerializer(serializers.ModelSerializer):
    tasks = serializers.SerializerMethodField()
    exports = serializers.SerializerMethodField()

    class Meta:
        model = Batch
        fields = ["id", "name", "state", "pricing", "tasks", "created_at", "delivered_at", "export_state",
                  "export_error", "export_started_at", "exports_built_at", "exports", "report_computed_at"]

    def get_tasks(self, batch) -> list[int]:
        return [t.pk for t in batch.tasks.all()]

    @extend_schema_field(ExportFileSerializer(many=True))
    def get_exports(self, batch):
        return ExportFileSerializer(batch.exports, many=True, context={"batch": batch}).data


class BatchCreateSerializer(serializers.Serializer):
    name = serializers.CharField(max_length=200)
    pricing = serializers.JSONField(required=False, help_text="Rates: currency, per_study, per_slice, per_finding, "
                                                              "per_organ (see tasks.costs).")
    tasks = serializers.ListField(child=serializers.IntegerField(), required=False, default=list)


class BatchTasksSerializer(serializers.Serializer):
    tasks = serializers.ListField(child=serializers.IntegerField(), allow_empty=False)


class BatchListView(AuditedViewMixin, APIView):
    """A project's delivery batches (GET: managers, QA, client) and a new batch (POST: managers)."""

    audit_object_type = "tasks.batch"

    def audit_action(self, request):
        return "list" if request.method == "GET" else "create"

    @extend_schema(responses=page_of(BatchSerializer), operation_id="api_projects_batches_list")
    def get(self, request, project_pk):
        project = get_project_for(request.user, project_pk, Perm.VIEW_PROGRESS)
        qs = Batch.objects.filter(project=project).prefetch_related("tasks").order_by("-id")
        return paginated_response(request, self, qs, BatchSerializer)

    @extend_schema(request=BatchCreateSerializer, responses={201: BatchSerializer, 409: OpenApiResponse(
        description="code batch_exists: the project already has a batch of that name.")})
    def post(self, request, project_pk):
        project = get_project_for(request.user, project_pk, Perm.MANAGE)
        data = BatchCreateSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        v = data.validated_data
        batch = batches.create_batch(project, name=v["name"], pricing=v.get("pricing"), task_ids=v["tasks"],
                                     by=request.user)
        return Response(BatchSerializer(batch).data, status=status.HTTP_201_CREATED)


class BatchDetailView(AuditedViewMixin, APIView):
    """One delivery batch: its state, tasks and pricing (managers, QA, client)."""

    audit_object_type = "tasks.batch"

    def audit_action(self, request):
        return "view"

    @extend_schema(responses=BatchSerializer)
    def get(self, request, project_pk, pk):
        return Response(BatchSerializer(_batch(request, project_pk, pk, Perm.VIEW_PROGRESS)).data)


class BatchTasksView(AuditedViewMixin, APIView):
    """Add consensus tasks of the project to an open batch (all or nothing)."""

    audit_object_type = "tasks.batch"

    def audit_action(self, request):
        return "update"

    @extend_schema(request=BatchTasksSerializer, responses={200: BatchSerializer})
    def post(self, request, project_pk, pk):
        batch = _batch(request, project_pk, pk, Perm.MANAGE)
        data = BatchTasksSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        batch = batches.add_tasks(batch, data.validated_data["tasks"], by=request.user)
        return Response(BatchSerializer(batch).data)


class BatchDeliverView(AuditedViewMixin, APIView):
    """Deliver the batch: its tasks become delivered; the report and exports are built in the background."""

    audit_object_type = "tasks.batch"

    def audit_action(self, request):
        return "update"

    @extend_schema(request=None, responses={200: BatchSerializer})
    def post(self, request, project_pk, pk):
        batch = batches.deliver_batch(_batch(request, project_pk, pk, Perm.MANAGE), by=request.user)
        batch.refresh_from_db()  # an eager export job has run by now
        return Response(BatchSerializer(batch).data)


class BatchReportView(AuditedViewMixin, APIView):
    """The batch's stored concordance report (JSON, or CSV with ?output=csv); POST recomputes it (managers).
    Scorecards per reader (pseudonymous) for managers and QA, per tier only for clients."""

    audit_object_type = "tasks.report"

    def audit_action(self, request):
        if request.method != "GET":
            return "update"
        return "export" if request.query_params.get("output") == "csv" else "view"

    @extend_schema(parameters=[OpenApiParameter("output", str, enum=["json", "csv"])],
                   responses={200: OpenApiResponse(OpenApiTypes.OBJECT, description="The report (or text/csv)."),
                              409: OpenApiResponse(description="Not computed yet.")})
    def get(self, request, project_pk, pk):
        batch = _batch(request, project_pk, pk, Perm.VIEW_PROGRESS)
        if batch.report is None:
            raise Conflict("This batch's report has not been computed yet; it is computed on delivery, or on "
                           "demand by a manager.", code="report_not_ready")
        if request.query_params.get("output") == "csv":
            response = HttpResponse(reports.report_csv(batch.report), content_type="text/csv")
            response["Content-Disposition"] = f'attachment; filename="concordance-batch-{batch.pk}.csv"'
            return response
        report = reports.as_seen_by(batch.report, reader_visibility(request.user, batch.project))
        return Response(report | {"computed_at": batch.report_computed_at})

    @extend_schema(request=None, responses={202: OpenApiResponse(description="The report job is queued.")})
    def post(self, request, project_pk, pk):
        batch = batches.request_report(_batch(request, project_pk, pk, Perm.MANAGE), by=request.user)
        return Response({"batch": batch.pk, "queued": True}, status=status.HTTP_202_ACCEPTED)


class BatchCostView(AuditedViewMixin, APIView):
    """Billable units per the batch's pricing, and reader time by tier."""

    audit_object_type = "tasks.batch"

    def audit_action(self, request):
        return "view"

    @extend_schema(responses={200: OpenApiResponse(OpenApiTypes.OBJECT, description="The cost report.")})
    def get(self, request, project_pk, pk):
        return Response(costs.cost_report(_batch(request, project_pk, pk, Perm.VIEW_PROGRESS)))


class BatchExportsView(AuditedViewMixin, APIView):
    """Rebuild a delivered batch's report and exports in the background (managers): after a failure, or
    over a build that did not finish within BATCH_BUILD_TIMEOUT seconds (marked failed first)."""

    audit_object_type = "tasks.batch"

    def audit_action(self, request):
        return "export"

    @extend_schema(request=None, responses={
        202: BatchSerializer,
        409: OpenApiResponse(description="Not delivered yet (`batch_open`), or a build is running and has not "
                                         "reached the timeout (`exports_building`).")})
    def post(self, request, project_pk, pk):
        batch = batches.request_exports(_batch(request, project_pk, pk, Perm.MANAGE), by=request.user)
        batch.refresh_from_db()
        return Response(BatchSerializer(batch).data, status=status.HTTP_202_ACCEPTED)


class BatchExportDownloadView(AuditedViewMixin, APIView):
    """One export file of a delivered batch, streamed from the encrypted store."""

    audit_object_type = "tasks.batch"

    def audit_action(self, request):
        return "export"

    @extend_schema(responses={200: OpenApiResponse(OpenApiTypes.BINARY, description="The file.")})
    def get(self, request, project_pk, pk, name):
        batch = _batch(request, project_pk, pk, Perm.VIEW_PROGRESS)
        entry = next((e for e in batch.exports if e["name"] == name), None)
        if batch.export_state != Batch.ExportState.READY or entry is None:
            raise NotFound("No such export file (exports are built when the batch is delivered).")
        reader = get_store().open(entry["object"])

        def chunks():
            with reader:
                while data := reader.read(STREAM_CHUNK):
                    yield data

        response = StreamingHttpResponse(chunks(), content_type=CONTENT_TYPES.get(entry["format"],
                                                                                  "application/octet-stream"))
        response["Content-Length"] = str(entry["size"])
        response["Content-Disposition"] = f'attachment; filename="{entry["name"]}"'
        response["X-Content-SHA256"] = entry["sha256"]
        return response
