"""The cost report of a delivery batch: billable units per the batch's pricing, and reader time by tier.

Pricing is a JSON object stored on the batch when it is created (a snapshot, so a later price
change never rewrites a delivered batch's bill)::

    {"currency": "EUR", "per_study": 4.0, "per_slice": 0.02, "per_finding": 0.5, "per_organ": 1.5}

Every rate is optional (missing = 0). Units: studies = distinct studies of the batch; slices =
frames of the instances each task covers (its series, or its whole study); findings = consensus
findings; organs = distinct segmented (mask) labels per task. Reader time: submitted production
reads per reader tier, with the active time from heartbeats (Read.active_seconds) and the
claim-to-submit time; adjudications by the adjudicator's tier, claim to resolution. Readers appear
by tier only, so the report is safe for clients.
"""

from collections import defaultdict

from django.db.models import Sum

from core.dicom.models import Instance
from core.errors import DomainError
from core.roles import Tier
from tasks.models import Adjudication, Read
from tasks.states import ReadState

RATES = {"per_study": "studies", "per_slice": "slices", "per_finding": "findings", "per_organ": "organs"}


def validate_pricing(pricing) -> dict:
    """The pricing object, checked; DomainError (400) naming each bad field."""
    if pricing is None:
        return {}
    if not isinstance(pricing, dict):
        raise DomainError("pricing must be an object.", errors={"pricing": ["Expected an object."]})
    errors = {}
    for key, value in pricing.items():
        if key == "currency":
            if not isinstance(value, str) or not 1 <= len(value) <= 8:
                errors[f"pricing.{key}"] = ["A currency code such as EUR."]
        elif key not in RATES:
            errors[f"pricing.{key}"] = [f"Unknown rate; allowed: currency, {', '.join(RATES)}."]
        elif isinstance(value, bool) or not isinstance(value, int | float) or value < 0 or value != value:
            errors[f"pricing.{key}"] = ["A non-negative number."]
    if errors:
        raise DomainError("The pricing is not valid; nothing was stored.", errors=errors)
    return dict(pricing)


def _units(tasks) -> dict[str, int]:
    studies, slices, findings, organs = set(), 0, 0, 0
    for task in tasks:
        studies.add(task.study_id)
        instances = Instance.objects.filter(series=task.series) if task.series_id else \
            Instance.objects.filter(series__study=task.study)
        slices += instances.aggregate(n=Sum("frames"))["n"] or 0
        consensus = task.consensus.findings
        findings += len(consensus)
        organs += len({f["label"] for f in consensus if isinstance(f.get("mask"), dict)})
    return {"studies": len(studies), "slices": slices, "findings": findings, "organs": organs}


def _reader_time(task_ids) -> list[dict]:
    by_tier: dict[int, dict] = defaultdict(lambda: {"reads": 0, "active_seconds": 0.0, "claim_to_submit_seconds": 0.0,
                                                    "adjudications": 0, "adjudication_seconds": 0.0})
    reads = Read.objects.filter(task_id__in=task_ids, state=ReadState.SUBMITTED, is_check=False)
    for tier, active, claimed, submitted in reads.values_list("tier", "active_seconds", "claimed_at", "submitted_at"):
        row = by_tier[tier]
        row["reads"] += 1
        row["active_seconds"] += active
        row["claim_to_submit_seconds"] += (submitted - claimed).total_seconds()
    adjudications = Adjudication.objects.filter(task_id__in=task_ids, state=Adjudication.State.RESOLVED,
                                                adjudicator_tier__isnull=False)
    for tier, claimed, resolved in adjudications.values_list("adjudicator_tier", "claimed_at", "resolved_at"):
        row = by_tier[tier]
        row["adjudications"] += 1
        if claimed and resolved:
            row["adjudication_seconds"] += (resolved - claimed).total_seconds()
    return [{"tier": Tier(tier).label, **{k: round(v, 1) if isinstance(v, float) else v for k, v in row.items()}}
            for tier, row in sorted(by_tier.items())]


def cost_report(batch) -> dict:
    """Units, amounts per rate and total, and reader time by tier, for one batch."""
    tasks = list(batch.tasks.select_related("consensus").order_by("id"))
    units = _units(tasks)
    pricing = batch.pricing or {}
    lines = []
    for rate, unit in RATES.items():
        price = float(pricing.get(rate, 0))
        lines.append({"unit": unit, "quantity": units[unit], "rate": price, "amount": round(units[unit] * price, 2)})
    return {"batch": batch.pk, "tasks": len(tasks), "currency": pricing.get("currency", ""), "pricing": pricing,
            "units": units, "lines": lines, "total": round(sum(line["amount"] for line in lines), 2),
            "reader_time": _reader_time([t.pk for t in tasks])}
