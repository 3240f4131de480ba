"""Django admin for managers, under the same object permissions as the API.

Staff managers see only projects they manage; membership changes go through core.memberships so
permissions and the audit trail stay in step; every admin view and change is audited.
"""

from django import forms
from django.contrib import admin
from django.contrib.auth.admin import UserAdmin as DjangoUserAdmin
from django.db.models import Q

from audit.trail import record_event
from core import memberships as membership_service
from core.auth import ThrottledAdminAuthenticationForm
from core.errors import DomainError
from core.models import LabelEntry, Membership, Organization, Project, ProtocolVersion, User
from core.projects import update_project
from core.roles import Perm
from core.selectors import projects_visible_to

admin.site.login_form = ThrottledAdminAuthenticationForm
admin.site.site_header = "radqueue administration"


class AuditedAdminMixin:
    """Records admin list and detail views (reads) and admin changes (writes)."""

    def changelist_view(self, request, extra_context=None):
        record_event("list", actor=request.user, object_type=self.model._meta.label_lower, extra={"channel": "admin"})
        return super().changelist_view(request, extra_context)

    def change_view(self, request, object_id, form_url="", extra_context=None):
        if request.method == "GET":
            record_event("view", actor=request.user, object_type=self.model._meta.label_lower, object_id=object_id,
                         extra={"channel": "admin"})
        return super().change_view(request, object_id, form_url, extra_context)

    def log_addition(self, request, obj, message):
        record_event("create", actor=request.user, obj=obj, extra={"channel": "admin"})
        return super().log_addition(request, obj, message)

    def log_change(self, request, obj, message):
        record_event("update", actor=request.user, obj=obj, extra={"channel": "admin"})
        return super().log_change(request, obj, message)

    def log_deletions(self, request, queryset):
        for obj in queryset:
            record_event("delete", actor=request.user, obj=obj, extra={"channel": "admin"})
        return super().log_deletions(request, queryset)


class ProjectScopedAdmin(AuditedAdminMixin, admin.ModelAdmin):
    """Rows belonging to projects the staff user manages."""

    project_path = "project"

    def managed_projects(self, request):
        return projects_visible_to(request.user, Perm.MANAGE)

    def get_queryset(self, request):
        qs = super().get_queryset(request)
        if request.user.is_superuser:
            return qs
        return qs.filter(**{f"{self.project_path}__in": self.managed_projects(request)})

    def _allowed(self, request, obj=None):
        if request.user.is_superuser:
            return True
        if obj is None:
            return self.managed_projects(request).exists()
        project = obj if isinstance(obj, Project) else getattr(obj, self.project_path)
        return request.user.has_perm(f"core.{Perm.MANAGE}", project)

    def has_module_permission(self, request):
        return request.user.is_active and request.user.is_staff and self._allowed(request)

    def has_view_permission(self, request, obj=None):
        return self._allowed(request, obj)

    def has_change_permission(self, request, obj=None):
        return self._allowed(request, obj)

    def has_add_permission(self, request):
        return request.user.is_superuser

    def has_delete_permission(self, request, obj=None):
        return False


@admin.register(Project)
class ProjectAdmin(ProjectScopedAdmin):
    project_path = "pk"
    list_display = ["id", "name", "client", "vendor", "reads_per_task", "is_active"]
    list_filter = ["is_active"]
    search_fields = ["name"]
    readonly_fields = ["client", "vendor", "created_at", "updated_at"]
    fields = ["name", "client", "vendor", "description", "modalities", "reads_per_task", "is_active", "created_at",
              "updated_at"]

    def get_queryset(self, request):
        qs = admin.ModelAdmin.get_queryset(self, request)
        return qs if request.user.is_superuser else qs.filter(pk__in=self.managed_projects(request))

    def save_model(self, request, obj, form, change):
        if not change:
            return super().save_model(request, obj, form, change)
        update_project(obj, by=request.user, **{f: form.cleaned_data[f] for f in form.changed_data
                                                 if f in ("name", "description", "modalities", "reads_per_task",
                                                          "is_active")})


class MembershipAdminForm(forms.ModelForm):
    """Shows core.memberships' refusals (who may grant what, conflicting roles) as form errors."""

    granted_by = None  # set per request by MembershipAdmin.get_form

    class Meta:
        model = Membership
        fields = ["user", "project", "role", "subspecialties", "is_active"]

    def clean(self):
        data = super().clean()
        try:
            if self.instance.pk is None:
                if data.get("user") and data.get("project") and data.get("role"):
                    membership_service.check_grant(project=data["project"], user=data["user"], role=data["role"],
                                                   by=self.granted_by)
            elif "is_active" in data:
                membership_service.check_change(self.instance, is_active=data["is_active"], by=self.granted_by)
        except DomainError as exc:
            raise forms.ValidationError(exc.detail) from None
        return data


@admin.register(Membership)
class MembershipAdmin(ProjectScopedAdmin):
    form = MembershipAdminForm
    list_display = ["id", "user", "project", "role", "is_active"]
    list_filter = ["role", "is_active"]
    search_fields = ["user__username", "project__name"]
    fields = ["user", "project", "role", "subspecialties", "is_active"]

    def has_add_permission(self, request):
        return self._allowed(request)

    def get_form(self, request, obj=None, change=False, **kwargs):
        form = super().get_form(request, obj, change=change, **kwargs)
        return type(form.__name__, (form,), {"granted_by": request.user})

    def get_readonly_fields(self, request, obj=None):
        return ["user", "project", "role"] if obj is not None else []

    def formfield_for_foreignkey(self, db_field, request, **kwargs):
        if db_field.name == "project" and not request.user.is_superuser:
            kwargs["queryset"] = self.managed_projects(request)
        if db_field.name == "user" and not request.user.is_superuser:
            # Only the people of the managed projects' organisations: the list names nobody else.
            projects = self.managed_projects(request)
            kwargs["queryset"] = User.objects.filter(is_active=True).filter(
                Q(organization__vendor_projects__in=projects) | Q(organization__client_projects__in=projects)
            ).distinct()
        return super().formfield_for_foreignkey(db_field, request, **kwargs)

    def save_model(self, request, obj, form, change):
        if change:
            membership_service.change_membership(obj, subspecialties=obj.subspecialties, is_active=obj.is_active,
                                                 by=request.user)
        else:
            saved = membership_service.grant_membership(project=obj.project, user=obj.user, role=obj.role,
                                                        subspecialties=obj.subspecialties, by=request.user)
            obj.pk = saved.pk


class LabelEntryInline(admin.TabularInline):
    model = LabelEntry
    extra = 0
    can_delete = False
    readonly_fields = ["key", "display_name", "kind", "categories", "unit", "coding_scheme", "code_value",
                       "code_meaning", "position"]

    def has_add_permission(self, request, obj=None):
        return False


@admin.register(ProtocolVersion)
class ProtocolVersionAdmin(ProjectScopedAdmin):
    """Read-only here: versions are created and edited through the API, which enforces immutability."""

    list_display = ["id", "project", "number", "name", "used_at"]
    readonly_fields = ["project", "number", "name", "notes", "rules", "created_by", "created_at", "used_at"]
    inlines = [LabelEntryInline]

    def has_change_permission(self, request, obj=None):
        return False


class SuperuserOnlyAdmin(AuditedAdminMixin, admin.ModelAdmin):
    def has_module_permission(self, request):
        return request.user.is_superuser

    def has_view_permission(self, request, obj=None):
        return request.user.is_superuser


@admin.register(Organization)
class OrganizationAdmin(SuperuserOnlyAdmin):
    list_display = ["id", "name", "kind"]


@admin.register(User)
class UserAdmin(AuditedAdminMixin, DjangoUserAdmin):
    fieldsets = [*DjangoUserAdmin.fieldsets, ("radqueue", {"fields": ["organization", "is_org_admin"]})]
    list_display = ["username", "organization", "is_org_admin", "is_staff", "pseudonym"]

    def has_module_permission(self, request):
        return request.user.is_superuser

    def has_view_permission(self, request, obj=None):
        return request.user.is_superuser
