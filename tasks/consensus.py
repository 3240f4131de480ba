"""Agreement between a task's k reads, the consensus label, and adjudication when they disagree.

Agreement is decided per label of the schema, with the protocol version's ``"agreement"`` rules
(defaults in AGREEMENT_DEFAULTS):
- classification: every read gives the same value;
- ordinal grade: values within ``grade_within`` steps of the ordered categories;
- mask: pairwise Dice of each reader's union mask >= ``dice``;
- bbox (2D and 3D): every box of each read matched in every other read at IoU >= ``iou``
  (Hungarian assignment, per image for 2D boxes);
- polygon: as boxes, on the polygons' bounding boxes;
- landmark: matched points within ``landmark_mm`` millimetres (pixel spacing) or pixels;
- measurement: values within ``measurement_rel`` (relative) of each other;
- a label nobody used agrees; a label some used and others did not disagrees.
Agreed tasks get a consensus at once: majority value, median grade, strict-majority voxel vote
for masks (both readers for k = 2), matched boxes and points averaged, mean measurement. A
disagreement opens an adjudication, routed by the task's adjudication tier and sub-specialty,
in the same transaction as the last submit.
"""

import functools
from collections import Counter
from itertools import combinations

import numpy as np
from django.db import connection, transaction
from django.utils import timezone

from audit.trail import record_event
from core.broadcast import broadcast_on_commit
from pgsql import rows
from tasks.findings.loading import labels_of
from tasks.findings.masks import rle_decode, rle_encode
from tasks.learning_seam import learning
from tasks.locks import ROW_LOCK
from tasks.models import Adjudication, Consensus, Read, Task
from tasks.states import ReadState, TaskState
from tasks.transitions import advance_task

AGREEMENT_DEFAULTS = {"grade_within": 0, "dice": 0.7, "iou": 0.5, "landmark_mm": 5.0, "measurement_rel": 0.1}


def agreement_rules(task: Task) -> dict:
    return {**AGREEMENT_DEFAULTS, **(task.protocol_version.rules or {}).get("agreement", {})}


def findings_of_label(findings: list[dict], label: str) -> list[dict]:
    return [f for f in findings or [] if f["label"] == label]


def _union_mask(items: list[dict]) -> np.ndarray | None:
    masks = [rle_decode(f["mask"]["rle"], tuple(f["mask"]["shape"])) for f in items if "mask" in f]
    if not masks:
        return None
    union = masks[0].astype(bool)
    for mask in masks[1:]:
        union |= mask.astype(bool)
    return union


def _boxes(items: list[dict]) -> dict[tuple, list[tuple]]:
    """Boxes of one read, grouped by the image (2D) or series (3D) they lie on."""
    grouped: dict[tuple, list[tuple]] = {}
    for f in items:
        if "bbox" in f:
            b = f["bbox"]
            grouped.setdefault((b["sop_instance_uid"], b["frame"]), []).append((b["x0"], b["y0"], b["x1"], b["y1"]))
        elif "bbox3d" in f:
            b = f["bbox3d"]
            grouped.setdefault((b["series_uid"],), []).append((*b["min"], *b["max"]))
        elif "polygon" in f:
            p = f["polygon"]
            xs, ys = [pt[0] for pt in p["points"]], [pt[1] for pt in p["points"]]
            grouped.setdefault((p["sop_instance_uid"], p["frame"]), []).append((min(xs), min(ys), max(xs), max(ys)))
    return grouped


def _boxes_agree(a: list[dict], b: list[dict], iou: float) -> tuple[bool, float]:
    from tasks import metrics

    ga, gb = _boxes(a), _boxes(b)
    matched = total = 0
    for key in set(ga) | set(gb):
        result = metrics.match_detections(ga.get(key, []), gb.get(key, []), iou=iou)
        matched += result["tp"]
        total += result["tp"] + result["fp"] + result["fn"]
    return matched == total, (matched / total if total else 1.0)


def _points(items: list[dict]) -> list[tuple[float, float, float]]:
    points = []
    for f in items:
        if "point_mm" in f:
            points.append(tuple(f["point_mm"]["xyz"]))
        elif "point" in f:
            points.append((f["point"]["x"], f["point"]["y"], 0.0))
    return points


def compare_pair(kind: str, spec, a: list[dict], b: list[dict], rules: dict) -> tuple[bool, float | None]:
    """(agree, figure) for one label between two reads that both used it."""
    if kind == "classification":
        return {f["value"] for f in a} == {f["value"] for f in b}, None
    if kind == "ordinal":
        order = {c: i for i, c in enumerate(spec.categories)}
        steps = abs(order[a[0]["value"]] - order[b[0]["value"]])
        return steps <= rules["grade_within"], float(steps)
    if kind == "mask":
        from tasks import metrics

        ma, mb = _union_mask(a), _union_mask(b)
        if ma is None or mb is None or ma.shape != mb.shape:
            return False, 0.0
        d = metrics.dice(ma, mb)
        return d >= rules["dice"], round(float(d), 4)
    if kind in ("bbox", "polygon"):
        ok, fraction = _boxes_agree(a, b, rules["iou"])
        return ok, round(fraction, 4)
    if kind == "landmark":
        pa, pb = _points(a), _points(b)
        if len(pa) != len(pb):
            return False, None
        distances = [min(float(np.linalg.norm(np.subtract(p, q))) for q in pb) for p in pa]
        worst = max(distances, default=0.0)
        return worst <= rules["landmark_mm"], round(worst, 3)
    if kind == "measurement":
        va, vb = float(a[0]["value"]), float(b[0]["value"])
        scale = max(abs(va), abs(vb), 1e-9)
        rel = abs(va - vb) / scale
        return rel <= rules["measurement_rel"], round(rel, 4)
    return False, None


def compute_agreement(task: Task, reads: list[Read]) -> dict:
    """Per-label agreement of the reads: {label: {"kind", "agree", "figures": [pairwise]}}, plus "agree"."""
    labels, rules = labels_of(task.protocol_version_id), agreement_rules(task)
    result: dict = {}
    for key, spec in labels.items():
        per_read = [findings_of_label(r.findings, key) for r in reads]
        used = [bool(items) for items in per_read]
        if not any(used):
            continue
        if not all(used):
            result[key] = {"kind": spec.kind, "agree": False, "figures": [], "reason": "not every reader used it"}
            continue
        pairs = [compare_pair(spec.kind, spec, a, b, rules) for a, b in combinations(per_read, 2)]
        result[key] = {"kind": spec.kind, "agree": all(ok for ok, _ in pairs), "figures": [f for _, f in pairs]}
    return {"agree": all(v["agree"] for v in result.values()), "labels": result, "rules": rules}


def _mean_boxes(items_per_read: list[list[dict]], iou: float) -> list[dict]:
    """Read 0's boxes, each averaged with its matches in the other reads."""
    from tasks import metrics

    base = items_per_read[0]
    averaged = []
    for finding in base:
        geometry_key = "bbox" if "bbox" in finding else "bbox3d" if "bbox3d" in finding else None
        if geometry_key is None:
            averaged.append(finding)
            continue
        fields = ["x0", "y0", "x1", "y1"] if geometry_key == "bbox" else ["min", "max"]
        collected = [finding[geometry_key]]
        for other in items_per_read[1:]:
            same = [f[geometry_key] for f in other if geometry_key in f]
            if not same:
                continue
            if geometry_key == "bbox":
                boxes = [(g["x0"], g["y0"], g["x1"], g["y1"]) for g in same]
                target = (collected[0]["x0"], collected[0]["y0"], collected[0]["x1"], collected[0]["y1"])
            else:
                boxes = [(*g["min"], *g["max"]) for g in same]
                target = (*collected[0]["min"], *collected[0]["max"])
            match = metrics.match_detections([target], boxes, iou=iou)
            if match["matches"]:
                collected.append(same[match["matches"][0][1]])
        merged = dict(finding[geometry_key])
        for field in fields:
            values = np.array([c[field] for c in collected], dtype=float)
            mean = values.mean(axis=0)
            merged[field] = [int(round(v)) for v in mean] if geometry_key == "bbox3d" else round(float(mean), 2)
        averaged.append({**finding, geometry_key: merged})
    return averaged


def derive_consensus(task: Task, reads: list[Read]) -> list[dict]:
    """The consensus findings of agreeing reads."""
    labels, rules = labels_of(task.protocol_version_id), agreement_rules(task)
    k = len(reads)
    out = []
    for key, spec in labels.items():
        per_read = [findings_of_label(r.findings, key) for r in reads]
        if not any(per_read):
            continue
        first = per_read[0][0]
        if spec.kind == "classification":
            value = Counter(items[0]["value"] for items in per_read).most_common(1)[0][0]
            out.append({**first, "value": value})
        elif spec.kind == "ordinal":
            order = list(spec.categories)
            positions = sorted(order.index(items[0]["value"]) for items in per_read)
            out.append({**first, "value": order[positions[(k - 1) // 2]]})  # the (lower) median grade
        elif spec.kind == "mask":
            stack = np.stack([_union_mask(items) for items in per_read])
            voted = stack.sum(axis=0) > k / 2
            mask = dict(first["mask"], rle=rle_encode(voted), voxels=int(voted.sum()))
            if first["mask"].get("volume_ml") is not None and first["mask"].get("voxels"):
                mask["volume_ml"] = first["mask"]["volume_ml"] / first["mask"]["voxels"] * int(voted.sum())
            out.append({**first, "mask": mask})
        elif spec.kind in ("bbox", "polygon"):
            out.extend(_mean_boxes(per_read, rules["iou"]) if spec.kind == "bbox" else per_read[0])
        elif spec.kind == "measurement":
            out.append({**first, "value": float(np.mean([items[0]["value"] for items in per_read]))})
        else:
            out.extend(per_read[0])
    return out


def _set_task_state(task: Task, state: str) -> None:
    advance_task(task, state)


def _submitted_reads(task: Task) -> list[Read]:
    """The task's submitted reads in submit order (plain SQL, as _set_task_state)."""
    with connection.cursor() as cursor:
        cursor.execute(_submitted_reads_statement(), {"task": task.pk, "submitted": ReadState.SUBMITTED.value})
        return [rows.instance(Read, row) for row in cursor.fetchall()]


@functools.cache
def _submitted_reads_statement() -> str:
    return (f"SELECT {', '.join(rows.columns(Read, 'r'))} FROM tasks_read r "
            "WHERE r.task_id = %(task)s AND r.state = %(submitted)s ORDER BY r.id")


def on_reads_complete(task: Task) -> None:
    """Called in the transaction of the task's last submit: consensus or an adjudication."""
    reads = _submitted_reads(task)
    agreement = compute_agreement(task, reads)
    if agreement["agree"]:
        consensus = rows.insert(Consensus, task_id=task.pk, method=Consensus.Method.AGREED,
                                findings=derive_consensus(task, reads), agreement=agreement, adjudication_id=None,
                                imported_by_id=None, created_at=timezone.now())
        _set_task_state(task, TaskState.CONSENSUS)
        record_event("consensus", actor=None, project_id=task.project_id, obj=consensus,
                     study_uid=task.study.study_uid, protocol_version=task.protocol_version.number,
                     extra={"task": task.pk, "method": consensus.method})
        broadcast_on_commit(task.project_id, "task.consensus", {"task": task.pk, "method": consensus.method})
        _consensus_stored(task.project_id)
        return
    adjudication = Adjudication.objects.create(
        project_id=task.project_id, task=task, tier=task.adjudication_tier, subspecialty=task.adjudication_subspecialty,
        priority=task.priority, agreement=agreement)
    _set_task_state(task, TaskState.AWAITING_ADJUDICATION)
    record_event("create", actor=None, project_id=task.project_id, obj=adjudication, study_uid=task.study.study_uid,
                 extra={"task": task.pk, "disagreeing_labels": [k for k, v in agreement["labels"].items()
                                                                if not v["agree"]]})
    broadcast_on_commit(task.project_id, "adjudication.opened", {"adjudication": adjudication.pk, "task": task.pk,
                                                                 "tier": adjudication.tier})


@transaction.atomic
def store_consensus_from_adjudication(adjudication: Adjudication, findings: list[dict]) -> Consensus:
    task = Task.objects.select_for_update(**ROW_LOCK).get(pk=adjudication.task_id)
    consensus = Consensus.objects.create(task=task, method=Consensus.Method.ADJUDICATED, findings=findings,
                                         agreement=adjudication.agreement, adjudication=adjudication)
    _set_task_state(task, TaskState.CONSENSUS)
    task.completed_at = timezone.now()
    task.save(update_fields=["completed_at"])
    _consensus_stored(task.project_id)
    return consensus


def _consensus_stored(project_id: int) -> None:
    """Active learning may retrain after N new labels (learning.triggers; the job starts on commit)."""
    learning().on_consensus_stored(project_id)
