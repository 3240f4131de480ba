"""Shared by train_model and score_queue: start a job and run it here with a tqdm progress bar."""

from django.core.management.base import BaseCommand, CommandError
from tqdm import tqdm

from core.errors import DomainError
from core.models import Project
from learning import job_state, runs
from learning.models import LearningJob


class LearningJobCommand(BaseCommand):
    kind = ""

    def add_arguments(self, parser):
        parser.add_argument("--project", type=int, required=True, help="Project id.")

    def handle(self, *args, project, **options):
        project_obj = Project.objects.filter(pk=project).first()
        if project_obj is None:
            raise CommandError(f"No project {project}.")
        try:
            job = runs.start_job(project_obj, self.kind, by=None, trigger="command", enqueue=False)
        except DomainError as exc:
            raise CommandError(exc.detail) from None
        bar = tqdm(total=100, desc=f"{self.kind} job {job.pk}", unit="%", file=self.stderr._out)
        original = job_state.report_progress

        def report(j, progress, message="", **kwargs):
            original(j, progress, message, **kwargs)
            if j.pk == job.pk:
                bar.n = round(100 * j.progress)
                bar.set_postfix_str(j.message[:60])
                bar.refresh()

        job_state.report_progress = report
        try:
            job = runs.run_job(job.pk)
        finally:
            job_state.report_progress = original
            job.refresh_from_db()
            bar.n = round(100 * job.progress)
            bar.set_postfix_str(job.message[:60])
            bar.close()
        if job.state != LearningJob.State.SUCCEEDED:
            raise CommandError(f"{self.kind} job {job.pk} failed: {job.error}")
        self.stdout.write(f"{self.kind} job {job.pk}: {job.message}")
