from django.apps import AppConfig


class CoreConfig(AppConfig):
    name = "core"
    verbose_name = "radqueue core"

    def ready(self) -> None:
        from django.contrib.auth.signals import user_logged_in, user_login_failed

        from core import auth, checks, schema  # noqa: F401 - schema registers the OpenAPI extensions; checks the deploy checks

        # Django's login signals are the only hook into the admin's session login; they
        # record the audit events and nothing else.
        user_logged_in.connect(auth.on_user_logged_in, dispatch_uid="radqueue-login")
        user_login_failed.connect(auth.on_user_login_failed, dispatch_uid="radqueue-login-failed")

        # pydicom's read-time validation logs the offending value ("Invalid value for VR IS: ...")
        # and that value may be a name: de-identification checks every kept value against its VR
        # itself and reports it by tag only (core.dicom.deid), so pydicom's own check stays silent.
        from pydicom import config as pydicom_config

        pydicom_config.settings.reading_validation_mode = pydicom_config.IGNORE

        from core import log_redaction

        log_redaction.install()

        # The audit trail records each actor's roles on the project but imports no other app:
        # it is told here where memberships live.
        from audit.trail import RoleSource, use_roles
        from core.models import Membership
        from core.roles import READER_ROLE_TIERS

        meta = Membership._meta
        use_roles(RoleSource(meta.db_table, meta.get_field("user").column, meta.get_field("project").column,
                             {role: int(tier) for role, tier in READER_ROLE_TIERS.items()}))
