from django.core.management.base import BaseCommand, CommandError

from core.models import Project
from tasks.progress import recount_progress


class Command(BaseCommand):
    help = "Rebuild the progress tallies (tasks.progress) of one project, or of all, from the tables."

    def add_arguments(self, parser):
        parser.add_argument("--project", type=int, help="Project id (default: every project).")

    def handle(self, *args, project=None, **options):
        ids = [project] if project else list(Project.objects.order_by("id").values_list("id", flat=True))
        if project and not Project.objects.filter(pk=project).exists():
            raise CommandError(f"No project {project}.")
        for project_id in ids:
            recount_progress(project_id)
        self.stdout.write(f"recounted the progress of {len(ids)} project(s)")
