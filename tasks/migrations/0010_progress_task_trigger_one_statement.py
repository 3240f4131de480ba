"""The task progress trigger (PostgreSQL) in one statement.

Migration 0007's trigger function looked the task's modality up through the SQL function
progress_modality, which PostgreSQL plans afresh on every call from PL/pgSQL (a SQL function's
plan lives for one outer query only), then inserted the two delta rows with two more statements:
0.3-0.45 ms per task state change, measured with EXPLAIN ANALYZE on 1,000,000 tasks, paid by
every claim that starts a task and every submit. One INSERT whose plan PL/pgSQL keeps for the
session, with the modality looked up inside it, writes the same rows in about 0.2 ms.
"""

import importlib

from django.db import migrations

ONE_STATEMENT = """
CREATE OR REPLACE FUNCTION progress_task_changed() RETURNS trigger AS $$
BEGIN
    -- A row for what the task stops counting as and one for what it counts as now (production
    -- tasks only; OLD is NULL on INSERT and NEW on DELETE), with the modality of the task as it
    -- is now (as it was, for a DELETE), looked up once: as 0007's function did.
    INSERT INTO tasks_tasktallydelta (project_id, batch_key, modality, state, tasks, reads_left)
    SELECT d.project_id, d.batch_key, m.modality, d.state, d.tasks, d.reads_left
    FROM (VALUES (OLD.project_id, COALESCE(OLD.batch_id, 0), OLD.state, -1,
                  -progress_reads_left(OLD.state, OLD.reads_required, OLD.reads_submitted),
                  TG_OP <> 'INSERT' AND OLD.kind = 'production'),
                 (NEW.project_id, COALESCE(NEW.batch_id, 0), NEW.state, 1,
                  progress_reads_left(NEW.state, NEW.reads_required, NEW.reads_submitted),
                  TG_OP <> 'DELETE' AND NEW.kind = 'production')
         ) AS d(project_id, batch_key, state, tasks, reads_left, counted)
    CROSS JOIN (SELECT COALESCE(
        (SELECT modality FROM core_series
         WHERE id = CASE WHEN TG_OP = 'DELETE' THEN OLD.series_id ELSE NEW.series_id END),
        (SELECT string_agg(j.value, '/' ORDER BY j.ord)
         FROM core_study s, jsonb_array_elements_text(s.modalities) WITH ORDINALITY AS j(value, ord)
         WHERE s.id = CASE WHEN TG_OP = 'DELETE' THEN OLD.study_id ELSE NEW.study_id END), '') AS modality) m
    WHERE d.counted;
    RETURN NULL;
END
$$ LANGUAGE plpgsql;
"""

# 0007's function, as it was (reversing this migration restores it).
_PREVIOUS = importlib.import_module("tasks.migrations.0007_progress_tallies").POSTGRES_TRIGGERS
_FROM = _PREVIOUS.index("CREATE OR REPLACE FUNCTION progress_task_changed()")
THREE_STATEMENTS = _PREVIOUS[_FROM:_PREVIOUS.index("$$ LANGUAGE plpgsql;", _FROM) + len("$$ LANGUAGE plpgsql;")]


def _run(sql: str):
    def run(apps, schema_editor):
        schema_editor.execute(sql, None)
    return run


class Migration(migrations.Migration):

    dependencies = [
        ("tasks", "0009_open_reads_index"),
    ]

    operations = [
        migrations.RunPython(_run(ONE_STATEMENT), _run(THREE_STATEMENTS)),
    ]
