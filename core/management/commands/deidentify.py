"""De-identify a folder of DICOM files offline, with the same rules as ingest (core.dicom.deid)."""

from pathlib import Path

from django.core.management.base import BaseCommand, CommandError
from tqdm import tqdm

from core.dicom.deid import DeidOptions, NotDicomError, deidentify_file


class Command(BaseCommand):
    help = (
        "De-identify every DICOM file under IN_DIR into OUT_DIR (PS3.15 Basic Profile plus the chosen options). "
        "Folders are mirrored; each file is named by its new SOP Instance UID. Non-DICOM files are reported "
        "and skipped; the command fails if any DICOM file could not be de-identified."
    )

    def add_arguments(self, parser):
        parser.add_argument("in_dir", type=Path)
        parser.add_argument("out_dir", type=Path)
        parser.add_argument("--project-key", required=True,
                            help="The project's de-identification key; its UTF-8 bytes are the secret that keys "
                                 "UIDs, pseudonyms and date shifts, so the same key gives the same output.")
        parser.add_argument("--retain-dates", action="store_true",
                            help="Retain Longitudinal Temporal Information, Modified Dates (per-patient shift).")
        parser.add_argument("--retain-patient-characteristics", action="store_true",
                            help="Keep sex, age (over 89 becomes 090Y), size, weight...")
        parser.add_argument("--clean-descriptors", action="store_true",
                            help="Keep study/series descriptions and similar, scrubbed of identifiers.")
        parser.add_argument("--retain-device-identity", action="store_true")
        parser.add_argument("--retain-institution-identity", action="store_true")
        parser.add_argument("--keep-private-creator", action="append", default=[], metavar="NAME",
                            help="Keep the private blocks of this creator (repeatable); all others are removed.")

    def handle(self, *args, in_dir: Path, out_dir: Path, project_key: str, **options):
        in_dir, out_dir = in_dir.resolve(), out_dir.resolve()
        if not in_dir.is_dir():
            raise CommandError(f"{in_dir} is not a folder")
        if out_dir == in_dir:
            raise CommandError("OUT_DIR must differ from IN_DIR: sources are never overwritten")
        if not project_key:
            raise CommandError("--project-key must not be empty")
        deid_options = DeidOptions(
            retain_longitudinal_modified_dates=options["retain_dates"],
            retain_patient_characteristics=options["retain_patient_characteristics"],
            clean_descriptors=options["clean_descriptors"],
            retain_device_identity=options["retain_device_identity"],
            retain_institution_identity=options["retain_institution_identity"],
            private_creator_allowlist=tuple(options["keep_private_creator"]),
        )
        secret = project_key.encode("utf-8")
        # Listed before writing, and without OUT_DIR, so an OUT_DIR inside IN_DIR is never read back.
        sources = sorted(p for p in in_dir.rglob("*") if p.is_file() and out_dir not in p.parents)
        done = skipped = failed = 0
        for source in tqdm(sources, desc="de-identifying", unit="file", disable=not sources):
            relative = source.relative_to(in_dir)
            try:
                target, _ = deidentify_file(source, out_dir / relative.parent, secret=secret, options=deid_options)
            except NotDicomError:
                skipped += 1
                self._report(self.stdout, f"skipped  {relative}: not a readable DICOM file")
            except Exception as exc:
                failed += 1
                self._report(self.stderr, f"FAILED   {relative}: {type(exc).__name__}: {exc}")
            else:
                done += 1
                self._report(self.stdout, f"ok       {relative} -> {target.relative_to(out_dir)}")
        self.stdout.write(f"{done} de-identified, {skipped} skipped (not DICOM), {failed} failed")
        if failed:
            raise CommandError(f"{failed} file(s) could not be de-identified")

    def _report(self, stream, message: str) -> None:
        with tqdm.external_write_mode():  # keeps the progress bar below the lines
            stream.write(message)
