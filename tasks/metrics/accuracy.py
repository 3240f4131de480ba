"""Binary diagnostic accuracy: sensitivity, specificity, ROC AUC, bootstrap confidence intervals."""

import math
from collections.abc import Callable

import numpy as np
from scipy import stats

from tasks.metrics.agreement import as_array

# Diagnostic accuracy


def _binary(labels, name: str) -> np.ndarray:
    array = np.asarray(labels)
    if array.dtype == bool:
        return array
    if array.size and not np.isin(array, (0, 1)).all():
        raise ValueError(f"{name} must be binary (0/1 or bool)")
    return array.astype(bool)


def _rate(numerator: int, denominator: int) -> float:
    return numerator / denominator if denominator else math.nan


def sensitivity_specificity(y_true, y_pred) -> dict:
    """tp, fp, fn, tn and sensitivity, specificity, ppv, npv of binary labels (1/True = positive);
    a rate whose denominator is zero (e.g. no positives, or empty input) is NaN.
    """
    truth, prediction = _binary(y_true, "y_true"), _binary(y_pred, "y_pred")
    if truth.shape != prediction.shape:
        raise ValueError(f"y_true and y_pred must have the same shape, got {truth.shape} and {prediction.shape}")
    tp = int(np.count_nonzero(truth & prediction))
    positives, predicted = int(np.count_nonzero(truth)), int(np.count_nonzero(prediction))
    fp, fn = predicted - tp, positives - tp
    tn = truth.size - tp - fp - fn
    return {
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "tn": tn,
        "sensitivity": _rate(tp, tp + fn),
        "specificity": _rate(tn, tn + fp),
        "ppv": _rate(tp, tp + fp),
        "npv": _rate(tn, tn + fn),
    }


def roc_auc(y_true, scores) -> float:
    """Area under the ROC curve, as scikit-learn's ``roc_auc_score``: the Mann-Whitney U over average
    ranks, so tied scores count half. NaN when only one class is present (or the input is empty).
    """
    truth = _binary(y_true, "y_true").ravel()
    values = np.asarray(scores, dtype=float).ravel()
    if truth.shape != values.shape:
        raise ValueError(f"y_true and scores must be the same length, got {truth.size} and {values.size}")
    if np.isnan(values).any():
        raise ValueError("scores contain NaN")
    positives = int(np.count_nonzero(truth))
    negatives = truth.size - positives
    if not positives or not negatives:
        return math.nan
    ranks = stats.rankdata(values)
    return float((ranks[truth].sum() - positives * (positives + 1) / 2) / (positives * negatives))


def bootstrap_ci(
    statistic: Callable[..., float], *arrays, n: int = 2000, level: float = 0.95, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap interval (low, high) of ``statistic(*arrays)``, resampling units (the first
    axis, the same rows of every array) with replacement ``n`` times; deterministic for a ``seed``.

    A resample on which the statistic is NaN (e.g. one class only for roc_auc) is left out; (NaN, NaN)
    when there are no units or no resample gives a number.
    """
    if not arrays:
        raise ValueError("bootstrap_ci needs at least one array")
    if not 0 < level < 1 or n < 1:
        raise ValueError(f"need 0 < level < 1 and n >= 1, got level={level}, n={n}")
    columns = [as_array(a) for a in arrays]
    units = len(columns[0])
    if any(len(c) != units for c in columns):
        raise ValueError(f"arrays must have the same number of units, got {[len(c) for c in columns]}")
    if units == 0:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, units, (n, units))
    replicates = np.array([statistic(*(c[rows] for c in columns)) for rows in draws], dtype=float)
    replicates = replicates[~np.isnan(replicates)]
    if not replicates.size:
        return math.nan, math.nan
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(replicates, [tail, 100 - tail])
    return float(low), float(high)
