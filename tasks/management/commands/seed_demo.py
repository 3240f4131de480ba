"""Seed a demo: one vendor, one client, one project, a user of every role. Idempotent."""

import os

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from core.memberships import grant_membership
from core.models import Organization, Project, User
from core.protocols import create_protocol_version
from core.roles import Role

DEMO_PASSWORD = "radqueue-demo-2026"

# Each person: their username, role, sub-specialties, which organisation, and staff status.
CAST = [
    ("manager", Role.MANAGER, [], "vendor", True),
    ("annotator", Role.ANNOTATOR, [], "vendor", False),
    ("second_annotator", Role.ANNOTATOR, [], "vendor", False),
    ("radiologist", Role.RADIOLOGIST, ["chest"], "vendor", False),
    ("neuro_subspecialist", Role.SUBSPECIALIST, ["neuro"], "vendor", False),
    ("breast_subspecialist", Role.SUBSPECIALIST, ["breast"], "vendor", False),
    ("qa", Role.QA, [], "vendor", False),
    ("auditor", Role.AUDITOR, [], "vendor", False),
    ("privacy_officer", Role.PRIVACY_OFFICER, [], "vendor", False),
    ("client_viewer", Role.CLIENT, [], "client", False),
]


class Command(BaseCommand):
    help = "Create a demo organisation, project and readers of every tier (development only)."

    def add_arguments(self, parser):
        parser.add_argument("--allow-production", action="store_true",
                            help="Seed even with DEBUG off (never on a real deployment).")
        parser.add_argument("--url", default=None,
                            help="Where the server will answer, for the printed example "
                                 "(default: http://$HOST:$PORT, as `make run` sets them, else 127.0.0.1:8000).")

    @transaction.atomic
    def handle(self, *args, allow_production=False, url=None, **options):
        if not settings.DEBUG and not allow_production:
            raise CommandError("seed_demo creates users with a published password; it runs only with DEBUG on.")
        vendor, _ = Organization.objects.get_or_create(name="Demo Imaging Labels Ltd", defaults={"kind": "vendor"})
        client, _ = Organization.objects.get_or_create(name="Demo Radiology AI Inc", defaults={"kind": "client"})
        admin = self._user("admin", vendor, staff=True, superuser=True)
        manager = self._user("manager", vendor, staff=True, org_admin=True)
        project = Project.objects.filter(client=client, name="Demo multi-modality study").first()
        if project is None:
            project = Project.objects.create(
                name="Demo multi-modality study", client=client, vendor=vendor, reads_per_task=2,
                modalities=["CT", "MG", "MR"], description="Synthetic studies for trying radqueue.",
            )
            create_protocol_version(project=project, name="Generic findings v1", template="generic_findings",
                                    by=manager)
        people = [("admin", "superuser (all projects)")]
        for username, role, subs, org_kind, staff in CAST:
            user = manager if username == "manager" else self._user(
                username, vendor if org_kind == "vendor" else client, staff=staff)
            grant_membership(project=project, user=user, role=role, subspecialties=subs, by=admin)
            people.append((username, role + (f" ({', '.join(subs)})" if subs else "")))
        self._seed_studies(project)
        self.stdout.write(self.style.SUCCESS(f"Demo project #{project.pk} '{project.name}' is ready."))
        self.stdout.write(f"Every demo user's password is: {DEMO_PASSWORD}")
        for username, what in people:
            self.stdout.write(f"  {username:22s} {what}")
        body = f'{{"username":"manager","password":"{DEMO_PASSWORD}"}}'
        url = (url or f"http://{os.environ.get('HOST', '127.0.0.1')}:{os.environ.get('PORT', '8000')}").rstrip("/")
        self.stdout.write(f"Get a token: curl -s -X POST {url}/api/auth/token/ "
                          f"-H 'Content-Type: application/json' -d '{body}'")

    def _user(self, username, org, *, staff=False, superuser=False, org_admin=False) -> User:
        user, created = User.objects.get_or_create(
            username=username,
            defaults={"organization": org, "is_staff": staff, "is_superuser": superuser, "is_org_admin": org_admin,
                      "email": f"{username}@demo.invalid"},
        )
        if created:
            user.set_password(DEMO_PASSWORD)
            user.save(update_fields=["password"])
        return user

    def _seed_studies(self, project) -> None:
        try:
            from core.dicom.demo import seed_demo_studies
        except ImportError:
            return  # ingest not installed in this build
        count = seed_demo_studies(project)
        self.stdout.write(f"Synthetic DICOM studies ingested: {count}")
        from tasks.creation import create_tasks

        created = create_tasks(project, by=None)
        queued = project.tasks.filter(state="queued").count()
        self.stdout.write(f"Reading tasks: {len(created)} created now, {queued} queued "
                          "(annotators claim with POST /api/queue/next/)")
