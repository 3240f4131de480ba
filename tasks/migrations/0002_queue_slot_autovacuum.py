"""Keep the head of the queue clean on PostgreSQL.

Submitted reads delete their slot, so dead tuples pile up exactly where every claim starts its
index scan (highest priority, oldest). With the default scale factor (20% of the table) a queue
of two million slots would carry 400,000 dead entries before autovacuum looked at it, and each
claim would step over them. A fixed threshold of 2,000 changes with no cost delay vacuums the
table every few seconds under load; fillfactor 80 leaves room for the lease updates.
"""

from django.db import migrations

FORWARD = """
ALTER TABLE tasks_queueslot SET (
    autovacuum_vacuum_scale_factor = 0.0, autovacuum_vacuum_threshold = 2000,
    autovacuum_analyze_scale_factor = 0.0, autovacuum_analyze_threshold = 5000,
    autovacuum_vacuum_cost_delay = 0, fillfactor = 80
)"""
BACKWARD = """
ALTER TABLE tasks_queueslot RESET (
    autovacuum_vacuum_scale_factor, autovacuum_vacuum_threshold, autovacuum_analyze_scale_factor,
    autovacuum_analyze_threshold, autovacuum_vacuum_cost_delay, fillfactor
)"""


def forward(apps, schema_editor):
    schema_editor.execute(FORWARD)


def backward(apps, schema_editor):
    schema_editor.execute(BACKWARD)


class Migration(migrations.Migration):
    dependencies = [("tasks", "0001_initial")]

    operations = [migrations.RunPython(forward, backward)]
