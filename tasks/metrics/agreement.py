"""Agreement between readers: Cohen's kappa (unweighted, linear, quadratic), Fleiss' kappa,
Krippendorff's alpha (conventions: tasks.metrics)."""

import math
from collections.abc import Sequence

import numpy as np

KAPPA_WEIGHTS = (None, "linear", "quadratic")
ALPHA_LEVELS = ("nominal", "ordinal", "interval")
_MAX_CODE_SPAN = 1 << 12  # integer ratings spanning more values than this take the general path


# Ratings and categories


def _is_missing(value) -> bool:
    return value is None or (isinstance(value, float | np.floating) and math.isnan(value))


def as_array(values) -> np.ndarray:
    if isinstance(values, np.ndarray):
        return values
    array = np.asarray(values)
    if array.dtype.kind in "US":
        # numpy would turn a NaN among strings into the string "nan": keep the objects.
        array = np.asarray(values, dtype=object)
    return array


def _category_index(categories) -> dict:
    index = {}
    for position, category in enumerate(categories):
        if _is_missing(category):
            raise ValueError("categories may not contain a missing value (None or NaN)")
        if category in index:
            raise ValueError(f"category {category!r} is listed twice")
        index[category] = position
    if not index:
        raise ValueError("categories is empty")
    return index


def _integer_categories(index: dict) -> bool:
    return all(isinstance(c, int | np.integer) and not isinstance(c, bool | np.bool_) for c in index)


def _lookup(index: dict, value, missing_ok: bool) -> int:
    if _is_missing(value):
        if missing_ok:
            return -1
        raise ValueError("a rating is missing (None or NaN); every pair needs both ratings")
    try:
        return index[value]
    except (KeyError, TypeError):
        raise ValueError(f"rating {value!r} is not one of categories {list(index)!r}") from None


def _codes(values: np.ndarray, index: dict, *, missing_ok: bool) -> np.ndarray:
    """Position of each rating in ``categories`` (same shape, intp); -1 where missing if ``missing_ok``."""
    flat = values.ravel()
    if flat.size == 0:
        return np.zeros(values.shape, dtype=np.intp)
    if values.dtype.kind in "iu" and _integer_categories(index):
        low, high = min(index), max(index)
        if high - low < _MAX_CODE_SPAN and low <= flat.min() and flat.max() <= high:
            table = np.full(high - low + 1, -1, dtype=np.intp)
            table[np.asarray(list(index), dtype=np.intp) - low] = np.arange(len(index))
            codes = table[flat.astype(np.intp) - low]
            if codes.min() >= 0:
                return codes.reshape(values.shape)
    try:
        unique, inverse = np.unique(flat, return_inverse=True)
    except TypeError:  # an unorderable mix, e.g. strings and None
        codes = np.fromiter((_lookup(index, v, missing_ok) for v in flat.tolist()), np.intp, flat.size)
        return codes.reshape(values.shape)
    table = np.array([_lookup(index, v, missing_ok) for v in unique.tolist()], dtype=np.intp)
    return table[inverse.ravel()].reshape(values.shape)


def _confusion(a: np.ndarray, b: np.ndarray, index: dict) -> np.ndarray:
    """k x k counts of (category of a, category of b) pairs, in ``categories`` order."""
    k = len(index)
    if a.dtype.kind in "iu" and b.dtype.kind in "iu" and _integer_categories(index):
        low = min(index)
        span = max(index) - low + 1
        in_range = all(low <= x.min() and x.max() < low + span for x in (a, b))
        if span <= _MAX_CODE_SPAN and in_range:
            # One pass over the pairs in the raw values; the k x k block is picked out afterwards.
            joint = a.astype(np.intp, copy=False) * span
            joint += b.astype(np.intp, copy=False)
            if low:
                joint -= low * (span + 1)
            full = np.bincount(joint, minlength=span * span).reshape(span, span)
            at = np.asarray(list(index), dtype=np.intp) - low
            counts = full[np.ix_(at, at)]
            if counts.sum() == a.size:
                return counts
    joint = _codes(a, index, missing_ok=False) * k + _codes(b, index, missing_ok=False)
    return np.bincount(joint, minlength=k * k).reshape(k, k)


def _unit_counts(codes: np.ndarray, k: int) -> np.ndarray:
    """units x k: how many readers put each unit in each category."""
    units, _ = np.nonzero(codes >= 0)
    joint = units * k + codes[codes >= 0]
    return np.bincount(joint, minlength=codes.shape[0] * k).reshape(codes.shape[0], k)


def _kappa_weights(k: int, weights) -> np.ndarray:
    if weights not in KAPPA_WEIGHTS:
        raise ValueError(f"weights must be one of {KAPPA_WEIGHTS}, not {weights!r}")
    distance = np.abs(np.subtract.outer(np.arange(k), np.arange(k))).astype(float)
    if weights is None:
        return (distance > 0).astype(float)
    return distance if weights == "linear" else distance**2


def cohen_kappa(a, b, *, categories: Sequence, weights: str | None = None) -> float:
    """Cohen's kappa of two readers' paired ratings over the ordered ``categories``, unweighted or with
    linear or quadratic weights on the category positions, as scikit-learn's ``cohen_kappa_score``.

    NaN when there are no pairs or expected disagreement is zero (both readers used one and the
    same category: agreement is perfect but so is chance agreement; scikit-learn returns NaN too).
    """
    a, b = as_array(a), as_array(b)
    if a.ndim != 1 or a.shape != b.shape:
        raise ValueError(f"a and b must be 1-D and the same length, got shapes {a.shape} and {b.shape}")
    index = _category_index(categories)
    w = _kappa_weights(len(index), weights)
    if a.size == 0:
        return math.nan
    observed = _confusion(a, b, index).astype(float)
    expected = np.outer(observed.sum(axis=1), observed.sum(axis=0)) / a.size
    disagreement = float((w * expected).sum())
    if disagreement == 0:
        return math.nan
    return float(1 - (w * observed).sum() / disagreement)


def _ratings_table(ratings) -> np.ndarray:
    table = as_array(ratings)
    if table.ndim != 2:
        raise ValueError(f"ratings must be units x readers (2-D), got shape {table.shape}")
    return table


def fleiss_kappa(ratings, *, categories: Sequence) -> float:
    """Fleiss' kappa of a units x readers table (None or NaN where a reader did not read a unit).

    Every unit must carry the same number (>= 2) of ratings, as Fleiss (1971) requires; which
    readers gave them may differ. A unit with a different count raises ValueError naming it: drop
    or complete such rows first. NaN for no units or when every rating is one category.
    """
    table = _ratings_table(ratings)
    index = _category_index(categories)
    if table.shape[0] == 0:
        return math.nan
    counts = _unit_counts(_codes(table, index, missing_ok=True), len(index)).astype(float)
    per_unit = counts.sum(axis=1)
    m = per_unit[0]
    uneven = np.flatnonzero(per_unit != m)
    if uneven.size:
        i = int(uneven[0])
        raise ValueError(
            f"unit {i} has {int(per_unit[i])} ratings but unit 0 has {int(m)}: Fleiss' kappa needs the same "
            "number of ratings for every unit; drop or complete the rows with missing ratings"
        )
    if m < 2:
        raise ValueError(f"Fleiss' kappa needs at least 2 ratings per unit, got {int(m)}")
    agreement = float(((counts**2).sum(axis=1) - m).mean() / (m * (m - 1)))
    shares = counts.sum(axis=0) / counts.sum()
    chance = float((shares**2).sum())
    if chance == 1:
        return math.nan
    return (agreement - chance) / (1 - chance)


def _observed_values(table: np.ndarray) -> list:
    if table.dtype.kind in "iub":
        return np.unique(table).tolist()
    if table.dtype.kind == "f":
        return np.unique(table[~np.isnan(table)]).tolist()
    values = {v for v in table.ravel().tolist() if not _is_missing(v)}
    try:
        return sorted(values)
    except TypeError:  # nominal strings mixed with numbers: any fixed order will do
        return sorted(values, key=repr)


def krippendorff_alpha(ratings, *, level: str = "nominal", categories: Sequence | None = None) -> float:
    """Krippendorff's alpha of a units x readers table (None or NaN = not rated), from the coincidence
    matrix of pairable values (Krippendorff 2011); units with fewer than 2 ratings are left out.

    ``level``: nominal (0/1 distance), ordinal (rank-based: the squared count of pairable values from
    one category to the other, less half of each end's), interval (squared difference of the
    values). Values are ordered by ``categories`` when given, else they must be numbers (nominal also
    takes any values). NaN when nothing is pairable or only one value occurs.
    """
    if level not in ALPHA_LEVELS:
        raise ValueError(f"level must be one of {ALPHA_LEVELS}, not {level!r}")
    table = _ratings_table(ratings)
    domain = list(categories) if categories is not None else _observed_values(table)
    numeric = all(isinstance(v, int | float | np.number) for v in domain)
    if level == "interval" and not numeric:
        raise ValueError("interval alpha needs numeric ratings (and numeric categories)")
    if level == "ordinal" and not numeric and categories is None:
        raise ValueError("ordinal alpha needs numeric ratings, or categories giving the order of the values")
    index = _category_index(domain) if domain else {}
    if not index:
        return math.nan
    counts = _unit_counts(_codes(table, index, missing_ok=True), len(index)).astype(float)
    per_unit = counts.sum(axis=1)
    counts, per_unit = counts[per_unit >= 2], per_unit[per_unit >= 2]
    if not counts.size:
        return math.nan
    weighted = counts / (per_unit - 1)[:, None]
    coincidence = counts.T @ weighted - np.diag(weighted.sum(axis=0))
    totals = coincidence.sum(axis=1)
    if level == "nominal":
        delta = 1 - np.eye(len(index))
    elif level == "ordinal":
        middle = np.cumsum(totals) - totals / 2
        delta = np.subtract.outer(middle, middle) ** 2
    else:
        values = np.asarray(domain, dtype=float)
        delta = np.subtract.outer(values, values) ** 2
    expected = float(totals @ delta @ totals)
    if expected == 0:
        return math.nan
    return float(1 - (totals.sum() - 1) * (coincidence * delta).sum() / expected)
