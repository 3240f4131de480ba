"""REST endpoints of the DICOM index: upload, browse studies and series, quarantine, pseudonyms."""

import zipfile

from django.conf import settings
from django.db import transaction
from django.utils import timezone
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import serializers, status
from rest_framework.parsers import MultiPartParser
from rest_framework.response import Response
from rest_framework.views import APIView

from audit.recorder import AuditedViewMixin
from audit.trail import record_event
from core.api.pagination import page_of, paginated_response
from core.dicom.archives import iter_zip_members
from core.dicom.ingest import IngestItem, ingest_files, read_pseudonym
from core.dicom.models import IngestBatch, Instance, PseudonymMapEntry, Series, Study
from core.dicom.uploads import EncryptedSpoolUploadHandler
from core.errors import DomainError, NotFound
from core.roles import Perm
from core.selectors import get_project_for, user_has_perm

ZIP_MAGIC = b"PK\x03\x04"


class SeriesSerializer(serializers.ModelSerializer):
    is_volume_ok = serializers.BooleanField(read_only=True)

    class Meta:
        model = Series
        fields = ["id", "series_uid", "modality", "body_part", "description", "number", "mr_sequence",
                  "frame_of_reference_uid", "instance_count", "geometry_issues", "is_volume_ok"]


class StudySerializer(serializers.ModelSerializer):
    series = SeriesSerializer(many=True, read_only=True)

    class Meta:
        model = Study
        fields = ["id", "study_uid", "patient_pseudonym", "patient_age_years", "study_date", "description",
                  "modalities", "body_parts", "series_count", "instance_count", "series", "created_at"]


class InstanceSerializer(serializers.ModelSerializer):
    series_uid = serializers.CharField(source="series.series_uid", read_only=True)
    study_uid = serializers.CharField(source="series.study.study_uid", read_only=True)

    class Meta:
        model = Instance
        fields = ["id", "study_uid", "series_uid", "sop_instance_uid", "sop_class_uid", "instance_number",
                  "transfer_syntax_uid", "rows", "columns", "frames", "size_bytes", "is_quarantined",
                  "quarantine_reason", "quarantine_cleared_at"]


class FileReportSerializer(serializers.Serializer):
    name = serializers.CharField()
    status = serializers.ChoiceField(["accepted", "duplicate", "rejected"])
    reason = serializers.CharField()
    code = serializers.CharField()
    sop_instance_uid = serializers.CharField()
    study_uid = serializers.CharField()
    series_uid = serializers.CharField()
    quarantined = serializers.BooleanField()
    notes = serializers.ListField(
        child=serializers.CharField(), required=False,
        help_text="Attributes de-identification removed or blanked beyond the profile, by tag and VR "
                  "(never by value), e.g. `(0020,0013) IS: malformed value blanked`.")


class IngestReportSerializer(serializers.Serializer):
    batch = serializers.IntegerField()
    project = serializers.IntegerField()
    accepted = serializers.IntegerField()
    duplicate = serializers.IntegerField()
    rejected = serializers.IntegerField()
    quarantined = serializers.IntegerField()
    files = FileReportSerializer(many=True)


class IngestBatchSerializer(serializers.ModelSerializer):
    class Meta:
        model = IngestBatch
        fields = ["id", "source", "accepted", "duplicate", "rejected", "quarantined", "started_at", "finished_at"]


def upload_items(files) -> list:
    """Uploaded .dcm files and .zip archives as ingest items (archive members one by one)."""
    for upload in files:
        if getattr(upload, "refused", ""):
            yield IngestItem(upload.name, reason=upload.refused, size=upload.size)
            continue
        reader = upload.open()
        head = reader.read(4)
        reader.seek(0)
        if head != ZIP_MAGIC:
            yield IngestItem(upload.name, reader=reader, size=upload.size)
            continue
        try:
            for member in iter_zip_members(reader):
                name = f"{upload.name}/{member.name}"
                if member.spool is None:
                    yield IngestItem(name, reason=member.reason)
                else:
                    yield IngestItem(name, reader=member.spool.reader(), size=member.spool.size)
        except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError) as exc:
            yield IngestItem(upload.name, reason=f"corrupt or refused zip archive: {exc}")
        finally:
            upload.close()


class StudyUploadView(AuditedViewMixin, APIView):
    """Upload DICOM files (.dcm) or zipped study folders (.zip) as multipart form parts named ``files``.

    Each file is reported: accepted, duplicate (already stored: idempotent) or rejected with the reason.
    201 when anything was accepted, 200 when all were duplicates, 400 when nothing could be ingested.
    """

    parser_classes = [MultiPartParser]
    audit_object_type = "core.ingestbatch"

    def initialize_request(self, request, *args, **kwargs):
        # Before anything reads the body: every file part streams through AES-GCM into a spool.
        request.upload_handlers = [EncryptedSpoolUploadHandler(request, settings.RADQUEUE_MAX_FILE_BYTES)]
        return super().initialize_request(request, *args, **kwargs)

    @extend_schema(
        request={"multipart/form-data": {"type": "object", "properties": {
            "files": {"type": "array", "items": {"type": "string", "format": "binary"}}}}},
        responses={
            201: OpenApiResponse(IngestReportSerializer, description="At least one file accepted; each file reported."),
            200: OpenApiResponse(IngestReportSerializer, description="Every file was already stored (duplicates)."),
            400: OpenApiResponse({"oneOf": [{"$ref": "#/components/schemas/IngestReport"},
                                            {"$ref": "#/components/schemas/Error"}]}, description=(
                "Nothing could be ingested: the report, every file rejected with its reason; or, when the "
                "request itself is refused (no file part, a body that is not multipart/form-data), the API's "
                "error body, e.g. code `no_files` with `errors.files`.")),
        },
    )
    def post(self, request, project_pk):
        project = get_project_for(request.user, project_pk, Perm.INGEST)
        files = [f for name in request.FILES for f in request.FILES.getlist(name)]
        if not files:
            raise DomainError("Send multipart/form-data with one or more file parts (.dcm files or a .zip).",
                              code="no_files", errors={"files": ["No file was uploaded."]})
        report = ingest_files(project, upload_items(files), by=request.user, source="upload").as_dict()
        if report["accepted"]:
            code = status.HTTP_201_CREATED
        elif report["duplicate"]:
            code = status.HTTP_200_OK
        else:
            code = status.HTTP_400_BAD_REQUEST
        return Response(report, status=code)


class ProjectIndexMixin(AuditedViewMixin):
    def project(self, perm=Perm.VIEW_READS):
        project = get_project_for(self.request.user, self.kwargs["project_pk"], Perm.VIEW)
        user = self.request.user
        if not (user_has_perm(user, perm, project) or user_has_perm(user, Perm.INGEST, project)):
            raise DomainError("Your role on this project does not allow this.", code="permission_denied", status=403)
        return project


class StudyListView(ProjectIndexMixin, APIView):
    """Studies of a project with their series and volume checks (managers and QA)."""

    audit_object_type = "core.study"

    @extend_schema(parameters=[OpenApiParameter("modality", str), OpenApiParameter("patient", str)],
                   responses=page_of(StudySerializer), operation_id="api_projects_studies_list")
    def get(self, request, project_pk):
        project = self.project()
        qs = Study.objects.filter(project=project).prefetch_related("series").order_by("id")
        if modality := request.query_params.get("modality"):
            qs = qs.filter(modalities__icontains=f'"{modality.upper()}"')
        if patient := request.query_params.get("patient"):
            qs = qs.filter(patient_pseudonym=patient)
        return paginated_response(request, self, qs, StudySerializer)


class StudyDetailView(ProjectIndexMixin, APIView):
    """One study of the project with its series and their volume checks (managers and QA)."""

    audit_object_type = "core.study"

    @extend_schema(responses=StudySerializer)
    def get(self, request, project_pk, pk):
        project = self.project()
        study = Study.objects.filter(project=project, pk=pk).prefetch_related("series").first()
        if study is None:
            raise NotFound("No such study.")
        return Response(StudySerializer(study).data)


class QuarantineListView(ProjectIndexMixin, APIView):
    """Instances held back for burned-in text risk, awaiting a manager's review."""

    audit_object_type = "core.instance"

    @extend_schema(responses=page_of(InstanceSerializer), operation_id="api_projects_quarantine_list")
    def get(self, request, project_pk):
        project = self.project(Perm.MANAGE)
        qs = Instance.objects.filter(project=project, is_quarantined=True).select_related("series__study")
        return paginated_response(request, self, qs.order_by("id"), InstanceSerializer)


class ClearQuarantineView(AuditedViewMixin, APIView):
    """A manager confirms an instance carries no burned-in PHI; it can then be served to readers."""

    audit_object_type = "core.instance"

    @extend_schema(request=None, responses={200: InstanceSerializer, 409: OpenApiResponse(
        description="code not_quarantined: the instance is not in quarantine (cleared already, or never held).")})
    def post(self, request, project_pk, pk):
        project = get_project_for(request.user, project_pk, Perm.MANAGE)
        with transaction.atomic():
            instance = Instance.objects.select_for_update().filter(project=project, pk=pk).first()
            if instance is None:
                raise NotFound("No such instance.")
            if not instance.is_quarantined:
                raise DomainError("This instance is not in quarantine.", code="not_quarantined", status=409)
            Instance.objects.filter(pk=instance.pk).update(
                is_quarantined=False, quarantine_cleared_by=request.user, quarantine_cleared_at=timezone.now())
            record_event("quarantine_cleared", actor=request.user, project=project, obj=instance,
                         study_uid=instance.series.study.study_uid, extra={"reason": instance.quarantine_reason})
        instance.refresh_from_db()
        return Response(InstanceSerializer(instance).data)


class IngestBatchListView(ProjectIndexMixin, APIView):
    """The project's ingests (uploads, STOW-RS), newest first, with how many files each accepted,
    found already stored, rejected or quarantined."""

    audit_object_type = "core.ingestbatch"

    @extend_schema(responses=page_of(IngestBatchSerializer), operation_id="api_projects_ingest_batches_list")
    def get(self, request, project_pk):
        project = self.project()
        batches = IngestBatch.objects.filter(project=project)
        return paginated_response(request, self, batches, IngestBatchSerializer)


class PseudonymLookupSerializer(serializers.Serializer):
    kind = serializers.ChoiceField(PseudonymMapEntry.Kind.choices)
    pseudonym = serializers.CharField(max_length=64)
    original = serializers.CharField()


class PseudonymLookupView(AuditedViewMixin, APIView):
    """Privacy officers only: the original identifier behind a pseudonym (projects that keep the map)."""

    audit_object_type = "core.pseudonymmapentry"

    @extend_schema(parameters=[OpenApiParameter("kind", str, required=True, enum=PseudonymMapEntry.Kind.values),
                               OpenApiParameter("pseudonym", str, required=True)],
                   responses={200: PseudonymLookupSerializer, 404: OpenApiResponse(OpenApiTypes.OBJECT)})
    def get(self, request, project_pk):
        project = get_project_for(request.user, project_pk, Perm.VIEW_PHI_MAP)
        kind, pseudonym = request.query_params.get("kind", ""), request.query_params.get("pseudonym", "")
        if kind not in PseudonymMapEntry.Kind.values or not pseudonym:
            raise DomainError("Give kind (patient, study, series, instance) and pseudonym.", code="invalid",
                              errors={"kind": ["Required."], "pseudonym": ["Required."]})
        entry = PseudonymMapEntry.objects.filter(project=project, kind=kind, pseudonym=pseudonym).first()
        if entry is None:
            raise NotFound("No mapping for that pseudonym (is the project keeping one?).")
        record_event("reidentify", actor=request.user, project=project, obj=entry,
                     extra={"kind": kind, "pseudonym": pseudonym})
        return Response({"kind": kind, "pseudonym": pseudonym, "original": read_pseudonym(entry)})
