from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from core import auth, health
from core.api import views
from core.url_ids import IdRouter

router = IdRouter()
router.register("organizations", views.OrganizationViewSet, basename="organization")
router.register("users", views.UserViewSet, basename="user")
router.register("projects", views.ProjectViewSet, basename="project")
router.register("schema-templates", views.SchemaTemplateViewSet, basename="schema-template")

nested = IdRouter()
nested.register("memberships", views.MembershipViewSet, basename="membership")
nested.register("protocol-versions", views.ProtocolVersionViewSet, basename="protocol-version")

from core.dicom import api as dicom_api  # noqa: E402

project_dicom = [
    path("studies/upload/", dicom_api.StudyUploadView.as_view(), name="study-upload"),
    path("studies/", dicom_api.StudyListView.as_view(), name="study-list"),
    path("studies/<id:pk>/", dicom_api.StudyDetailView.as_view(), name="study-detail"),
    path("quarantine/", dicom_api.QuarantineListView.as_view(), name="quarantine-list"),
    path("instances/<id:pk>/clear-quarantine/", dicom_api.ClearQuarantineView.as_view(), name="quarantine-clear"),
    path("ingest-batches/", dicom_api.IngestBatchListView.as_view(), name="ingest-batch-list"),
    path("pseudonyms/", dicom_api.PseudonymLookupView.as_view(), name="pseudonym-lookup"),
]

api = [
    path("auth/token/", auth.ObtainTokenView.as_view(), name="token-obtain"),
    path("auth/token/revoke/", auth.RevokeTokenView.as_view(), name="token-revoke"),
    path("auth/token/revoke-all/", auth.RevokeAllTokensView.as_view(), name="token-revoke-all"),
    path("me/", views.MeView.as_view(), name="me"),
    path("projects/<id:project_pk>/", include(nested.urls)),
    path("projects/<id:project_pk>/", include(project_dicom)),
    path("audit/", include("audit.urls")),
    path("", include("tasks.urls")),
    path("", include("learning.urls")),
    *router.urls,
]

handler404 = views.not_found

urlpatterns = [
    path("healthz", health.healthz, name="healthz"),
    path("readyz", health.readyz, name="readyz"),
    path("admin/", admin.site.urls),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="docs"),
    path("api/", include(api)),
    path("dicomweb/", include("tasks.dicomweb_urls")),  # a read's and an adjudication's roots
    path("dicomweb/", include("core.dicom.urls")),
    path("dashboard/", include("tasks.dashboard_urls")),
    path("viewer/", include("tasks.viewer_urls")),  # OHIF, same origin (tasks.viewer)
    path("work/", include("tasks.reader_urls")),  # the reader's worklist and read pages
]
