"""Report people who read on a project and also hold a role there that sees or oversees reads.

core.memberships refuses such grants from now on. Memberships made before are only reported, never
changed: deactivating one here would take access away without an audit event and without the
release of the person's open reads that core.memberships runs, and a migration must not fail on
data it can tell a person how to fix. Each line names the membership ids to end through the API
(DELETE /api/projects/{project}/memberships/{id}/); rerun the report with
``manage.py migrate core 0004 && manage.py migrate core``.
"""

import logging

from django.db import migrations

logger = logging.getLogger("radqueue.migrations")

READER_ROLES = {"annotator", "radiologist", "subspecialist"}
EXCLUDED_FROM_READERS = {"qa", "manager", "client", "auditor", "privacy_officer"}


def reader_role_conflicts(apps) -> list[str]:
    """One line per (person, project) holding a reader role and an excluded role, both active."""
    membership = apps.get_model("core", "Membership")
    held: dict[tuple, list] = {}
    rows = (membership.objects.filter(is_active=True, role__in=READER_ROLES | EXCLUDED_FROM_READERS)
            .order_by("project_id", "user_id", "role").values_list("project_id", "user_id", "user__pseudonym",
                                                                      "role", "id"))
    for project_id, user_id, pseudonym, role, membership_id in rows:
        held.setdefault((project_id, user_id, pseudonym), []).append((role, membership_id))
    lines = []
    for (project_id, user_id, pseudonym), roles in held.items():
        names = {role for role, _ in roles}
        if names & READER_ROLES and names & EXCLUDED_FROM_READERS:
            listed = ", ".join(f"{role} (membership {membership_id})" for role, membership_id in roles)
            lines.append(f"project {project_id}: user {user_id} ({pseudonym}) reads and holds an excluded role: "
                         f"{listed}")
    return lines


def report(apps, schema_editor):
    lines = reader_role_conflicts(apps)
    if not lines:
        return
    logger.warning("Reader role conflicts: %d. Each person below reads on a project and also holds QA, manager, "
                   "client, auditor or privacy officer there; end one role of each pair through the API (this "
                   "migration changed nothing):\n%s", len(lines), "\n".join(f"  {line}" for line in lines))


class Migration(migrations.Migration):

    dependencies = [
        ("core", "0004_gold_and_calibration"),
    ]

    operations = [
        migrations.RunPython(report, migrations.RunPython.noop, elidable=True),
    ]
