"""Reads spent where the model is unsure: the protocol version's optional panel policy.

A protocol version may carry ``rules["panel_policy"]`` = ``{"enabled": true, "uncertainty_threshold": 0.6,
"action": "extra_read" | "radiologist_first_read"}`` (off when absent or not enabled). After a scoring
job, a queued production task whose uncertainty is at or above the threshold gets one more first read
(capped at 3, the Task check constraint) or radiologists as its first readers; a confident task keeps
the protocol's k reads and tier (never fewer). ``core.panel_rule.panel_for`` is the pure rule,
shared with the benchmark (bench/panel_policy.py); ``apply_panel_policy`` is the one service that changes panels.

Only QUEUED production tasks with no read taken are changed: a claimed read has already started on
the panel it was given, and gold and calibration tasks are references, never re-paneled.
"""

from django.db import transaction

from audit.trail import record_event
from core.broadcast import broadcast_on_commit
from core.panel_rule import EXTRA_READ, panel_for, policy_of
from tasks.models import QueueSlot, Read, Task
from tasks.states import TaskState


def _base(task: Task) -> tuple[int, int]:
    decision = task.panel_decision or {}
    return (decision.get("base_reads_required", task.reads_required),
            decision.get("base_first_read_tier", task.first_read_tier))


@transaction.atomic
def apply_panel_policy(project_id: int, uncertainties: dict[int, float], *, by=None, job_id=None) -> int:
    """Set the panel of each queued, unclaimed production task from its uncertainty; returns how
    many changed. One audit event and one broadcast for the batch."""
    tasks = list(Task.objects.select_for_update().select_related("protocol_version")
                 .filter(project_id=project_id, pk__in=list(uncertainties), kind=Task.Kind.PRODUCTION,
                         state=TaskState.QUEUED).order_by("pk"))  # pk order: the lock order everywhere
    if not tasks:
        return 0
    started = set(Read.objects.filter(task__in=tasks).values_list("task_id", flat=True))
    started |= set(QueueSlot.objects.filter(task__in=tasks, reader__isnull=False).values_list("task_id", flat=True))
    changed = []
    for task in tasks:
        policy = policy_of(task.protocol_version.rules)
        if task.pk in started or (policy is None and not task.panel_decision):
            continue
        k, tier = _base(task)
        u = float(uncertainties[task.pk])
        reads, first_tier = panel_for(u, policy, k, tier)
        if (reads, first_tier) == (task.reads_required, task.first_read_tier):
            continue
        slots = task.slots.count()
        if reads > slots:
            QueueSlot.objects.bulk_create([
                QueueSlot(project_id=project_id, task=task, priority=task.priority, tier=first_tier,
                          subspecialty=task.first_read_subspecialty) for _ in range(reads - slots)])
        elif reads < slots:
            extra = task.slots.order_by("-pk").values_list("pk", flat=True)[:slots - reads]
            QueueSlot.objects.filter(pk__in=list(extra)).delete()
        task.slots.update(tier=first_tier)
        before = (task.reads_required, task.first_read_tier)
        task.reads_required, task.first_read_tier = reads, first_tier
        task.panel_decision = None if (reads, first_tier) == (k, tier) else {
            "reason": f"model uncertainty {u:.3f} >= {float(policy['uncertainty_threshold']):g}: "
                      f"{policy.get('action', EXTRA_READ)}",
            "action": policy.get("action", EXTRA_READ), "uncertainty": round(u, 6),
            "threshold": float(policy["uncertainty_threshold"]), "base_reads_required": k,
            "base_first_read_tier": int(tier)}
        task.save(update_fields=["reads_required", "first_read_tier", "panel_decision", "updated_at"])
        changed.append({"task": task.pk, "from": list(before), "to": [reads, int(first_tier)]})
    if changed:
        record_event("panel_policy", actor=by, project_id=project_id, object_type="tasks.task",
                     extra={"job": job_id, "tasks": changed[:200], "changed": len(changed)})
        broadcast_on_commit(project_id, "tasks.panels_changed", {"tasks": [c["task"] for c in changed[:200]],
                                                                 "changed": len(changed)})
    return len(changed)
