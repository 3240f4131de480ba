"""Core REST endpoints: thin, each validating input, calling one service and shaping output."""

import django_filters
from django.http import JsonResponse
from django.views.defaults import page_not_found
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import mixins, status, viewsets
from rest_framework.decorators import action
from rest_framework.response import Response
from rest_framework.views import APIView

from audit.recorder import AuditedViewMixin
from core import memberships as membership_service
from core import protocols, selectors
from core.api import serializers as s
from core.errors import Forbidden, NotFound
from core.models import Membership, Organization, Project, ProtocolVersion, User
from core.projects import create_project, create_user, update_project, update_project_settings
from core.roles import Perm


class OrganizationFilter(django_filters.FilterSet):
    class Meta:
        model = Organization
        fields = {"kind": ["exact"], "name": ["exact", "icontains"]}


class OrganizationViewSet(AuditedViewMixin, mixins.ListModelMixin, mixins.RetrieveModelMixin,
                          mixins.CreateModelMixin, viewsets.GenericViewSet):
    """Organisations: vendors and clients. Anyone sees their own and those of their projects."""

    serializer_class = s.OrganizationSerializer
    filterset_class = OrganizationFilter
    audit_object_type = "core.organization"
    queryset = Organization.objects.none()

    def audit_action(self, request):
        return "create" if self.action == "people" else super().audit_action(request)

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):
            return Organization.objects.none()
        return selectors.organizations_visible_to(self.request.user)

    def perform_create(self, serializer):
        if not self.request.user.is_superuser:
            raise Forbidden("Only platform administrators create organisations.")
        from core.projects import create_organization

        serializer.instance = create_organization(by=self.request.user, **serializer.validated_data)

    @extend_schema(
        request=s.UserCreateSerializer, responses={201: s.UserSerializer},
        description="Add a person to this organisation: its own administrators, or the administrators of a vendor "
                    "that runs projects for this client organisation (how a client's viewers, auditors and privacy "
                    "officers are onboarded), or a superuser. The password is set, never returned; audited.")
    @action(detail=True, methods=["post"], url_path="people")
    def people(self, request, pk=None):
        organization = self.get_object()
        data = s.UserCreateSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        user = create_user(by=request.user, organization=organization, **data.validated_data)
        return Response(s.UserSerializer(user).data, status=status.HTTP_201_CREATED)


class UserViewSet(AuditedViewMixin, mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    """People: organisation admins see and create their organisation's users; others see themselves."""

    serializer_class = s.UserSerializer
    filterset_fields = ["organization", "is_org_admin", "username"]
    audit_object_type = "core.user"
    queryset = User.objects.none()

    def get_queryset(self):
        user = self.request.user
        if getattr(self, "swagger_fake_view", False):
            return User.objects.none()
        if user.is_superuser:
            return User.objects.all()
        if user.is_org_admin and user.organization_id:
            return User.objects.filter(organization_id=user.organization_id)
        return User.objects.filter(pk=user.pk)

    @extend_schema(request=s.UserCreateSerializer, responses={201: s.UserSerializer})
    def create(self, request):
        data = s.UserCreateSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        user = create_user(by=request.user, **data.validated_data)
        return Response(s.UserSerializer(user).data, status=status.HTTP_201_CREATED)


class ProjectFilter(django_filters.FilterSet):
    modality = django_filters.CharFilter(method="filter_modality")

    class Meta:
        model = Project
        fields = {"client": ["exact"], "vendor": ["exact"], "is_active": ["exact"], "name": ["exact", "icontains"]}

    def filter_modality(self, queryset, name, value):
        return queryset.filter(modalities__contains=[value.upper()])  # jsonb containment: the list holds it


class ProjectViewSet(AuditedViewMixin, mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    """Projects the caller may see; managers edit their own, vendor organisation admins create them."""

    serializer_class = s.ProjectSerializer
    filterset_class = ProjectFilter
    audit_object_type = "core.project"
    audit_project_kwarg = "pk"

    def audit_action(self, request):
        if self.action == "project_settings":
            return "view" if request.method == "GET" else "update"
        return super().audit_action(request)

    def get_queryset(self):
        return selectors.projects_visible_to(self.request.user).prefetch_related("protocol_versions")

    @extend_schema(request=s.ProjectWriteSerializer, responses={201: s.ProjectSerializer})
    def create(self, request):
        data = s.ProjectWriteSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        project = create_project(by=request.user, **data.validated_data)
        return Response(s.ProjectSerializer(project).data, status=status.HTTP_201_CREATED)

    @extend_schema(request=s.ProjectUpdateSerializer, responses={200: s.ProjectSerializer})
    def partial_update(self, request, pk=None):
        project = selectors.get_project_for(request.user, pk, Perm.MANAGE)
        data = s.ProjectUpdateSerializer(data=request.data, partial=True)
        data.is_valid(raise_exception=True)
        project = update_project(project, by=request.user, **data.validated_data)
        return Response(s.ProjectSerializer(project).data)

    @extend_schema(methods=["GET"], responses=s.ProjectSettingsSerializer,
                   description="The reading queue's, gold and calibration checks' and de-identification settings "
                               "(managers and the vendor organisation's administrators).")
    @extend_schema(methods=["PATCH"], request=s.ProjectSettingsSerializer, responses=s.ProjectSettingsSerializer,
                   description="Change settings; audited with old and new values. De-identification options are "
                               "frozen once a study is ingested (400 deid_frozen); keep_pseudonym_map is changed by "
                               "the vendor organisation's administrators only (403 org_admin_only).")
    @action(detail=True, methods=["get", "patch"], url_path="settings", url_name="settings")
    def project_settings(self, request, pk=None):
        project = selectors.get_project_administered_by(request.user, pk, Perm.MANAGE)
        if request.method == "PATCH":
            data = s.ProjectSettingsSerializer(project, data=request.data, partial=True)
            data.is_valid(raise_exception=True)
            project = update_project_settings(project, by=request.user, **data.validated_data)
        return Response(s.ProjectSettingsSerializer(project).data)


class ProjectScopedMixin:
    def get_project(self, perm=Perm.VIEW) -> Project:
        return selectors.get_project_for(self.request.user, self.kwargs["project_pk"], perm)


LAST_MANAGER = OpenApiResponse(description=(
    "code last_manager: this is the project's last active manager; appoint another first (a project is never "
    "left without one)."))


class MembershipViewSet(AuditedViewMixin, ProjectScopedMixin, viewsets.GenericViewSet):
    """Memberships of one project: managers see and change all, others see their own."""

    serializer_class = s.MembershipSerializer
    filterset_fields = ["role", "is_active", "user"]
    audit_object_type = "core.membership"
    queryset = Membership.objects.none()

    def get_project(self, perm=Perm.VIEW) -> Project:
        # The vendor's administrators reach the memberships of its projects, member or not: they
        # appoint the auditors and privacy officers (core.memberships.grant_refusal).
        return selectors.get_project_administered_by(self.request.user, self.kwargs["project_pk"], perm)

    def get_queryset(self):
        return selectors.memberships_visible_to(self.request.user, self.get_project())

    def list(self, request, project_pk=None):
        qs = self.filter_queryset(self.get_queryset())
        page = self.paginate_queryset(qs)
        return self.get_paginated_response(s.MembershipSerializer(page, many=True).data)

    def retrieve(self, request, project_pk=None, pk=None):
        return Response(s.MembershipSerializer(self._membership(pk)).data)

    @extend_schema(request=s.MembershipCreateSerializer, responses={201: s.MembershipSerializer})
    def create(self, request, project_pk=None):
        project = self.get_project(Perm.MANAGE)
        data = s.MembershipCreateSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        fields = dict(data.validated_data)
        user = membership_service.find_grantee(project, fields.pop("user"), by=request.user)
        membership = membership_service.grant_membership(project=project, user=user, by=request.user, **fields)
        return Response(s.MembershipSerializer(membership).data, status=status.HTTP_201_CREATED)

    @extend_schema(request=s.MembershipUpdateSerializer, responses={200: s.MembershipSerializer, 409: LAST_MANAGER})
    def partial_update(self, request, project_pk=None, pk=None):
        self.get_project(Perm.MANAGE)
        membership = self._membership(pk)
        data = s.MembershipUpdateSerializer(data=request.data, partial=True)
        data.is_valid(raise_exception=True)
        membership = membership_service.change_membership(membership, by=request.user, **data.validated_data)
        return Response(s.MembershipSerializer(membership).data)

    @extend_schema(responses={204: OpenApiResponse(description="Membership deactivated, permissions withdrawn."),
                              409: LAST_MANAGER})
    def destroy(self, request, project_pk=None, pk=None):
        self.get_project(Perm.MANAGE)
        membership_service.revoke_membership(self._membership(pk), by=request.user)
        return Response(status=status.HTTP_204_NO_CONTENT)

    def _membership(self, pk) -> Membership:
        try:
            return self.get_queryset().get(pk=pk)
        except (Membership.DoesNotExist, ValueError):
            raise NotFound("No such membership.") from None


class ProtocolVersionViewSet(AuditedViewMixin, ProjectScopedMixin, viewsets.GenericViewSet):
    """Versions of a project's label schema / protocol, by number. Used versions are immutable."""

    serializer_class = s.ProtocolVersionSerializer
    lookup_field = "number"
    audit_object_type = "core.protocolversion"
    queryset = ProtocolVersion.objects.none()
    filterset_fields = ["number"]

    def get_queryset(self):
        return selectors.protocol_versions_of(self.get_project())

    def list(self, request, project_pk=None):
        page = self.paginate_queryset(self.filter_queryset(self.get_queryset()))
        return self.get_paginated_response(s.ProtocolVersionSerializer(page, many=True).data)

    def retrieve(self, request, project_pk=None, number=None):
        return Response(s.ProtocolVersionSerializer(self._version(number)).data)

    @extend_schema(request=s.ProtocolVersionCreateSerializer, responses={201: s.ProtocolVersionSerializer})
    def create(self, request, project_pk=None):
        project = self.get_project(Perm.MANAGE)
        data = s.ProtocolVersionCreateSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        version = protocols.create_protocol_version(project=project, by=request.user, **data.validated_data)
        return Response(s.ProtocolVersionSerializer(version).data, status=status.HTTP_201_CREATED)

    @extend_schema(request=s.ProtocolVersionUpdateSerializer, responses={200: s.ProtocolVersionSerializer})
    def partial_update(self, request, project_pk=None, number=None):
        self.get_project(Perm.MANAGE)
        version = self._version(number)
        data = s.ProtocolVersionUpdateSerializer(data=request.data, partial=True)
        data.is_valid(raise_exception=True)
        version = protocols.update_protocol_version(version, by=request.user, **data.validated_data)
        return Response(s.ProtocolVersionSerializer(version).data)

    def _version(self, number) -> ProtocolVersion:
        try:
            return self.get_queryset().get(number=number)
        except (ProtocolVersion.DoesNotExist, ValueError):
            raise NotFound("No such protocol version.") from None


class SchemaTemplateViewSet(viewsets.ViewSet):
    """Ready-made label schemas (BI-RADS, Lung-RADS, PI-RADS, generic findings) to start a protocol from."""

    serializer_class = s.SchemaTemplateSerializer
    lookup_value_regex = r"[-\w]+"

    @extend_schema(responses=s.SchemaTemplateSerializer(many=True))
    def list(self, request):
        return Response(s.SchemaTemplateSerializer(list(protocols.schema_templates().values()), many=True).data)

    @extend_schema(responses=s.SchemaTemplateSerializer,
                   parameters=[OpenApiParameter("id", str, OpenApiParameter.PATH, description="Template key.")])
    def retrieve(self, request, pk=None):
        return Response(s.SchemaTemplateSerializer(protocols.get_template(pk)).data)


class MeView(APIView):
    """The caller and their active memberships."""

    @extend_schema(responses=s.MeSerializer)
    def get(self, request):
        memberships = Membership.objects.filter(user=request.user, is_active=True).select_related("user")
        return Response(s.MeSerializer({"user": request.user, "memberships": memberships}).data)



def not_found(request, exception=None):
    """Django's 404 for a URL no route matches: the API's JSON error under /api/ (a client parses
    every answer there as JSON, an HTML page broke it), Django's page elsewhere."""
    if request.path.startswith("/api/"):
        return JsonResponse({"code": "not_found", "detail": "No such endpoint or object.", "errors": {}}, status=404)
    return page_not_found(request, exception)
