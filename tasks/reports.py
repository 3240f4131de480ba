"""Concordance reports: per modality x finding class x metric, reader-vs-reader and
reader-vs-consensus, each with n, the value and a 95% bootstrap interval over tasks; scorecards
per reader and per reader tier; and model-vs-consensus rows from the current model's stored
predictions (learning.concordance), kappa over the model's label classes.

Who sees which scorecards is tasks.selectors.reader_visibility's rule, applied by ``as_seen_by``
to every report served (the live one and a batch's stored one): managers per reader by username,
QA per reader by pseudonym, clients per tier only (``scorecards_by_tier``; no per-reader rows).

Metrics by label kind: classification -> Cohen's kappa; ordinal grade -> quadratic-weighted
kappa; mask -> mean Dice; boxes, polygons -> share of boxes matched at the protocol's IoU;
landmarks and measurements -> share agreeing within the protocol's tolerance. A label a read did
not use counts as the category "(absent)" for kappa and as disagreement elsewhere.
"""

import csv
import io
import math
from collections import defaultdict
from itertools import combinations

import numpy as np
from django.core.cache import cache
from django.db.models import Max

from core.roles import Tier
from tasks import metrics
from tasks.consensus import agreement_rules, compare_pair, findings_of_label
from tasks.findings.loading import labels_of
from tasks.learning_seam import learning
from tasks.models import Consensus, Read, Task
from tasks.states import ReadState

ABSENT = "(absent)"
BOOTSTRAP_DRAWS = 1000


def _value(findings, label):
    items = findings_of_label(findings, label)
    return items[0]["value"] if items and "value" in items[0] else ABSENT


def _interval(statistic, *columns) -> list[float | None]:
    low, high = metrics.bootstrap_ci(statistic, *columns, n=BOOTSTRAP_DRAWS)
    return [None if math.isnan(low) else round(low, 4), None if math.isnan(high) else round(high, 4)]


def _row(modality, label, kind, comparison, metric, pairs) -> dict | None:
    if not pairs:
        return None
    if metric.endswith("kappa"):
        a = np.array([p[0] for p in pairs], dtype=object)
        b = np.array([p[1] for p in pairs], dtype=object)
        categories, weights = pairs[0][2], ("quadratic" if metric == "weighted_kappa" else None)

        def statistic(x, y):
            return metrics.cohen_kappa(x, y, categories=categories, weights=weights)

        value = statistic(a, b)
        interval = _interval(statistic, a, b)
    else:
        scores = np.array([p for p in pairs], dtype=float)
        value = float(scores.mean())
        interval = _interval(lambda s: float(s.mean()), scores)
    return {"modality": modality, "finding_class": label, "kind": kind, "comparison": comparison,
            "metric": metric, "n": len(pairs), "value": None if math.isnan(value) else round(value, 4),
            "ci95": interval}


def _pair_scores(spec, rules, reads_findings, reference=None):
    """(reader-vs-reader, reader-vs-consensus) samples of one label on one task."""
    label = spec.key
    if spec.kind in ("classification", "ordinal"):
        categories = [*spec.categories, ABSENT]
        values = [_value(f, label) for f in reads_findings]
        rr = [(x, y, categories) for x, y in combinations(values, 2)]
        rc = [(v, _value(reference, label), categories) for v in values] if reference is not None else []
        return rr, rc

    def score(a, b):
        items_a, items_b = findings_of_label(a, label), findings_of_label(b, label)
        if not items_a and not items_b:
            return None
        if not items_a or not items_b:
            return 0.0
        ok, figure = compare_pair(spec.kind, spec, items_a, items_b, rules)
        return float(figure) if spec.kind == "mask" and figure is not None else float(ok)

    rr = [s for a, b in combinations(reads_findings, 2) if (s := score(a, b)) is not None]
    rc = [s for a in reads_findings if reference is not None and (s := score(a, reference)) is not None]
    return rr, rc


def _metric_name(kind: str) -> str:
    return {"classification": "kappa", "ordinal": "weighted_kappa", "mask": "dice"}.get(kind, "agreement_rate")


def concordance_report(project, *, since=None, until=None, named: bool = True, batch=None) -> dict:
    """The report over tasks that reached consensus in [since, until) (of one delivery batch, if given);
    cached until a new consensus."""
    consensus = Consensus.objects.filter(task__project=project, task__kind=Task.Kind.PRODUCTION)
    if batch is not None:
        consensus = consensus.filter(task__batch=batch)
    if since:
        consensus = consensus.filter(created_at__gte=since)
    if until:
        consensus = consensus.filter(created_at__lt=until)
    key = (f"concordance:{project.pk}:{batch.pk if batch else ''}:{since}:{until}:{named}:"
           f"{consensus.aggregate(m=Max('id'))['m']}:{consensus.count() if batch else ''}:"
           f"{learning().scores_marker(project)}")
    cached = cache.get(key)
    if cached is not None:
        return cached
    samples: dict[tuple, dict[str, list]] = defaultdict(lambda: {"reader_vs_reader": [], "reader_vs_consensus": []})
    kinds: dict[tuple, str] = {}
    per_reader: dict[int, dict] = defaultdict(lambda: {"reads": 0, "agree": 0, "compared": 0, "active_seconds": 0.0})
    # A read counts for the tier it was claimed at (Read.tier), so a tier's card is its work.
    per_tier: dict[int, dict] = defaultdict(lambda: {"readers": set(), "reads": 0, "agree": 0, "compared": 0,
                                                     "active_seconds": 0.0})
    rows = consensus.select_related("task__study", "task__protocol_version").order_by("id")
    for item in rows.iterator(chunk_size=500):
        task = item.task
        reads = list(Read.objects.filter(task=task, state=ReadState.SUBMITTED, is_check=False)
                     .select_related("reader").order_by("id"))
        specs, rules = labels_of(task.protocol_version_id), agreement_rules(task)
        findings = [r.findings or [] for r in reads]
        modality = "/".join(task.study.modalities) or "?"
        for spec in specs.values():
            rr, rc = _pair_scores(spec, rules, findings, item.findings)
            group = (modality, spec.key)
            kinds[group] = spec.kind
            samples[group]["reader_vs_reader"] += rr
            samples[group]["reader_vs_consensus"] += rc
        for read in reads:
            card, tier_card = per_reader[read.reader_id], per_tier[read.tier]
            card["name"] = read.reader.username if named else read.reader.pseudonym
            tier_card["readers"].add(read.reader_id)
            for c in (card, tier_card):
                c["reads"] += 1
                c["active_seconds"] += read.active_seconds
            for spec in specs.values():
                mine, ref = findings_of_label(read.findings, spec.key), findings_of_label(item.findings, spec.key)
                if mine or ref:
                    agreed = int(bool(mine and ref) and compare_pair(spec.kind, spec, mine, ref, rules)[0])
                    for c in (card, tier_card):
                        c["compared"] += 1
                        c["agree"] += agreed
    report_rows = []
    for (modality, label), comparisons in sorted(samples.items()):
        for comparison, pairs in comparisons.items():
            row = _row(modality, label, kinds[(modality, label)], comparison, _metric_name(kinds[(modality, label)]),
                       pairs)
            if row is not None:
                report_rows.append(row)
    version, model = learning().model_samples(project, consensus)
    for (modality, label), pairs in sorted(model.items()):
        row = _row(modality, label, kinds.get((modality, label), "classification"), "model_vs_consensus", "kappa",
                   pairs)
        if row is not None:
            report_rows.append({**row, "model_version": version.number})
    scorecards = [{"reader": card["name"], **_card_figures(card)}
                  for card in sorted(per_reader.values(), key=lambda c: c["name"])]
    by_tier = [{"tier": Tier(tier).label, "readers": len(card["readers"]), **_card_figures(card)}
               for tier, card in sorted(per_tier.items())]
    report = {"project": project.pk, "batch": batch.pk if batch else None,
              "since": str(since) if since else None, "until": str(until) if until else None,
              "tasks": rows.count(), "rows": report_rows, "scorecards": scorecards, "scorecards_by_tier": by_tier,
              "model_version": version.number if version else None}
    cache.set(key, report, 3600)
    return report


def _card_figures(card: dict) -> dict:
    return {"reads": card["reads"],
            "agreement_with_consensus": round(card["agree"] / card["compared"], 4) if card["compared"] else None,
            "mean_active_minutes": round(card["active_seconds"] / card["reads"] / 60, 2)}


def as_seen_by(report: dict, visibility) -> dict:
    """The report as a viewer with ``visibility`` (tasks.selectors.ReaderVisibility) may see it:
    without per-reader visibility (clients) the per-reader scorecards go and the tiers' stay."""
    if visibility.per_reader:
        return report
    # A batch report stored before tier scorecards existed has none: recomputing it adds them.
    return {**{k: v for k, v in report.items() if k != "scorecards"},
            "scorecards_by_tier": report.get("scorecards_by_tier", [])}


def report_csv(report: dict) -> str:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["modality", "finding_class", "kind", "comparison", "metric", "n", "value", "ci95_low",
                     "ci95_high"])
    for row in report["rows"]:
        writer.writerow([row["modality"], row["finding_class"], row["kind"], row["comparison"], row["metric"], row["n"],
                         row["value"], *row["ci95"]])
    return out.getvalue()
