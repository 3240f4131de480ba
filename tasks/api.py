"""The reading queue over REST: claim, held reads, heartbeat, release, draft, submit (managers'
views: tasks.manager_api; adjudication: tasks.adjudication_api)."""

from functools import lru_cache

import django_filters
from drf_spectacular.utils import (
    OpenApiResponse,
    extend_schema,
    extend_schema_field,
    extend_schema_view,
)
from rest_framework import exceptions, mixins, serializers, status, viewsets
from rest_framework.response import Response
from rest_framework.views import APIView

from audit.recorder import AuditedViewMixin
from core import idempotency
from core.api.serializers import LabelEntrySerializer, RulesField
from core.dicom.dicomweb import public_url
from core.errors import error_body
from core.models import ProtocolVersion
from tasks import api_schema, queue, reads, selectors
from tasks.learning_seam import learning
from tasks.models import Read, Task


def dicomweb_block(request, task: Task, study_series: list | None = None, *, root_path: str = "/dicomweb") -> dict:
    """Where a viewer finds the task's study: ``root`` is the DICOMweb root to configure it with (a
    read's or an adjudication's own, tasks.dicomweb_scopes), ``study`` and ``series`` URLs under it."""
    root = public_url(request, root_path)  # as the DICOMweb bodies' own URLs are built
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
        return dicomweb_block(self.context["request"], claim.task, claim.study_series,
                              root_path=f"/dicomweb/reads/{claim.read.pk}")

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
            "dicomweb": dicomweb_block(request, task, claim.study_series, root_path=f"/dicomweb/reads/{claim.read.pk}"),
            "resumed": claim.resumed}
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
                "claimed_at": datetime_or_none(read.claimed_at),
                "lease_expires_at": datetime_or_none(read.lease_expires_at),
                "submitted_at": datetime_or_none(read.submitted_at), "ended_at": datetime_or_none(read.ended_at),
                "active_seconds": read.active_seconds, "claim_to_submit_seconds": read.claim_to_submit_seconds,
                "findings_count": read.findings_count, "slices_touched": read.slices_touched,
                "draft": read.draft, "findings": read.findings}


def datetime_or_none(value):
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
    findings = FindingsField(required=False, help_text=(
        "The findings. Left out: the read's draft is submitted as it stands, which is what a viewer's "
        "saved SEG and SR objects made it (STOW-RS into the read's DICOMweb root)."))


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
        findings = data.validated_data.get("findings", reads.FROM_DRAFT)
        read, _ = reads.submit_read(pk, request.user, findings, idempotency_key=key)
        return Response(ReadSerializer(read).data)
