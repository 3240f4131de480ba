"""Create the shard chain heads, and on PostgreSQL make the event table append-only.

The trigger refuses UPDATE, DELETE and TRUNCATE. Two session settings open narrow doors:
``radqueue.audit_retention = on`` lets `audit_retain` delete events it has archived and verified;
``radqueue.audit_allow_truncate = on`` lets the test runner flush its throw-away database.
Neither is set by the application in normal operation.
"""

from django.db import migrations

SHARD_COUNT = 64
GENESIS = "0" * 64

FORWARD = """
CREATE OR REPLACE FUNCTION radqueue_audit_append_only() RETURNS trigger AS $$
BEGIN
    IF TG_OP = 'DELETE' AND current_setting('radqueue.audit_retention', true) = 'on' THEN
        RETURN OLD;
    END IF;
    IF TG_OP = 'TRUNCATE' AND current_setting('radqueue.audit_allow_truncate', true) = 'on' THEN
        RETURN NULL;
    END IF;
    RAISE EXCEPTION 'audit_auditevent is append-only: % refused', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END
$$ LANGUAGE plpgsql;

CREATE TRIGGER audit_event_no_update_delete
    BEFORE UPDATE OR DELETE ON audit_auditevent
    FOR EACH ROW EXECUTE FUNCTION radqueue_audit_append_only();

CREATE TRIGGER audit_event_no_truncate
    BEFORE TRUNCATE ON audit_auditevent
    FOR EACH STATEMENT EXECUTE FUNCTION radqueue_audit_append_only();
"""

BACKWARD = """
DROP TRIGGER IF EXISTS audit_event_no_update_delete ON audit_auditevent;
DROP TRIGGER IF EXISTS audit_event_no_truncate ON audit_auditevent;
DROP FUNCTION IF EXISTS radqueue_audit_append_only();
"""


def create_heads(apps, schema_editor):
    Head = apps.get_model("audit", "AuditChainHead")
    Head.objects.bulk_create(
        [Head(shard=s, seq=0, hash=GENESIS) for s in range(SHARD_COUNT)], ignore_conflicts=True
    )


def add_trigger(apps, schema_editor):
    # params=None: the function body's RAISE format holds a literal %, not a placeholder.
    schema_editor.execute(FORWARD, params=None)


def drop_trigger(apps, schema_editor):
    schema_editor.execute(BACKWARD, params=None)


class Migration(migrations.Migration):
    dependencies = [("audit", "0001_initial")]

    operations = [
        migrations.RunPython(create_heads, migrations.RunPython.noop),
        migrations.RunPython(add_trigger, drop_trigger),
    ]
