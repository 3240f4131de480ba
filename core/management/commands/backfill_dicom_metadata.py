"""Record the WADO-RS metadata and frame layout of instances that have none (ingested before ingest
recorded them, or stored by a path that does not): core.dicom.metadata."""

from django.core.management.base import BaseCommand

from core.dicom import metadata
from core.dicom.models import Instance


class Command(BaseCommand):
    help = ("Parse each instance without recorded metadata from its stored object once and record its "
            "DICOM JSON (encrypted) and frame layout, so DICOMweb serves it without parsing. Idempotent.")

    def add_arguments(self, parser):
        parser.add_argument("--project", type=int, help="Only this project's instances.")

    def handle(self, *args, project=None, **options):
        instances = Instance.objects.all() if project is None else Instance.objects.filter(project_id=project)
        done = metadata.backfill(instances)
        self.stdout.write(f"{done} instances recorded; every instance{'' if project is None else ' of the project'} "
                          "now has its metadata recorded.")
