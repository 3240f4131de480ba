"""Project progress: tasks by state, modality, batch and finding class; throughput per day and tier;
reader hours; an ETA; the workforce's calibration and gold status.

Fast on big projects because nothing here scans tasks or reads: database triggers (migration
tasks 0007) append a delta row for every change of a production task's state, batch or reads
submitted, every submitted read and every resolved adjudication, whatever code path made it (the
raw SQL claim included). Writers only insert, so concurrent claims never wait on a counter row. A
progress read first folds the project's deltas into its tallies (``fold_deltas``: one statement
per table, under a per-project advisory lock), then sums a few hundred tally rows.

Finding classes come from consensus labels: a trigger queues each new production consensus, and
the fold counts its labels (a task counts once per class it has; ``""``: no finding at all).

ETA: reads left (outstanding reads of queued and in-reading tasks) over the mean production reads
per day of the last ``ETA_WINDOW_DAYS`` days including today; adjudications waiting are reported
beside it. No reads in the window: no ETA (null).

``recount_progress`` rebuilds every tally from the tables (management command of that name).
"""

from collections import Counter, defaultdict
from datetime import UTC, timedelta

from django.db import connection, transaction
from django.db.models import Count, F, Sum, Window
from django.db.models.functions import RowNumber
from django.utils import timezone

from core.broadcast import broadcast_on_commit
from core.models import Membership, Project
from core.roles import READER_ROLE_TIERS, Tier
from tasks.locks import AdvisoryLock
from tasks.models import (
    Batch,
    Consensus,
    FindingTally,
    Read,
    ReadDayDelta,
    ReadDayTally,
    Task,
    TaskTally,
    TaskTallyDelta,
    UncountedConsensus,
)
from tasks.selectors import Naming, reader_visibility
from tasks.states import ReadState, TaskState

ETA_WINDOW_DAYS = 7
THROUGHPUT_DAYS = 30
DONE_STATES = (TaskState.CONSENSUS, TaskState.DELIVERED)
FOLD_LOCK = AdvisoryLock.FOLD  # one fold per project at a time (spliced into the fold's text as a number)

# Each delta table, the tally it folds into, the tally's key columns and its summed columns.
_TALLIES = (
    ("tasks_tasktallydelta", "tasks_tasktally", "batch_key, modality, state", "tasks, reads_left"),
    ("tasks_readdaydelta", "tasks_readdaytally", "day, tier", "reads, check_reads, adjudications, active_seconds"),
)


def _upsert(tally: str, keys: str, sums: str, rows: str) -> str:
    """INSERT ``rows`` (project_id, keys, sums) into ``tally``, adding the sums to existing rows."""
    added = ", ".join(f"{c} = {tally}.{c} + EXCLUDED.{c}" for c in sums.split(", "))
    return (f"INSERT INTO {tally} (project_id, {keys}, {sums}) {rows} "  # noqa: S608 - fixed names
            f"ON CONFLICT (project_id, {keys}) DO UPDATE SET {added}")


def _summed(sums: str) -> str:
    return ", ".join(f"sum({c})" for c in sums.split(", "))


# Each delta table is emptied and folded in one statement.
_FOLDS = "; ".join(
    f"WITH moved AS (DELETE FROM {delta} WHERE project_id = %(p)s RETURNING {keys}, {sums}) "
    + _upsert(tally, keys, sums, f"SELECT %(p)s, {keys}, {_summed(sums)} FROM moved GROUP BY {keys} ORDER BY {keys}")
    for delta, tally, keys, sums in _TALLIES)


def _count_findings(project_id: int, ids: list[int]) -> None:
    """Add the finding classes of these (newly uncounted) consensus labels to the project's tally."""
    if not ids:
        return
    counts: Counter = Counter()
    for chunk in range(0, len(ids), 2000):
        for findings in Consensus.objects.filter(pk__in=ids[chunk:chunk + 2000]).values_list("findings", flat=True):
            counts.update(finding_classes(findings))
    for finding_class, n in sorted(counts.items()):
        tally, _ = FindingTally.objects.get_or_create(project_id=project_id, finding_class=finding_class)
        FindingTally.objects.filter(pk=tally.pk).update(tasks=F("tasks") + n)


def finding_classes(findings) -> set[str]:
    """The classes a consensus counts under: each label it has once; ``""`` when it has none."""
    labels = {f.get("label", "") for f in findings or [] if isinstance(f, dict)}
    return labels or {""}


# The fold, one message: take the project's fold lock, move every delta table's rows into its
# tally, and hand back the consensus ids whose findings are still to count. synchronous_commit
# off is safe here: a fold lost in a crash is lost whole, its deltas intact.
_FOLD = (f"SET LOCAL synchronous_commit = off; SELECT pg_advisory_xact_lock({int(FOLD_LOCK)}, %(p)s); {_FOLDS}; "
         "DELETE FROM tasks_uncountedconsensus WHERE project_id = %(p)s RETURNING consensus_id")


@transaction.atomic
def fold_deltas(project_id: int) -> None:
    """Move the project's pending deltas into its tallies (exact: the move is one transaction)."""
    with connection.cursor() as cursor:
        # Two folds of one project would upsert the same tally rows: take turns (the lock).
        cursor.execute(_FOLD, {"p": project_id})
        _count_findings(project_id, [row[0] for row in cursor.fetchall()])


# --- the recount ------------------------------------------------------------------------------

def _modality_of(series_modality: str | None, study_modalities) -> str:
    return series_modality or "/".join(study_modalities or [])


@transaction.atomic
def recount_progress(project_id: int) -> None:
    """Rebuild the project's tallies from the task, read, adjudication and consensus tables."""
    from tasks.models import Adjudication

    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_xact_lock(%s, %s)", [int(FOLD_LOCK), project_id])
        # Deltas committed from now on wait for this transaction's view of the tables to be the base.
        cursor.execute("LOCK TABLE tasks_task, tasks_read, tasks_adjudication, tasks_consensus "
                       "IN SHARE MODE")
    for model in (TaskTally, TaskTallyDelta, ReadDayTally, ReadDayDelta, FindingTally, UncountedConsensus):
        model.objects.filter(project_id=project_id).delete()
    tasks: dict[tuple, list[int]] = defaultdict(lambda: [0, 0])
    rows = (Task.objects.filter(project_id=project_id, kind=Task.Kind.PRODUCTION)
            .values("batch_id", "series__modality", "study__modalities", "state")
            .annotate(n=Count("id"), required=Sum("reads_required"), submitted=Sum("reads_submitted")))
    for row in rows:
        key = (row["batch_id"] or 0, _modality_of(row["series__modality"], row["study__modalities"]), row["state"])
        tasks[key][0] += row["n"]
        if row["state"] in (TaskState.QUEUED, TaskState.IN_READING):
            tasks[key][1] += row["required"] - row["submitted"]
    TaskTally.objects.bulk_create([
        TaskTally(project_id=project_id, batch_key=b, modality=m, state=s, tasks=n, reads_left=left)
        for (b, m, s), (n, left) in tasks.items()])
    days: dict[tuple, list] = defaultdict(lambda: [0, 0, 0, 0.0])
    for read in (Read.objects.filter(project_id=project_id, state=ReadState.SUBMITTED)
                 .values("submitted_at", "tier", "is_check", "active_seconds").iterator(chunk_size=5000)):
        day = timezone.localdate(read["submitted_at"], UTC)
        entry = days[(day, read["tier"])]
        entry[1 if read["is_check"] else 0] += 1
        entry[3] += read["active_seconds"]
    for adjudication in Adjudication.objects.filter(project_id=project_id, state=Adjudication.State.RESOLVED).values(
            "resolved_at", "tier", "adjudicator_tier"):
        day = timezone.localdate(adjudication["resolved_at"], UTC)
        days[(day, adjudication["adjudicator_tier"] or adjudication["tier"])][2] += 1
    ReadDayTally.objects.bulk_create([
        ReadDayTally(project_id=project_id, day=d, tier=t, reads=r, check_reads=c, adjudications=a, active_seconds=s)
        for (d, t), (r, c, a, s) in days.items()])
    counts: Counter = Counter()
    for findings in Consensus.objects.filter(task__project_id=project_id, task__kind=Task.Kind.PRODUCTION).values_list(
            "findings", flat=True).iterator(chunk_size=2000):
        counts.update(finding_classes(findings))
    FindingTally.objects.bulk_create([FindingTally(project_id=project_id, finding_class=c, tasks=n)
                                      for c, n in counts.items()])


# --- the progress document --------------------------------------------------------------------

def _state_map() -> dict[str, int]:
    return {state: 0 for state in TaskState.values}


def _tasks_section(project: Project) -> dict:
    by_state, by_modality, by_batch = _state_map(), defaultdict(_state_map), defaultdict(_state_map)
    reads_left = 0
    for row in TaskTally.objects.filter(project=project).values("batch_key", "modality", "state", "tasks",
                                                                 "reads_left"):
        if not row["tasks"]:
            continue
        by_state[row["state"]] += row["tasks"]
        by_modality[row["modality"]][row["state"]] += row["tasks"]
        by_batch[row["batch_key"]][row["state"]] += row["tasks"]
        reads_left += row["reads_left"]
    batches = {b["pk"]: b for b in Batch.objects.filter(project=project, pk__in=[k for k in by_batch if k])
               .values("pk", "name", "state")}
    return {
        "total": sum(by_state.values()),
        "done": sum(by_state[s] for s in DONE_STATES),
        "by_state": by_state,
        "by_modality": [{"modality": m, "total": sum(states.values()), "done": sum(states[s] for s in DONE_STATES),
                         "by_state": states} for m, states in sorted(by_modality.items())],
        "by_batch": [{"batch": key or None, "name": batches[key]["name"] if key in batches else None,
                      "state": batches[key]["state"] if key in batches else None, "total": sum(states.values()),
                      "done": sum(states[s] for s in DONE_STATES), "by_state": states}
                     for key, states in sorted(by_batch.items())],
        "reads_left": reads_left,
    }


def _throughput_section(project: Project, today) -> tuple[dict, float]:
    rows = list(ReadDayTally.objects.filter(project=project).values(
        "day", "tier", "reads", "check_reads", "adjudications", "active_seconds"))
    since = today - timedelta(days=THROUGHPUT_DAYS - 1)
    per_day: dict = defaultdict(lambda: {"reads": 0, "check_reads": 0, "adjudications": 0, "by_tier": {}})
    per_tier = {t.label: {"reads": 0, "check_reads": 0, "adjudications": 0, "reader_hours": 0.0} for t in Tier}
    window_reads = 0
    for row in rows:
        tier = Tier(row["tier"]).label
        totals = per_tier[tier]
        for name in ("reads", "check_reads", "adjudications"):
            totals[name] += row[name]
        totals["reader_hours"] += row["active_seconds"] / 3600
        if row["day"] > today - timedelta(days=ETA_WINDOW_DAYS):
            window_reads += row["reads"]
        if row["day"] >= since:
            day = per_day[row["day"]]
            for name in ("reads", "check_reads", "adjudications"):
                day[name] += row[name]
            day["by_tier"][tier] = {"reads": row["reads"], "check_reads": row["check_reads"],
                                    "adjudications": row["adjudications"]}
    for totals in per_tier.values():
        totals["reader_hours"] = round(totals["reader_hours"], 2)
    return {
        "days": [{"day": day.isoformat(), **figures} for day, figures in sorted(per_day.items())],
        "by_tier": per_tier,
        "reader_hours": round(sum(t["reader_hours"] for t in per_tier.values()), 2),
    }, window_reads / ETA_WINDOW_DAYS


def _eta(reads_left: int, awaiting_adjudication: int, reads_per_day: float, today) -> dict:
    days = reads_left / reads_per_day if reads_per_day else None
    if not reads_left:
        days = 0.0
    return {"reads_left": reads_left, "awaiting_adjudication": awaiting_adjudication,
            "reads_per_day": round(reads_per_day, 2), "window_days": ETA_WINDOW_DAYS,
            "days": round(days, 1) if days is not None else None,
            "date": (today + timedelta(days=days)).isoformat() if days is not None else None}


def _gold_scores(project: Project) -> dict[int, tuple[float, int]]:
    """Each reader's rolling gold score over the project's window (one query: tasks.gold's rule)."""
    # Through the project's few gold tasks (task index), never a walk over all its reads.
    gold_tasks = Task.objects.filter(project=project, kind=Task.Kind.GOLD).values("pk")
    ranked = (Read.objects.filter(task_id__in=gold_tasks, is_check=True, state=ReadState.SUBMITTED,
                                  score__isnull=False)
              .annotate(rank=Window(RowNumber(), partition_by=[F("reader_id")],
                                    order_by=[F("submitted_at").desc(), F("id").desc()]))
              .filter(rank__lte=project.gold_window).values_list("reader_id", "score"))
    scores: dict[int, list[float]] = defaultdict(list)
    for reader_id, score in ranked:
        scores[reader_id].append(score)
    return {reader: (sum(s) / len(s), len(s)) for reader, s in scores.items()}


def _workforce_section(project: Project, *, named: bool, per_reader: bool) -> dict:
    scores = _gold_scores(project)
    memberships = (Membership.objects.filter(project=project, is_active=True, role__in=list(READER_ROLE_TIERS))
                   .select_related("user").order_by("user__pseudonym", "role"))
    by_tier = {t.label: {"readers": 0, "calibrated": 0, "suspended": 0, "gold_checked": 0,
                         "mean_rolling_gold_score": None} for t in Tier}
    sums: dict[str, list[float]] = defaultdict(list)
    readers = []
    for m in memberships:
        tier = Tier(READER_ROLE_TIERS[m.role]).label
        calibrated = m.calibrated_at is not None or not project.requires_calibration
        score, checks = scores.get(m.user_id, (None, 0))
        entry = by_tier[tier]
        entry["readers"] += 1
        entry["calibrated"] += calibrated
        entry["suspended"] += m.is_suspended
        if score is not None:
            entry["gold_checked"] += 1
            sums[tier].append(score)
        if per_reader:
            row = {"reader": m.user.pseudonym, "tier": tier, "calibrated": calibrated, "suspended": m.is_suspended,
                   "gold_checks": checks, "rolling_gold_score": round(score, 4) if score is not None else None}
            if named:
                row["username"] = m.user.username
            readers.append(row)
    for tier, values in sums.items():
        by_tier[tier]["mean_rolling_gold_score"] = round(sum(values) / len(values), 4)
    section = {"by_tier": by_tier, "gold_threshold": project.gold_threshold,
               "requires_calibration": project.requires_calibration}
    if per_reader:
        section["readers"] = readers
    return section


def workforce_by_tier(project: Project) -> list[dict]:
    """The workforce's calibration and gold status per reader tier (what clients see of readers)."""
    by_tier = _workforce_section(project, named=False, per_reader=False)["by_tier"]
    return [{"tier": tier, **figures} for tier, figures in by_tier.items()]


def project_progress(project: Project, *, user) -> dict:
    """The progress document of ``project`` as ``user`` may see it (the REST endpoint's body).

    Managers see readers by username and pseudonym, QA by pseudonym; clients (no view_reads) see
    only aggregates: never reads, never a reader's identity or pseudonym.
    """
    fold_deltas(project.pk)
    today = timezone.localdate(timezone.now(), UTC)
    tasks = _tasks_section(project)
    findings = dict(FindingTally.objects.filter(project=project, tasks__gt=0).values_list("finding_class", "tasks"))
    throughput, reads_per_day = _throughput_section(project, today)
    visibility = reader_visibility(user, project)  # the one rule of who sees which readers
    return {
        "project": project.pk,
        "as_of": timezone.now().isoformat(),
        "tasks": {k: v for k, v in tasks.items() if k != "reads_left"},
        "by_finding_class": [{"finding_class": c, "tasks": n} for c, n in sorted(findings.items()) if c],
        "tasks_without_findings": findings.get("", 0),
        "throughput": throughput,
        "eta": _eta(tasks["reads_left"], tasks["by_state"][TaskState.AWAITING_ADJUDICATION], reads_per_day, today),
        "workforce": _workforce_section(project, named=visibility.naming == Naming.USERNAME,
                                        per_reader=visibility.per_reader),
    }


# --- the live feed ----------------------------------------------------------------------------

def announce_progress(project_id: int, **changes: int) -> None:
    """Schedule one ``progress.delta`` per project for when the current transaction commits, with the
    sum of the ``changes`` (e.g. ``queued=-1, in_reading=1``) of every call in that transaction."""
    if not connection.in_atomic_block:
        broadcast_on_commit(project_id, "progress.delta", {"changes": {str(k): v for k, v in changes.items() if v}})
        return
    pending = getattr(connection, "_progress_pending", None)
    # A flush still registered means the same transaction; a rollback drops it with the callbacks.
    if pending is None or not any(func is pending["flush"] for _, func, _ in connection.run_on_commit):
        pending = {"changes": defaultdict(Counter)}

        def flush(changes=pending["changes"]):
            for pid, counts in changes.items():
                broadcast_on_commit(pid, "progress.delta", {"changes": {k: v for k, v in counts.items() if v}})

        pending["flush"] = flush
        connection._progress_pending = pending
        transaction.on_commit(flush)
    pending["changes"][project_id].update({str(k): v for k, v in changes.items()})
