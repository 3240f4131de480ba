"""The reading queue over REST: claim, heartbeat, release, draft, submit; managers' queue views."""

from datetime import timedelta
from functools import lru_cache

import django_filters
from django.db.models import Prefetch, Q
from django.http import HttpResponse
from django.utils.dateparse import parse_datetime
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import (
    OpenApiParameter,
    OpenApiResponse,
    PolymorphicProxySerializer,
    extend_schema,
    extend_schema_field,
    extend_schema_view,
)
from rest_framework import exceptions, mixins, serializers, status, viewsets
from rest_framework.response import Response
from rest_framework.views import APIView

from audit.recorder import AuditedViewMixin
from core import idempotency
from core.api.pagination import page_of, paginated_response
from core.api.serializers import LabelEntrySerializer, RulesField
from core.errors import DomainError, Forbidden, NotFound, error_body
from core.models import ProtocolVersion, User
from core.roles import READER_ROLE_TIERS, Perm
from core.selectors import get_project_for, projects_visible_to
from tasks import adjudication as adjudication_service
from tasks import api_schema, creation, gold, queue, reads, reports, selectors
from tasks.learning_seam import learning
from tasks.models import Adjudication, Read, Task
from tasks.progress import workforce_by_tier
from tasks.states import ReadState, TaskState


def _dicomweb(request, task: Task, study_series: list | None = None) -> dict:
    root = request.build_absolute_uri("/dicomweb")
    study_url = f"{root}/studies/{task.study.study_uid}"
    if task.series:
        series = [task.series]
    else:
        series = study_series if study_series is not None else list(task.study.series.all())
    return {"root": root, "study": study_url,
            "series": [{"series_uid": s.series_uid, "modality": s.modality, "mr_sequence": s.mr_sequence,
                        "url": f"{study_url}/series/{s.series_uid}"} for s in series]}


class ProtocolSchemaSerializer(serializers.Serializer):
    number = serializers.IntegerField()
    name = serializers.CharField()
    rules = RulesField()
    entries = LabelEntrySerializer(many=True)


@lru_cache(maxsize=256)
def _schema_of_locked_version(version_id: int) -> dict:
    version = ProtocolVersion.objects.get(pk=version_id)
    return ProtocolSchemaSerializer({"number": version.number, "name": version.name, "rules": version.rules,
                                     "entries": version.entries.all()}).data


def protocol_schema(version) -> dict:
    """A version's schema as readers get it; cached once the version is locked (it cannot change then)."""
    if version.is_locked:
        return _schema_of_locked_version(version.pk)
    return ProtocolSchemaSerializer({"number": version.number, "name": version.name, "rules": version.rules,
                                     "entries": version.entries.all()}).data


class ModelBlockSerializer(serializers.Serializer):
    version = serializers.IntegerField(allow_null=True)
    uncertainty = serializers.FloatField(allow_null=True)
    suggestions = serializers.ListField(child=serializers.DictField())


_DATETIME = serializers.DateTimeField()  # how DRF renders a datetime field (the API's settings)


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
    resumed = serializers.BooleanField(help_text="True when this is a read you already held (a claim whose answer "
                                                 "you may not have received), handed back; false for a new one.")
    # Claims carry no such attribute, so DRF leaves the key out; to_representation adds it.
    # Not read_only: drf-spectacular documents every read-only field as required, and this one is often absent
    model = ModelBlockSerializer(source="model_block", required=False,
                                 help_text="The current model's view: only when the project is not "
                                           "blind-to-model and offers suggestions; otherwise absent.")

    def get_protocol_version(self, claim) -> ProtocolSchemaSerializer:
        return protocol_schema(claim.task.protocol_version)

    def get_series_uid(self, claim) -> str | None:
        return claim.task.series.series_uid if claim.task.series else None

    def get_dicomweb(self, claim) -> dict:
        return _dicomweb(self.context["request"], claim.task, claim.study_series)

    def to_representation(self, claim):
        return claim_representation(claim, self.context["request"])


def claim_representation(claim, request) -> dict:
    """What ClaimSerializer renders, built by hand in its declared fields' order and with their
    renderings (its fields are the OpenAPI schema; a test holds the two together): DRF's generic
    walk over the fields cost a sixth of a claim request's CPU, and the claim view skips even the
    serializer's construction. The model's view of the task only where the project is not
    blind-to-model and offers suggestions; otherwise the key is absent (learning.exposure decides)."""
    task = claim.task
    data = {"read": claim.read.pk, "task": task.pk, "project": task.project_id,
            "lease_expires_at": _DATETIME.to_representation(claim.read.lease_expires_at),
            "protocol_version": protocol_schema(task.protocol_version), "study_uid": task.study.study_uid,
            "series_uid": task.series.series_uid if task.series else None,
            "dicomweb": _dicomweb(request, task, claim.study_series), "resumed": claim.resumed}
    if claim.readers_see_model and (block := learning().model_block_for_reader(claim.task)) is not None:
        data["model"] = block
    return data


class ReadSerializer(serializers.ModelSerializer):
    study_uid = serializers.CharField(source="task.study.study_uid", read_only=True)
    series_uid = serializers.SerializerMethodField()
    claim_to_submit_seconds = serializers.FloatField(read_only=True, allow_null=True)  # null until submitted

    class Meta:
        model = Read
        fields = ["id", "task", "project", "state", "study_uid", "series_uid", "claimed_at", "lease_expires_at",
                  "submitted_at", "ended_at", "active_seconds", "claim_to_submit_seconds", "findings_count",
                  "slices_touched", "draft", "findings"]
        read_only_fields = fields

    def get_series_uid(self, read) -> str | None:
        return read.task.series.series_uid if read.task.series_id else None

    def to_representation(self, read):
        # Built by hand, as the fields above render them (they are the OpenAPI schema; a test
        # compares the two): a ModelSerializer builds its sixteen fields anew for every instance
        # it renders, a tenth of a submit request's CPU.
        return {"id": read.pk, "task": read.task_id, "project": read.project_id, "state": read.state,
                "study_uid": read.task.study.study_uid, "series_uid": self.get_series_uid(read),
                "claimed_at": _datetime_or_none(read.claimed_at),
                "lease_expires_at": _datetime_or_none(read.lease_expires_at),
                "submitted_at": _datetime_or_none(read.submitted_at), "ended_at": _datetime_or_none(read.ended_at),
                "active_seconds": read.active_seconds, "claim_to_submit_seconds": read.claim_to_submit_seconds,
                "findings_count": read.findings_count, "slices_touched": read.slices_touched,
                "draft": read.draft, "findings": read.findings}


def _datetime_or_none(value):
    return None if value is None else _DATETIME.to_representation(value)


class ManagedReadSerializer(ReadSerializer):
    """A read with who holds it, named as tasks.selectors.reader_visibility says: username and
    pseudonym for managers, the pseudonym alone for QA. Context ``reader_visibility``: project id ->
    ReaderVisibility (without it nobody is named)."""

    reader = serializers.CharField(source="reader.username", read_only=True, allow_null=True,
                                   help_text="Username (managers); null for everybody else.")
    reader_pseudonym = serializers.CharField(source="reader.pseudonym", read_only=True, allow_null=True,
                                             help_text="Pseudonym (managers and QA); null for everybody else.")
    tier = serializers.CharField(source="get_tier_display", read_only=True)

    class Meta(ReadSerializer.Meta):
        fields = [*ReadSerializer.Meta.fields, "reader", "reader_pseudonym", "tier"]
        read_only_fields = fields

    def to_representation(self, read):
        data = super().to_representation(read)
        visibility = self.context.get("reader_visibility")
        naming = visibility(read.project_id).naming if visibility is not None else selectors.Naming.NONE
        pseudonym = read.reader.pseudonym if naming != selectors.Naming.NONE else None
        data.update(reader=read.reader.username if naming == selectors.Naming.USERNAME else None,
                    reader_pseudonym=None if pseudonym is None else str(pseudonym), tier=read.get_tier_display())
        return data


class VisibleReadSerializer(ManagedReadSerializer):
    """A read as /api/reads/ shows it (the schema of its list and detail): with who holds it to whoever
    sees other people's reads (managers, QA); without the three fields to a reader, who sees only their
    own (ReadSerializer). Not read-only, so that the schema calls them optional (drf-spectacular
    documents every read-only field as required); nothing is ever written through this serializer."""

    reader = serializers.CharField(source="reader.username", required=False, allow_null=True, help_text=(
        "Username (managers); null for QA. Absent when you see only your own reads."))
    reader_pseudonym = serializers.CharField(source="reader.pseudonym", required=False, allow_null=True, help_text=(
        "Pseudonym (managers and QA). Absent when you see only your own reads."))
    tier = serializers.CharField(source="get_tier_display", required=False, help_text=(
        "The reader's tier on the project. Absent when you see only your own reads."))


class ClaimRequestSerializer(serializers.Serializer):
    project = serializers.IntegerField(required=False, help_text="Claim only from this project.")
    another = serializers.BooleanField(
        default=False, help_text="Take a new read even though you hold some (up to the project's open-read "
                                 "limit). Without it a claim first hands back the oldest read still leased to you.")


class HeldReadSerializer(serializers.Serializer):
    read = serializers.IntegerField()
    project = serializers.IntegerField()
    lease_expires_at = serializers.DateTimeField()


class OpenReadLimitSerializer(serializers.Serializer):
    """The 409 of a claim: the API's error body, with the reads you hold where the limit is why."""

    code = serializers.ChoiceField(["open_read_limit", "concurrent_change"])
    detail = serializers.CharField()
    errors = serializers.DictField()
    held_reads = HeldReadSerializer(many=True, required=False, help_text=(
        "open_read_limit only: your open reads on the projects at their limit, oldest first. A lease in "
        "the past is ended by the next sweep (about a minute) or by releasing the read."))


@extend_schema_field(api_schema.FINDINGS_SCHEMA)
class FindingsField(serializers.JSONField):
    """Any JSON here: tasks.findings.validation checks it and names every bad field; the schema shows its shape."""


class SubmitSerializer(serializers.Serializer):
    findings = FindingsField()


class DraftSerializer(serializers.Serializer):
    draft = serializers.JSONField(help_text="Any JSON list or object, stored as sent (not validated) until the "
                                            "read is submitted: usually the findings so far.")


def _empty_claim_body(request) -> bool:
    """No body, or ``{}`` sent as JSON: what DRF's parsing would turn into an empty dict."""
    django_request = request._request  # its content_type is the media type, parsed and lowercased
    body = django_request.body.strip()
    return not body or (body == b"{}" and django_request.content_type == "application/json")


class QueueNextView(AuditedViewMixin, APIView):
    """Claim a read: the oldest one still leased to you on the projects you may claim from (the
    project named, else all of them), marked `"resumed": true`, or else a new one; `"another": true`
    takes a new one whatever you hold. A claim whose answer was lost is recovered by claiming again.

    200 with the work and its lease, resumed or new. 204: nothing to read. 409 `open_read_limit`:
    you hold the most open reads a project allows (`max_open_reads`, 3 unless the project says
    otherwise) and nothing else could be claimed; the body lists them (`held_reads`): submit or
    release one, or claim without `another`."""

    audit_object_type = "tasks.read"

    def audit_action(self, request):
        return "claim"

    def audit_target(self):
        try:
            data = self.request.data
        except (exceptions.ParseError, exceptions.UnsupportedMediaType):
            data = None  # the refusal being recorded (DRF raises it again on every access)
        return data.get("project") if isinstance(data, dict) else None, "", ""

    @extend_schema(request=ClaimRequestSerializer, responses={
        200: OpenApiResponse(ClaimSerializer, description="A read: resumed (one you held) or new."),
        204: OpenApiResponse(description="Nothing to read: no work you may take (not the open-read limit)."),
        409: OpenApiResponse(OpenReadLimitSerializer, description=(
            "code open_read_limit: you hold the most open reads a project allows and nothing else could be "
            "claimed (held_reads lists them). code concurrent_change: met another transaction head-on "
            "(rare); nothing was claimed, retry after Retry-After seconds."))})
    def post(self, request):
        project_id, another = None, False
        # Most claims send nothing or an empty JSON object: no parser and no serializer to run for
        # them. Anything else, a JSON list or null included, is parsed and validated (and refused
        # with a 400 or 415).
        if not _empty_claim_body(request):
            data = ClaimRequestSerializer(data=request.data)
            data.is_valid(raise_exception=True)
            project_id, another = data.validated_data.get("project"), data.validated_data["another"]
        try:
            claim = queue.claim_for_reader(request.user, project_id=project_id, another=another)
        except queue.OpenReadLimit as limit:
            # The API's error body, and the reads held (the one error that names objects to act on).
            body = {**error_body(limit.code, limit.detail, limit.errors),
                    "held_reads": HeldReadSerializer(limit.held, many=True).data}
            return Response(body, status=limit.status_code)
        if claim is None:
            return Response(status=status.HTTP_204_NO_CONTENT)
        return Response(claim_representation(claim, request))


class HeldReadsView(AuditedViewMixin, mixins.ListModelMixin, viewsets.GenericViewSet):
    """The reads you hold open (claimed, not yet submitted or released), oldest first, each with its
    lease's end: a claim whose answer never arrived shows here at once. Only your own reads, on
    projects where you still hold a reader role; a lease already past ends at the next sweep."""

    serializer_class = ReadSerializer
    audit_object_type = "tasks.read"
    queryset = Read.objects.none()

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):
            return Read.objects.none()
        return selectors.open_reads_of(self.request.user).select_related(
            "task__study", "task__series").order_by("claimed_at", "id")


class ReadFilter(django_filters.FilterSet):
    class Meta:
        model = Read
        fields = ["state", "project", "task"]


READ_NOT_OPEN = OpenApiResponse(description=(
    "The read is no longer open (code read_submitted, read_released, read_expired, ...) or its lease was lost."))


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

    def get_serializer_context(self):
        context = super().get_serializer_context()
        if not getattr(self, "swagger_fake_view", False):
            context["reader_visibility"] = selectors.reader_visibilities(self.request.user)
        return context

    def get_serializer_class(self):
        # Readers (who see only their own reads) get no identities; managers and QA do.
        user = self.request.user
        if getattr(self, "swagger_fake_view", False):
            return VisibleReadSerializer  # what either may get: the schema
        if user.is_superuser:
            return ManagedReadSerializer
        if self.get_queryset().exclude(reader=user).exists():
            return ManagedReadSerializer
        return ReadSerializer

    def audit_target(self):
        return None, self.kwargs.get("pk", ""), ""

    @extend_schema(request=None, responses={200: ReadSerializer, 409: OpenApiResponse(description="Lease lost")})
    def heartbeat(self, request, pk=None):
        """Extend the lease of a read you hold by the project's lease length, crediting the time since the last
        beat (capped) as active reading; 409 once the lease was lost or the read is no longer open."""
        return Response(ReadSerializer(reads.heartbeat_read(pk, request.user)).data)

    @extend_schema(request=None, responses={200: ReadSerializer, 409: READ_NOT_OPEN})
    def release(self, request, pk=None):
        """Give a held read back unsubmitted: it ends as released and its place in the queue goes to another
        reader."""
        return Response(ReadSerializer(reads.release_read(pk, request.user)).data)

    @extend_schema(request=DraftSerializer, responses={200: ReadSerializer, 409: READ_NOT_OPEN},
                   examples=api_schema.DRAFT_EXAMPLES)
    def draft(self, request, pk=None):
        """Keep work in progress on a held read: any JSON list or object, replaced on every save, not validated."""
        data = DraftSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        return Response(ReadSerializer(reads.save_draft(pk, request.user, data.validated_data["draft"])).data)

    @extend_schema(request=SubmitSerializer, examples=api_schema.SUBMIT_EXAMPLES,
                   parameters=[idempotency.PARAMETER],
                   responses={200: ReadSerializer,
                              400: OpenApiResponse(description="Findings invalid (field paths), or an "
                                                               "Idempotency-Key no retry could match"),
                              409: OpenApiResponse(description="Lease lost or already submitted")})
    def submit(self, request, pk=None):
        """Submit the findings of a held read: all of them checked against the protocol's labels and the study's
        geometry and stored normalised, or none stored and a 400 naming each bad field. With an Idempotency-Key,
        a retry returns the first answer."""
        data = SubmitSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        key = idempotency.key_from(request)
        read, _ = reads.submit_read(pk, request.user, data.validated_data["findings"], idempotency_key=key)
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
        return _dicomweb(self.context["request"], adjudication.task)

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
