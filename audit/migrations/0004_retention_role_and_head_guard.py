"""Make retention a database role's privilege, and chain heads impossible to rewind or delete.

Before: any session could set ``radqueue.audit_retention = on`` (or ``audit_allow_truncate``) and
delete events, and the head table had no trigger, so the application's own credentials could cut
a chain's newest events and its head and leave nothing to compare against. Now the two settings
open their doors only for a member of the NOLOGIN role ``radqueue_retention`` (superusers are
members of every role: the application's role must be neither), and the head table accepts only
the append's move (seq + 1, prev_hash = the old hash) and a new head at genesis. Anchors
(``audit_auditanchor``) are written by retention only, so by its role only. See docs/audit.md.
"""

from django.db import migrations

GENESIS = "0" * 64

FORWARD = f"""
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'radqueue_retention') THEN
        CREATE ROLE radqueue_retention NOLOGIN;
    END IF;
END
$$;

CREATE OR REPLACE FUNCTION radqueue_audit_retention_allowed() RETURNS boolean AS $$
    SELECT pg_has_role(current_user, 'radqueue_retention', 'MEMBER')
$$ LANGUAGE sql STABLE;

CREATE OR REPLACE FUNCTION radqueue_audit_append_only() RETURNS trigger AS $$
BEGIN
    IF TG_OP = 'DELETE' AND current_setting('radqueue.audit_retention', true) = 'on'
            AND radqueue_audit_retention_allowed() THEN
        RETURN OLD;
    END IF;
    IF TG_OP = 'TRUNCATE' AND current_setting('radqueue.audit_allow_truncate', true) = 'on'
            AND radqueue_audit_retention_allowed() THEN
        RETURN NULL;
    END IF;
    RAISE EXCEPTION 'audit_auditevent is append-only: % refused', TG_OP
        USING ERRCODE = 'insufficient_privilege',
              HINT = 'Only a member of radqueue_retention removes events (manage.py audit_retain).';
END
$$ LANGUAGE plpgsql;

CREATE OR REPLACE FUNCTION radqueue_audit_head_guard() RETURNS trigger AS $$
BEGIN
    IF TG_OP = 'UPDATE' AND NEW.shard = OLD.shard AND NEW.seq = OLD.seq + 1 AND NEW.prev_hash = OLD.hash THEN
        RETURN NEW;
    END IF;
    IF TG_OP = 'INSERT' AND NEW.seq = 0 AND NEW.hash = '{GENESIS}' THEN
        RETURN NEW;
    END IF;
    IF TG_OP = 'TRUNCATE' AND current_setting('radqueue.audit_allow_truncate', true) = 'on'
            AND radqueue_audit_retention_allowed() THEN
        RETURN NULL;
    END IF;
    IF TG_OP <> 'TRUNCATE' AND current_setting('radqueue.audit_retention', true) = 'on'
            AND radqueue_audit_retention_allowed() THEN
        RETURN CASE WHEN TG_OP = 'DELETE' THEN OLD ELSE NEW END;
    END IF;
    RAISE EXCEPTION 'audit_auditchainhead only moves forward one event at a time: % refused', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END
$$ LANGUAGE plpgsql;

CREATE TRIGGER audit_head_forward_only
    BEFORE INSERT OR UPDATE OR DELETE ON audit_auditchainhead
    FOR EACH ROW EXECUTE FUNCTION radqueue_audit_head_guard();

CREATE TRIGGER audit_head_no_truncate
    BEFORE TRUNCATE ON audit_auditchainhead
    FOR EACH STATEMENT EXECUTE FUNCTION radqueue_audit_head_guard();

CREATE OR REPLACE FUNCTION radqueue_audit_anchor_guard() RETURNS trigger AS $$
BEGIN
    IF radqueue_audit_retention_allowed() AND (TG_OP <> 'TRUNCATE'
            OR current_setting('radqueue.audit_allow_truncate', true) = 'on') THEN
        RETURN CASE WHEN TG_OP = 'DELETE' THEN OLD WHEN TG_OP = 'TRUNCATE' THEN NULL ELSE NEW END;
    END IF;
    RAISE EXCEPTION 'audit_auditanchor is written by retention only: % refused', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END
$$ LANGUAGE plpgsql;

CREATE TRIGGER audit_anchor_retention_only
    BEFORE INSERT OR UPDATE OR DELETE ON audit_auditanchor
    FOR EACH ROW EXECUTE FUNCTION radqueue_audit_anchor_guard();

CREATE TRIGGER audit_anchor_no_truncate
    BEFORE TRUNCATE ON audit_auditanchor
    FOR EACH STATEMENT EXECUTE FUNCTION radqueue_audit_anchor_guard();
"""

# Back to migration 0002's event trigger (the session setting alone); the role stays, as roles
# belong to the cluster, not to this database.
BACKWARD = """
DROP TRIGGER IF EXISTS audit_head_forward_only ON audit_auditchainhead;
DROP TRIGGER IF EXISTS audit_head_no_truncate ON audit_auditchainhead;
DROP TRIGGER IF EXISTS audit_anchor_retention_only ON audit_auditanchor;
DROP TRIGGER IF EXISTS audit_anchor_no_truncate ON audit_auditanchor;
DROP FUNCTION IF EXISTS radqueue_audit_head_guard();
DROP FUNCTION IF EXISTS radqueue_audit_anchor_guard();

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

DROP FUNCTION IF EXISTS radqueue_audit_retention_allowed();
"""


def forward(apps, schema_editor):
    # params=None: the function bodies' RAISE formats hold a literal %, not a placeholder.
    schema_editor.execute(FORWARD, params=None)


def backward(apps, schema_editor):
    schema_editor.execute(BACKWARD, params=None)


class Migration(migrations.Migration):
    dependencies = [("audit", "0003_head_prev_hash")]

    operations = [migrations.RunPython(forward, backward)]
