"""The reading queue over REST: claim, heartbeat, release, draft, submit; managers' queue views."""

import django_filters
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema, extend_schema_view
from rest_framework import mixins, serializers, status, viewsets
from rest_framework.response import Response
from rest_framework.views import APIView

from audit.recorder import AuditedViewMixin
from core.api.serializers import LabelEntrySerializer
from core.errors import NotFound
from core.models import User
from core.roles import Perm
from core.selectors import get_project_for
from tasks import creation, queue, selectors
from tasks.models import Read, Task
from tasks.states import ReadState, TaskState


def _dicomweb(request, task: Task) -> dict:
    root = request.build_absolute_uri("/dicomweb")
    study_url = f"{root}/studies/{task.study.study_uid}"
    series = [task.series] if task.series else list(task.study.series.all())
    return {"root": root, "study": study_url,
            "series": [{"series_uid": s.series_uid, "modality": s.modality, "mr_sequence": s.mr_sequence,
                        "url": f"{study_url}/series/{s.series_uid}"} for s in series]}


class ProtocolSchemaSerializer(serializers.Serializer):
    number = serializers.IntegerField()
    name = serializers.CharField()
    rules = serializers.DictField()
    entries = LabelEntrySerializer(many=True)


class ClaimSerializer(serializers.Serializer):
    """What a reader gets: the work, never its kind (gold looks like production), priority or other reads."""

    read = serializers.IntegerField(source="read.pk")
    task = serializers.IntegerField(source="task.pk")
    project = serializers.IntegerField(source="task.project_id")
    lease_expires_at = serializers.DateTimeField(source="read.lease_expires_at")
    protocol_version = serializers.SerializerMethodField()
    study_uid = serializers.CharField(source="task.study.study_uid")
    series_uid = serializers.SerializerMethodField()
    dicomweb = serializers.SerializerMethodField()

    def get_protocol_version(self, claim) -> ProtocolSchemaSerializer:
        version = claim.task.protocol_version
        return ProtocolSchemaSerializer({"number": version.number, "name": version.name, "rules": version.rules,
                                         "entries": version.entries.all()}).data

    def get_series_uid(self, claim) -> str | None:
        return claim.task.series.series_uid if claim.task.series else None

    def get_dicomweb(self, claim) -> dict:
        return _dicomweb(self.context["request"], claim.task)


class ReadSerializer(serializers.ModelSerializer):
    study_uid = serializers.CharField(source="task.study.study_uid", read_only=True)
    series_uid = serializers.SerializerMethodField()
    claim_to_submit_seconds = serializers.FloatField(read_only=True)

    class Meta:
        model = Read
        fields = ["id", "task", "project", "state", "study_uid", "series_uid", "claimed_at", "lease_expires_at",
                  "submitted_at", "ended_at", "active_seconds", "claim_to_submit_seconds", "findings_count",
                  "slices_touched", "draft", "findings"]
        read_only_fields = fields

    def get_series_uid(self, read) -> str | None:
        return read.task.series.series_uid if read.task.series_id else None


class ManagedReadSerializer(ReadSerializer):
    """A read with who holds it: for managers and QA (tasks.selectors decides who gets which reads)."""

    reader = serializers.CharField(source="reader.username", read_only=True)
    reader_pseudonym = serializers.CharField(source="reader.pseudonym", read_only=True)
    tier = serializers.CharField(source="get_tier_display", read_only=True)

    class Meta(ReadSerializer.Meta):
        fields = [*ReadSerializer.Meta.fields, "reader", "reader_pseudonym", "tier"]
        read_only_fields = fields


class ClaimRequestSerializer(serializers.Serializer):
    project = serializers.IntegerField(required=False, help_text="Claim only from this project.")


class SubmitSerializer(serializers.Serializer):
    findings = serializers.JSONField(help_text="A list of findings (see the annotation payload documentation).")


class DraftSerializer(serializers.Serializer):
    draft = serializers.JSONField()


class QueueNextView(AuditedViewMixin, APIView):
    """Claim the next read you may take: 200 with the work and its lease, 204 when there is none."""

    audit_object_type = "tasks.read"

    def audit_action(self, request):
        return "claim"

    def audit_target(self):
        return self.request.data.get("project") if isinstance(self.request.data, dict) else None, "", ""

    @extend_schema(request=ClaimRequestSerializer, responses={200: ClaimSerializer,
                                                               204: OpenApiResponse(description="Nothing to claim.")})
    def post(self, request):
        data = ClaimRequestSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        claim = queue.claim_next_read(request.user, project_id=data.validated_data.get("project"))
        if claim is None:
            return Response(status=status.HTTP_204_NO_CONTENT)
        return Response(ClaimSerializer(claim, context={"request": request}).data)


class ReadFilter(django_filters.FilterSet):
    class Meta:
        model = Read
        fields = ["state", "project", "task"]


@extend_schema_view(list=extend_schema(operation_id="api_reads_list"),
                    retrieve=extend_schema(operation_id="api_reads_retrieve"))
class ReadViewSet(AuditedViewMixin, mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    """Your reads (managers and QA also see their projects' reads); and what you do with a held one."""

    filterset_class = ReadFilter
    audit_object_type = "tasks.read"
    queryset = Read.objects.none()

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):
            return Read.objects.none()
        return selectors.reads_visible_to(self.request.user).select_related(
            "task__study", "task__series", "reader").order_by("-id")

    def get_serializer_class(self):
        # Readers (who see only their own reads) get no identities; managers and QA do.
        user = self.request.user
        if getattr(self, "swagger_fake_view", False) or user.is_superuser or Read.objects.filter(pk__in=self.get_queryset().values("pk")).exclude(
                reader=user).exists():
            return ManagedReadSerializer
        return ReadSerializer

    def audit_target(self):
        return None, self.kwargs.get("pk", ""), ""

    @extend_schema(request=None, responses={200: ReadSerializer, 409: OpenApiResponse(description="Lease lost")})
    def heartbeat(self, request, pk=None):
        return Response(ReadSerializer(queue.heartbeat_read(pk, request.user)).data)

    @extend_schema(request=None, responses={200: ReadSerializer})
    def release(self, request, pk=None):
        return Response(ReadSerializer(queue.release_read(pk, request.user)).data)

    @extend_schema(request=DraftSerializer, responses={200: ReadSerializer})
    def draft(self, request, pk=None):
        data = DraftSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        return Response(ReadSerializer(queue.save_draft(pk, request.user, data.validated_data["draft"])).data)

    @extend_schema(request=SubmitSerializer,
                   parameters=[OpenApiParameter("Idempotency-Key", str, OpenApiParameter.HEADER,
                                                description="A retry with the same key returns the first result.")],
                   responses={200: ReadSerializer, 400: OpenApiResponse(description="Findings invalid (field paths)"),
                              409: OpenApiResponse(description="Lease lost or already submitted")})
    def submit(self, request, pk=None):
        data = SubmitSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        key = request.headers.get("Idempotency-Key", "")
        read, _ = queue.submit_read(pk, request.user, data.validated_data["findings"], idempotency_key=key)
        return Response(ReadSerializer(read).data)


# --- managers' queue views -------------------------------------------------------------------

class TaskSerializer(serializers.ModelSerializer):
    study_uid = serializers.CharField(source="study.study_uid", read_only=True)
    series_uid = serializers.SerializerMethodField()
    protocol_version = serializers.IntegerField(source="protocol_version.number", read_only=True)

    class Meta:
        model = Task
        fields = ["id", "project", "kind", "state", "flag_reason", "study_uid", "series_uid", "protocol_version",
                  "reads_required", "reads_submitted", "first_read_tier", "first_read_subspecialty",
                  "adjudication_tier", "adjudication_subspecialty", "priority", "client_priority", "created_at",
                  "completed_at"]
        read_only_fields = fields

    def get_series_uid(self, task) -> str | None:
        return task.series.series_uid if task.series_id else None


class TaskDetailSerializer(TaskSerializer):
    reads = ManagedReadSerializer(many=True, read_only=True)

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
        return selectors.tasks_for_managers(self.request.user, project).order_by("id")

    @extend_schema(responses=TaskDetailSerializer)
    def retrieve(self, request, project_pk=None, pk=None):
        task = self.get_queryset().prefetch_related("reads__reader").filter(pk=pk).first()
        if task is None:
            raise NotFound("No such task.")
        return Response(TaskDetailSerializer(task).data)

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
        return Response(TaskSerializer(queue.cancel_task(pk, by=request.user, project=project)).data)


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
        read = queue.reassign_read(pk, data.validated_data["reader"], by=request.user)
        return Response(ManagedReadSerializer(read).data)
