import django.db.models.deletion
from django.conf import settings
from django.db import migrations, models


class Migration(migrations.Migration):
    """Who imported a gold reference (never served it as a check), and the lapsed leases of check
    reads, which hold no queue slot, for the sweep to find."""

    dependencies = [
        ('core', '0004_gold_and_calibration'),
        ('tasks', '0010_progress_task_trigger_one_statement'),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.AddField(
            model_name='consensus',
            name='imported_by',
            field=models.ForeignKey(blank=True, help_text='Who imported a gold reference: never served it as a check.',
                                    null=True, on_delete=django.db.models.deletion.PROTECT, related_name='+',
                                    to=settings.AUTH_USER_MODEL),
        ),
        migrations.AddIndex(
            model_name='read',
            index=models.Index(condition=models.Q(('is_check', True), ('state', 'claimed')),
                               fields=['lease_expires_at'], name='read_check_leased'),
        ),
    ]
