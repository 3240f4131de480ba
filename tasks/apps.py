from django.apps import AppConfig


class TasksConfig(AppConfig):
    name = "tasks"
    verbose_name = "Tasks and reads"

    def ready(self):
        from core.memberships import on_membership_ended
        from tasks.revocation import release_work_of_departed_member

        # core cannot import tasks: the release of a departed member's work plugs in here.
        on_membership_ended(release_work_of_departed_member)

        # Nor can core's DICOMweb ask the queue directly which studies a reader holds.
        from core.dicom.selectors import register_held_studies
        from tasks import selectors

        register_held_studies(selectors)
