"""The audit event table: append-only, each row chained to its shard predecessor by SHA-256.

See audit.trail for the chain design. The model refuses updates and deletes; a
trigger (migration 0002) refuses them in the database as well, TRUNCATE included.
"""

from django.db import models


class AppendOnlyError(RuntimeError):
    pass


class AuditEventQuerySet(models.QuerySet):
    def update(self, **kwargs):
        raise AppendOnlyError("Audit events are append-only: they cannot be updated.")

    def delete(self):
        raise AppendOnlyError("Audit events are append-only: remove old ones with `manage.py audit_retain`.")


class AuditEvent(models.Model):
    class Outcome(models.TextChoices):
        ALLOWED = "allowed"
        DENIED = "denied"
        ERROR = "error"

    shard = models.PositiveSmallIntegerField()
    seq = models.BigIntegerField(help_text="Position in the shard's chain, from 1.")
    occurred_at = models.DateTimeField(help_text="UTC, microsecond precision, from the application server clock.")
    actor_id = models.BigIntegerField(null=True, blank=True)
    actor_roles = models.CharField(max_length=200, blank=True)
    actor_tier = models.PositiveSmallIntegerField(null=True, blank=True)
    action = models.CharField(max_length=40)
    object_type = models.CharField(max_length=60, blank=True)
    object_id = models.CharField(max_length=128, blank=True)
    project_id = models.BigIntegerField(null=True, blank=True)
    study_uid = models.CharField(max_length=64, blank=True)
    protocol_version = models.PositiveIntegerField(null=True, blank=True)
    client_ip = models.GenericIPAddressField(null=True, blank=True)
    user_agent = models.CharField(max_length=300, blank=True)
    request_id = models.CharField(max_length=64, blank=True)
    outcome = models.CharField(max_length=10, choices=Outcome.choices, default=Outcome.ALLOWED)
    reason = models.CharField(max_length=300, blank=True)
    extra = models.JSONField(default=dict, blank=True)
    prev_hash = models.CharField(max_length=64)
    hash = models.CharField(max_length=64)

    objects = AuditEventQuerySet.as_manager()

    class Meta:
        ordering = ["id"]
        constraints = [models.UniqueConstraint(fields=["shard", "seq"], name="audit_event_shard_seq")]
        indexes = [
            models.Index(fields=["occurred_at"]),
            models.Index(fields=["project_id", "occurred_at"]),
            models.Index(fields=["actor_id", "occurred_at"]),
            models.Index(fields=["study_uid"]),
            models.Index(fields=["action", "occurred_at"]),
        ]

    def __str__(self) -> str:
        return f"{self.occurred_at:%Y-%m-%d %H:%M:%S} {self.action} {self.object_type}:{self.object_id} {self.outcome}"

    def save(self, *args, **kwargs):
        if not self._state.adding:
            raise AppendOnlyError("Audit events are append-only: they cannot be updated.")
        super().save(*args, **kwargs)

    def delete(self, *args, **kwargs):
        raise AppendOnlyError("Audit events are append-only: they cannot be deleted.")


class AuditChainHead(models.Model):
    """The latest link of each shard's chain; its row lock is what serialises one shard's writers."""

    shard = models.PositiveSmallIntegerField(primary_key=True)
    seq = models.BigIntegerField(default=0)
    hash = models.CharField(max_length=64)
    # The hash before the head's last move: PostgreSQL's one-statement append moves the head with
    # a single UPDATE and reads the event's predecessor back from its RETURNING (no locking read
    # first). Informational otherwise; verification never reads it.
    prev_hash = models.CharField(max_length=64, blank=True, default="")

    def __str__(self) -> str:
        return f"shard {self.shard} head at seq {self.seq}"


class AuditAnchor(models.Model):
    """Where a shard's chain starts after retention removed its oldest events (signed)."""

    shard = models.PositiveSmallIntegerField(primary_key=True)
    seq = models.BigIntegerField(help_text="The last removed seq; the chain resumes at seq + 1.")
    hash = models.CharField(max_length=64, help_text="Hash of the last removed event.")
    archive = models.CharField(max_length=500, help_text="The verified archive holding the removed events.")
    signature = models.CharField(max_length=64)
    created_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"shard {self.shard} anchored after seq {self.seq}"
