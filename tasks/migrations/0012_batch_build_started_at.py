"""When a batch's delivery build started, so a build that never finishes can be marked failed
(tasks.batches). Batches building now get their delivery time: the timeout then counts from it."""

from django.db import migrations, models
from django.db.models import F


def time_current_builds(apps, schema_editor):
    Batch = apps.get_model("tasks", "Batch")
    Batch.objects.filter(export_state="building", export_started_at__isnull=True).update(
        export_started_at=F("delivered_at"))


class Migration(migrations.Migration):

    dependencies = [
        ('tasks', '0011_consensus_importer_and_check_leases'),
    ]

    operations = [
        migrations.AddField(
            model_name='batch',
            name='export_started_at',
            field=models.DateTimeField(blank=True, null=True,
                                       help_text='When the current or last build was asked for, or taken by a '
                                                 'worker: the timeout counts from it.'),
        ),
        migrations.AlterField(
            model_name='batch',
            name='export_error',
            field=models.CharField(blank=True, max_length=500,
                                   help_text='Why the last build failed: a short reason (the server log has the '
                                             'details); empty unless export_state is failed.'),
        ),
        migrations.AlterField(
            model_name='batch',
            name='export_state',
            field=models.CharField(choices=[('none', 'Not built'), ('building', 'Building'), ('ready', 'Ready'),
                                            ('failed', 'Failed')], default='none', max_length=10,
                                   help_text='The delivery build (report and export files): building until its job '
                                             'records ready or failed; a build that does not finish within '
                                             'BATCH_BUILD_TIMEOUT seconds is marked failed. A failed build is '
                                             'rebuilt with POST .../exports/.'),
        ),
        migrations.RunPython(time_current_builds, migrations.RunPython.noop),
    ]
