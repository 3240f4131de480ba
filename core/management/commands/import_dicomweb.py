"""Pull a study from a PACS (or any DICOMweb server) and ingest it: WADO-RS through dicomweb-client."""

import io

from dicomweb_client.api import DICOMwebClient
from django.core.management.base import BaseCommand, CommandError
from requests import RequestException
from tqdm import tqdm

from core.dicom.ingest import IngestItem, ingest_files
from core.models import Project, User


def study_items(client: DICOMwebClient, study_uid: str):
    for number, ds in enumerate(client.iter_study(study_uid), start=1):
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        size = buffer.tell()
        buffer.seek(0)
        yield IngestItem(f"{study_uid} #{number}", reader=buffer, size=size)


class Command(BaseCommand):
    help = "Retrieve a study over DICOMweb (WADO-RS) from URL and ingest it into a project."

    def add_arguments(self, parser):
        parser.add_argument("url", help="DICOMweb root, e.g. http://pacs:8042/dicom-web")
        parser.add_argument("--project", type=int, required=True)
        parser.add_argument("--study", required=True, help="StudyInstanceUID at the source")
        parser.add_argument("--user", help="Username recorded in the audit trail")
        parser.add_argument("--token", help="Bearer token for the source, if it needs one")

    def handle(self, *args, url, project, study, user=None, token=None, **options):
        try:
            target = Project.objects.get(pk=project)
        except Project.DoesNotExist:
            raise CommandError(f"no project {project}") from None
        by = User.objects.filter(username=user).first() if user else None
        headers = {"Authorization": f"Bearer {token}"} if token else None
        client = DICOMwebClient(url=url, headers=headers)
        try:
            with tqdm(unit="instance", disable=None) as bar:
                report = ingest_files(target, study_items(client, study), by=by, source="dicomweb",
                                      on_progress=lambda _: bar.update(1))
        except RequestException as exc:
            raise CommandError(f"could not retrieve study {study} from {url}: {exc}") from None
        self.stdout.write(f"accepted {report.accepted}, duplicate {report.duplicate}, rejected {report.rejected} "
                          f"(batch {report.batch_id})")
        if not report.files:
            raise CommandError(f"the source returned no instances for study {study}")
