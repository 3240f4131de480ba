"""What the classifier learns from a consensus: one class index per task, from one protocol label.

classification / ordinal labels: the label's categories are the classes; any other kind
(masks, boxes, landmarks...): absent / present.
"""

from tasks.findings.loading import labels_of
from tasks.models import Task

PRESENCE = ["absent", "present"]


def classes_for(task: Task, label_key: str) -> tuple[str, list[str]]:
    """(kind, classes) of the label in the task's protocol version; ValueError when it has none."""
    spec = labels_of(task.protocol_version_id).get(label_key)
    if spec is None:
        raise ValueError(f"the protocol has no label {label_key!r}")
    if spec.kind in ("classification", "ordinal"):
        return spec.kind, list(spec.categories)
    return spec.kind, PRESENCE


def class_index(findings: list[dict], label_key: str, kind: str, classes: list[str]) -> int | None:
    """The class of a consensus, or None when it says nothing usable about the label."""
    items = [f for f in findings or [] if f.get("label") == label_key]
    if kind in ("classification", "ordinal"):
        if not items or items[0].get("value") not in classes:
            return None
        return classes.index(items[0]["value"])
    return 1 if items else 0
