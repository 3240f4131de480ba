"""Bulk ingest of a folder (or file, or .zip) of DICOM into a project, with a progress bar."""

import os
import zipfile
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError
from tqdm import tqdm

from core.dicom.archives import iter_zip_members
from core.dicom.ingest import IngestItem, ingest_files
from core.models import Project, User


def folder_items(root: Path):
    paths = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
    for path in paths:
        name = str(path.relative_to(root.parent if root.is_file() else root))
        if path.name.upper() == "DICOMDIR":
            yield IngestItem(name, reason="DICOMDIR media index skipped (its instances are ingested)")
            continue
        if zipfile.is_zipfile(path):
            try:
                with path.open("rb") as handle:
                    for member in iter_zip_members(handle):
                        if member.spool is None:
                            yield IngestItem(f"{name}/{member.name}", reason=member.reason)
                        else:
                            yield IngestItem(f"{name}/{member.name}", reader=member.spool.reader(),
                                             size=member.spool.size)
            except (zipfile.BadZipFile, OSError) as exc:
                yield IngestItem(name, reason=f"corrupt or refused zip archive: {exc}")
            continue
        yield IngestItem(name, path=str(path), size=path.stat().st_size)


class Command(BaseCommand):
    help = "Ingest a folder of DICOM files (recursively; .zip archives too) into a project."

    def add_arguments(self, parser):
        parser.add_argument("path", type=Path)
        parser.add_argument("--project", type=int, required=True, help="Project id")
        parser.add_argument("--user", help="Username recorded as the ingesting person in the audit trail")
        parser.add_argument("--quiet-files", action="store_true", help="Print only the summary")
        parser.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                            help="Processes that parse and de-identify in parallel (default: one per CPU)")

    def handle(self, *args, path: Path, project: int, user=None, quiet_files=False, workers=1, **options):
        if not path.exists():
            raise CommandError(f"{path} does not exist")
        try:
            target = Project.objects.get(pk=project)
        except Project.DoesNotExist:
            raise CommandError(f"no project {project}") from None
        by = User.objects.filter(username=user).first() if user else None
        if user and by is None:
            raise CommandError(f"no user {user}")
        total = 1 if path.is_file() else sum(1 for p in path.rglob("*") if p.is_file())
        with tqdm(total=total, unit="file", disable=None) as bar:
            report = ingest_files(target, folder_items(path), by=by, source="folder", workers=workers,
                                  on_progress=lambda _: bar.update(1))
        if not quiet_files:
            for f in report.files:
                if f.status == "rejected":
                    self.stderr.write(f"rejected  {f.name}: {f.reason}")
        self.stdout.write(f"accepted {report.accepted}, duplicate {report.duplicate}, rejected {report.rejected}, "
                          f"quarantined {sum(1 for f in report.files if f.quarantined)} (batch {report.batch_id})")
        if report.rejected and not (report.accepted or report.duplicate):
            raise CommandError("no file could be ingested")
