"""Reads spent where the model is unsure: the panel policy against the fixed panel, simulated.

    .venv/bin/python bench/panel_policy.py [--quick] [--seeds N] [--cases N]

The same rule as production: every case's panel comes from ``core.panel_rule.panel_for`` (pure, no
Django), with the protocol's k = 2 annotator first reads for the fixed panel and the policy on for the
adaptive one. Both panels see the same pool and the same reader draws (common random numbers: read
slot j of case i errs when the same uniform draw falls under that reader's error rate), so the
difference is the policy's, not the dice's.

Readers (an assumption, stated, not fitted to any target): an annotator errs with probability
0.03 + 0.37 * difficulty (3 % on clear cases, 40 % on the decision boundary: still some signal there),
a radiologist with half of that. Consensus follows tasks.consensus for a classification: the reads
agree only when every read gives the same value; otherwise an adjudication opens and a radiologist's
read (also with the radiologist's error rate) is the consensus. A what-if with majority-of-three
consensus (2-1 splits agreed) is reported beside it, since that is the rule the policy's "one more
read" pays under; production does not use it today.

Costs in annotator-minute units (printed in the result as ``cost_weights``): a first read takes
READ_MINUTES, an adjudication ADJUDICATION_MINUTES, and a radiologist minute costs RADIOLOGIST_WEIGHT
annotator minutes.
"""

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import print_result  # noqa: E402
from core.panel_rule import ANNOTATOR, EXTRA_READ, RADIOLOGIST, RADIOLOGIST_FIRST_READ, panel_for  # noqa: E402

K = 2
THRESHOLD = 0.8  # normalised binary entropy: P(positive) between about 0.24 and 0.76
RADIOLOGIST_WEIGHT = 4.0
READ_MINUTES = 1.0
ADJUDICATION_MINUTES = 1.5
ANNOTATOR_ERROR = (0.03, 0.37)  # intercept, slope in difficulty
RADIOLOGIST_ERROR_FACTOR = 0.5
COST_WEIGHTS = {"annotator_minute": 1.0, "radiologist_minute": RADIOLOGIST_WEIGHT, "read_minutes": READ_MINUTES,
                "adjudication_minutes": ADJUDICATION_MINUTES, "k": K, "uncertainty_threshold": THRESHOLD,
                "annotator_error": "0.03 + 0.37 * difficulty", "radiologist_error": "half the annotator's"}


def uncertainty_of(probabilities: np.ndarray) -> np.ndarray:
    """Normalised binary entropy, as the scoring job's entropy strategy gives for two classes."""
    p = np.clip(np.asarray(probabilities, dtype=float), 1e-12, 1 - 1e-12)
    return -(p * np.log(p) + (1 - p) * np.log(1 - p)) / np.log(2)


def _error_rate(tier: np.ndarray, difficulty: np.ndarray) -> np.ndarray:
    annotator = ANNOTATOR_ERROR[0] + ANNOTATOR_ERROR[1] * difficulty
    return np.where(tier >= RADIOLOGIST, RADIOLOGIST_ERROR_FACTOR * annotator, annotator)


def _run_panel(reads: np.ndarray, tiers: np.ndarray, difficulty, truth, first_draws, adjudication_draws,
               majority: bool) -> dict:
    n = len(truth)
    rate = _error_rate(tiers, difficulty)
    slots = np.arange(first_draws.shape[1])[None, :] < reads[:, None]
    labels = np.where(first_draws < rate[:, None], 1 - truth[:, None], truth[:, None])
    positives = np.where(slots, labels, 0).sum(axis=1)
    unanimous = (positives == 0) | (positives == reads)
    agreed = unanimous | (majority & (reads == 3))
    majority_label = (2 * positives > reads).astype(int)
    adjudicated = ~agreed
    adjudicator_label = np.where(adjudication_draws < _error_rate(np.full(n, RADIOLOGIST), difficulty),
                                 1 - truth, truth)
    consensus = np.where(adjudicated, adjudicator_label, majority_label)
    tier_weight = np.where(tiers >= RADIOLOGIST, RADIOLOGIST_WEIGHT, 1.0)
    cost = reads * READ_MINUTES * tier_weight + adjudicated * ADJUDICATION_MINUTES * RADIOLOGIST_WEIGHT
    return {"cost_per_label": float(cost.sum() / n), "adjudications": int(adjudicated.sum()),
            "accuracy": float((consensus == truth).mean()), "reads": int(reads.sum())}


def simulate(probabilities: np.ndarray, difficulty: np.ndarray, truth: np.ndarray, seed: int) -> dict:
    """The fixed k-annotator panel against the adaptive policy on one pool and one set of reader draws.

    probabilities: the model's P(positive) per case; difficulty in [0, 1] (1: on the decision
    boundary); truth 0/1. The ``adaptive_*`` keys are the policy's default action (one more read)
    under production's consensus rule; ``variants`` has the radiologist action and the majority what-if.
    ``raw`` holds this seed's figures, for a caller to bootstrap over seeds."""
    probabilities, difficulty = np.asarray(probabilities, float), np.clip(np.asarray(difficulty, float), 0, 1)
    truth = np.asarray(truth).astype(int)
    rng = np.random.default_rng(seed)
    first_draws, adjudication_draws = rng.random((len(truth), 3)), rng.random(len(truth))
    u = uncertainty_of(probabilities)

    def panel(policy):
        pairs = [panel_for(float(x), policy, K, ANNOTATOR) for x in u]
        return np.array([r for r, _ in pairs]), np.array([t for _, t in pairs])

    fixed_reads, fixed_tiers = panel(None)
    runs = {}
    for majority in (False, True):
        rule = "majority" if majority else "unanimous"
        runs[f"fixed_{rule}"] = _run_panel(fixed_reads, fixed_tiers, difficulty, truth, first_draws,
                                           adjudication_draws, majority)
        for action in (EXTRA_READ, RADIOLOGIST_FIRST_READ):
            reads, tiers = panel({"enabled": True, "uncertainty_threshold": THRESHOLD, "action": action})
            runs[f"{action}_{rule}"] = _run_panel(reads, tiers, difficulty, truth, first_draws, adjudication_draws,
                                                  majority)

    def compare(name, rule):
        fixed, adaptive = runs[f"fixed_{rule}"], runs[f"{name}_{rule}"]
        return {"cost_saved_pct": 100 * (1 - adaptive["cost_per_label"] / fixed["cost_per_label"]),
                "accuracy_change_pts": 100 * (adaptive["accuracy"] - fixed["accuracy"]),
                "adjudications_fixed": fixed["adjudications"], "adjudications_adaptive": adaptive["adjudications"],
                "cost_per_label_fixed": fixed["cost_per_label"], "cost_per_label_adaptive": adaptive["cost_per_label"]}

    variants = {f"{a}_{r}": compare(a, r) for a in (EXTRA_READ, RADIOLOGIST_FIRST_READ)
                for r in ("unanimous", "majority")}
    main = variants[f"{EXTRA_READ}_unanimous"]
    return {"adaptive_cost_saved_pct": main["cost_saved_pct"],
            "adaptive_accuracy_change_pts": main["accuracy_change_pts"],
            "adaptive_adjudications_fixed": main["adjudications_fixed"],
            "adaptive_adjudications_adaptive": main["adjudications_adaptive"],
            "cost_weights": dict(COST_WEIGHTS), "uncertain_fraction": float((u >= THRESHOLD).mean()),
            "variants": variants, "raw": {"seed": seed, "runs": runs}, "seed": seed}


def synthetic_pool(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Difficulty uniform in [0, 1]; the model's logit is +-4 (1 - difficulty); truth is drawn from the
    model's probability, so the model is calibrated by construction."""
    rng = np.random.default_rng(10_000 + seed)
    difficulty = rng.random(n)
    logit = rng.choice([-1.0, 1.0], n) * 4.0 * (1 - difficulty)
    probabilities = 1 / (1 + np.exp(-logit))
    truth = (rng.random(n) < probabilities).astype(int)
    return probabilities, difficulty, truth


def bootstrap(values, resamples: int = 2000, seed: int = 0) -> list[float]:
    values = np.asarray(values, float)
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), (resamples, len(values)))].mean(axis=1)
    return [round(float(np.percentile(means, 2.5)), 3), round(float(np.percentile(means, 97.5)), 3)]


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="5 seeds of 2,000 cases (seconds)")
    parser.add_argument("--seeds", type=int, default=None)
    parser.add_argument("--cases", type=int, default=None)
    args = parser.parse_args(argv)
    seeds = args.seeds or (5 if args.quick else 20)
    cases = args.cases or (2000 if args.quick else 20000)
    results = [simulate(*synthetic_pool(cases, s), seed=s) for s in range(seeds)]
    summary = {"seeds": seeds, "cases": cases, "cost_weights": results[0]["cost_weights"],
               "uncertain_fraction": round(float(np.mean([r["uncertain_fraction"] for r in results])), 3)}
    for key in ("adaptive_cost_saved_pct", "adaptive_accuracy_change_pts", "adaptive_adjudications_fixed",
                "adaptive_adjudications_adaptive"):
        values = [r[key] for r in results]
        summary[key] = round(float(np.mean(values)), 3)
        summary[f"{key}_ci95"] = bootstrap(values)
    for name in results[0]["variants"]:
        summary[name] = {key: round(float(np.mean([r["variants"][name][key] for r in results])), 3)
                         for key in ("cost_saved_pct", "accuracy_change_pts", "adjudications_fixed",
                                     "adjudications_adaptive")}
        summary[name]["cost_saved_pct_ci95"] = bootstrap([r["variants"][name]["cost_saved_pct"] for r in results])
        summary[name]["accuracy_change_pts_ci95"] = bootstrap(
            [r["variants"][name]["accuracy_change_pts"] for r in results])
    summary["target_met"] = bool(summary["adaptive_cost_saved_pct"] >= 20
                                 and summary["adaptive_accuracy_change_pts"] >= 0)
    print_result(summary)
    return summary


if __name__ == "__main__":
    main()
