"""Project progress over REST (managers, QA and clients; pseudonymous below managers, aggregates only
for clients): the document tasks.progress.project_progress builds."""

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework.response import Response
from rest_framework.views import APIView

from audit.recorder import AuditedViewMixin
from core.roles import Perm
from core.selectors import get_project_for
from tasks.progress import project_progress


class ProjectProgressView(AuditedViewMixin, APIView):
    """Tasks by state, modality, batch and finding class; throughput per day and tier; reader hours;
    ETA; workforce calibration and gold status."""

    audit_object_type = "tasks.progress"

    @extend_schema(responses={200: OpenApiResponse(OpenApiTypes.OBJECT, description=(
        "The progress document: tasks {total, done, by_state, by_modality, by_batch}, by_finding_class, "
        "tasks_without_findings, throughput {days, by_tier, reader_hours}, eta {reads_left, awaiting_adjudication, "
        "reads_per_day, window_days, days, date}, workforce {by_tier, readers (managers and QA only)}."))})
    def get(self, request, project_pk):
        project = get_project_for(request.user, project_pk, Perm.VIEW_PROGRESS)
        return Response(project_progress(project, user=request.user))
