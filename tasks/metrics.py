"""Quality metrics for reader studies: agreement between readers, segmentation overlap and surface
distance, binary diagnostic accuracy, detection matching and FROC. numpy and scipy only.

Conventions shared by every function:
- A value that is undefined for the data given is NaN, never an exception: kappa or alpha when
  chance agreement is total (every rating in one category) or nothing is paired, a rate whose
  denominator is zero, ROC AUC with one class, a FROC with no reference finding.
- Malformed input raises ValueError: shapes that differ, a rating outside ``categories``, a box
  whose far corner lies before its near one.
- Masks are arrays of any shape; nonzero is inside. Spacing is in millimetres, one value per array
  axis (a single number means isotropic).
- Categorical ratings may be strings or numbers; ``categories`` fixes their order, and a category
  nobody used still counts (in kappa's weights and expected-agreement matrix).
"""

import math
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from scipy import ndimage, optimize, spatial, stats

LUNA16_FPS_PER_SCAN = (0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)
KAPPA_WEIGHTS = (None, "linear", "quadratic")
ALPHA_LEVELS = ("nominal", "ordinal", "interval")

_CHUNK = 1 << 20  # voxels per step when counting overlap: keeps the temporary in cache
_MAX_CODE_SPAN = 1 << 12  # integer ratings spanning more values than this take the general path


# Ratings and categories


def _is_missing(value) -> bool:
    return value is None or (isinstance(value, float | np.floating) and math.isnan(value))


def _as_array(values) -> np.ndarray:
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
    a, b = _as_array(a), _as_array(b)
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
    table = _as_array(ratings)
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


# Segmentation


def _masks(a, b) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
        raise ValueError(f"masks must have the same shape, got {a.shape} and {b.shape}")
    return (a if a.dtype == bool else a != 0), (b if b.dtype == bool else b != 0)


def _overlap(a, b) -> tuple[int, int, int]:
    """|A and B|, |A|, |B|."""
    a, b = _masks(a, b)
    a, b = a.reshape(-1), b.reshape(-1)
    both = 0
    scratch = np.empty(min(_CHUNK, a.size), dtype=bool)
    for start in range(0, a.size, _CHUNK):
        part = scratch[: min(_CHUNK, a.size - start)]
        np.logical_and(a[start : start + part.size], b[start : start + part.size], out=part)
        both += int(np.count_nonzero(part))
    return both, int(np.count_nonzero(a)), int(np.count_nonzero(b))


def dice(a, b) -> float:
    """2|A and B| / (|A| + |B|) of two same-shape masks; 1.0 when both are empty, 0.0 when one is."""
    both, size_a, size_b = _overlap(a, b)
    return 1.0 if size_a + size_b == 0 else 2 * both / (size_a + size_b)


def jaccard(a, b) -> float:
    """|A and B| / |A or B| of two same-shape masks; 1.0 when both are empty, 0.0 when one is."""
    both, size_a, size_b = _overlap(a, b)
    union = size_a + size_b - both
    return 1.0 if union == 0 else both / union


def _spacing(spacing, ndim: int) -> np.ndarray:
    values = np.asarray(spacing, dtype=float).ravel()
    if values.size == 1:
        values = np.repeat(values, ndim)
    if values.size != ndim or not np.all(np.isfinite(values)) or np.any(values <= 0):
        raise ValueError(f"spacing must be one positive number or {ndim} of them, got {spacing!r}")
    return values


def _union_box(a: np.ndarray, b: np.ndarray) -> tuple[slice, ...] | None:
    """The bounding box of a | b, or None when both are empty."""
    box = []
    # Two passes over each mask: projected onto the first axis, and onto the plane of the others.
    projections = [np.logical_or(a.any(axis=0), b.any(axis=0))] if a.ndim > 1 else []
    for axis in range(a.ndim):
        if axis == 0:
            hits = np.flatnonzero(a.any(axis=tuple(range(1, a.ndim))) | b.any(axis=tuple(range(1, a.ndim))))
        else:
            plane = projections[0]
            hits = np.flatnonzero(plane.any(axis=tuple(i for i in range(plane.ndim) if i != axis - 1)))
        if not hits.size:
            return None
        box.append(slice(int(hits[0]), int(hits[-1]) + 1))
    return tuple(box)


def _padded(mask: np.ndarray, box: tuple[slice, ...]) -> np.ndarray:
    """The box of the mask with one empty voxel around it (one copy, unlike np.pad of a slice)."""
    padded = np.zeros(tuple(s.stop - s.start + 2 for s in box), dtype=bool)
    padded[(slice(1, -1),) * mask.ndim] = mask[box]
    return padded


def _surface(padded: np.ndarray) -> np.ndarray:
    """Flat indices of the surface voxels of a mask padded by one empty voxel on every side: inside,
    with a face neighbour outside (the mask XOR its binary erosion with a cross, border outside).
    """
    flat = padded.ravel()
    strides = [int(np.prod(padded.shape[axis + 1 :])) for axis in range(padded.ndim)]
    # The first and last stride[0] voxels are padding, so every shifted slice stays in bounds.
    low, high = strides[0], flat.size - strides[0]
    found = []
    scratch = np.empty(min(_CHUNK, max(high - low, 0)), dtype=bool)
    for start in range(low, high, _CHUNK):
        stop = min(start + _CHUNK, high)
        interior = scratch[: stop - start]
        np.logical_and(flat[start - 1 : stop - 1], flat[start + 1 : stop + 1], out=interior)
        for stride in strides[:-1]:
            interior &= flat[start - stride : stop - stride]
            interior &= flat[start + stride : stop + stride]
        np.greater(flat[start:stop], interior, out=interior)
        found.append(np.flatnonzero(interior) + start)
    return np.concatenate(found) if found else np.empty(0, dtype=np.intp)


def _nearest_by_transform(surface_a, surface_b, shape, sampling) -> tuple[np.ndarray, np.ndarray]:
    def distances_to(target: np.ndarray) -> np.ndarray:
        outside = np.ones(int(np.prod(shape)), dtype=bool)
        outside[target] = False
        return ndimage.distance_transform_edt(outside.reshape(shape), sampling=sampling).ravel()

    return distances_to(surface_b)[surface_a], distances_to(surface_a)[surface_b]


def _nearest_by_tree(pool, surface_a, surface_b, shape, sampling) -> tuple[np.ndarray, np.ndarray]:
    def tree(surface: np.ndarray) -> tuple[np.ndarray, spatial.cKDTree]:
        points = np.column_stack(np.unravel_index(surface, shape)) * sampling
        built = spatial.cKDTree(points, leafsize=32, balanced_tree=False, compact_nodes=False)
        # Asking in the order of the asking surface's own tree keeps neighbouring queries on the same
        # leaves (about 20% faster); the distances come back in that order, which no caller needs.
        return points[built.indices], built

    (asked_a, tree_a), (asked_b, tree_b) = pool.map(tree, (surface_a, surface_b))
    nearest = pool.map(lambda target, asked: target.query(asked, workers=-1)[0], (tree_b, tree_a), (asked_a, asked_b))
    return tuple(nearest)


def _surface_distances(a, b, spacing) -> tuple[np.ndarray, np.ndarray] | None:
    """Distances in mm from each surface voxel of ``a`` to the nearest of ``b``, and from ``b`` to
    ``a`` (each in no particular order); two empty arrays when both masks are empty, None when
    exactly one is.
    """
    a, b = _masks(a, b)
    if a.ndim == 0:
        raise ValueError("surface distances need masks with at least one axis")
    sampling = _spacing(spacing, a.ndim)
    box = _union_box(a, b)
    if box is None:
        return np.empty(0), np.empty(0)
    shape = tuple(s.stop - s.start + 2 for s in box)
    # Each mask's crop, surface and k-d tree on its own core: numpy and cKDTree release the GIL.
    with ThreadPoolExecutor(max_workers=2) as pool:
        surface_a, surface_b = pool.map(lambda mask: _surface(_padded(mask, box)), (a, b))
        if not surface_a.size or not surface_b.size:
            return None
        # Exact either way: a distance transform costs per voxel of the crop, a k-d tree per surface
        # voxel (about three times as much), so the tree wins unless the surfaces fill a third of it.
        if 3 * (surface_a.size + surface_b.size) > np.prod(shape):
            return _nearest_by_transform(surface_a, surface_b, shape, sampling)
        return _nearest_by_tree(pool, surface_a, surface_b, shape, sampling)


def hausdorff(a, b, *, spacing, percentile: float = 100) -> float:
    """Symmetric Hausdorff distance in mm between the surface voxels of two masks: the larger of the two
    directed ``percentile``-th percentiles (linear interpolation; 100 = maximum), as MONAI's
    ``HausdorffDistanceMetric(percentile=..., directed=False)``. 0.0 when both masks are empty, inf
    when one is.
    """
    if not 0 <= percentile <= 100:
        raise ValueError(f"percentile must be within [0, 100], got {percentile}")
    distances = _surface_distances(a, b, spacing)
    if distances is None:
        return math.inf
    if not distances[0].size:
        return 0.0
    if percentile == 100:
        return float(max(d.max() for d in distances))
    return float(max(np.percentile(d, percentile) for d in distances))


def average_surface_distance(a, b, *, spacing) -> float:
    """Symmetric average surface distance in mm: the mean over both directions' surface distances
    pooled, as MONAI's ``SurfaceDistanceMetric(symmetric=True)``. 0.0 when both masks are empty, inf
    when one is.
    """
    distances = _surface_distances(a, b, spacing)
    if distances is None:
        return math.inf
    count = distances[0].size + distances[1].size
    return 0.0 if count == 0 else float((distances[0].sum() + distances[1].sum()) / count)


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
    columns = [_as_array(a) for a in arrays]
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


# Detection


def _boxes(pred_boxes, ref_boxes) -> tuple[np.ndarray, np.ndarray, int]:
    pred, ref = np.asarray(pred_boxes, dtype=float), np.asarray(ref_boxes, dtype=float)
    widths = {x.shape[-1] for x in (pred, ref) if x.size or x.ndim == 2}
    if len(widths) > 1 or not widths <= {4, 6}:
        raise ValueError("boxes must be (x0, y0, x1, y1) or (x0, y0, z0, x1, y1, z1), the same for both")
    ndim = widths.pop() // 2 if widths else 2
    pred, ref = pred.reshape(-1, 2 * ndim), ref.reshape(-1, 2 * ndim)
    for x in (pred, ref):
        if np.any(x[:, ndim:] < x[:, :ndim]):
            raise ValueError("a box's far corner (x1, y1[, z1]) lies before its near corner")
    return pred, ref, ndim


def _pair_quality(pred, ref, ndim, iou, centre_distance_mm, spacing) -> tuple[np.ndarray, np.ndarray]:
    """(pair passes the threshold, quality in [0, 1], higher better) for every pred x ref pair."""
    if centre_distance_mm is not None and not centre_distance_mm >= 0:
        raise ValueError(f"centre_distance_mm must be >= 0, got {centre_distance_mm}")
    if centre_distance_mm is None and not 0 <= iou <= 1:
        raise ValueError(f"iou must be within [0, 1], got {iou}")
    if not pred.size or not ref.size:
        return np.zeros((len(pred), len(ref)), dtype=bool), np.zeros((len(pred), len(ref)))
    if centre_distance_mm is not None:
        scale = np.ones(ndim) if spacing is None else _spacing(spacing, ndim)
        centres = [(x[:, :ndim] + x[:, ndim:]) / 2 * scale for x in (pred, ref)]
        distance = spatial.distance.cdist(*centres)
        passes = distance <= centre_distance_mm
        quality = 1 - distance / centre_distance_mm if centre_distance_mm else np.ones_like(distance)
        return passes, quality
    near = np.maximum(pred[:, None, :ndim], ref[None, :, :ndim])
    far = np.minimum(pred[:, None, ndim:], ref[None, :, ndim:])
    inter = np.prod(np.clip(far - near, 0, None), axis=-1)
    union = (
        np.prod(pred[:, ndim:] - pred[:, :ndim], axis=-1)[:, None]
        + np.prod(ref[:, ndim:] - ref[:, :ndim], axis=-1)[None, :]
        - inter
    )
    overlap = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
    return overlap >= iou, overlap


def match_detections(
    pred_boxes, ref_boxes, *, iou: float = 0.5, centre_distance_mm: float | None = None, spacing=None
) -> dict:
    """One-to-one matching of predicted to reference boxes: as many pairs as possible that pass the
    threshold, and among those the highest total IoU (or lowest total centre distance), by the
    Hungarian algorithm. Returns tp, fp, fn and ``matches`` [(pred index, ref index)] by pred index.

    Boxes are (x0, y0, x1, y1) or (x0, y0, z0, x1, y1, z1) in continuous coordinates (volume =
    product of x1 - x0 ...). A pair passes with IoU >= ``iou``, or, when ``centre_distance_mm`` is
    given (``iou`` is then ignored), with box centres at most that far apart; ``spacing`` (x, y[, z]
    order) turns box coordinates into mm, None meaning they are mm already. No boxes: all counts 0.
    """
    pred, ref, ndim = _boxes(pred_boxes, ref_boxes)
    passes, quality = _pair_quality(pred, ref, ndim, iou, centre_distance_mm, spacing)
    pairs: list[tuple[int, int]] = []
    if passes.any():
        # Each pass is worth more than any total of qualities (all <= 1), so the number of matches
        # comes first and quality only breaks ties between maximum matchings.
        gain = np.where(passes, min(passes.shape) + 1 + quality, 0.0)
        rows, cols = optimize.linear_sum_assignment(gain, maximize=True)
        pairs = sorted((int(r), int(c)) for r, c in zip(rows, cols, strict=True) if passes[r, c])
    return {"tp": len(pairs), "fp": len(pred) - len(pairs), "fn": len(ref) - len(pairs), "matches": pairs}


def froc(
    scans: Sequence[Mapping],
    *,
    thresholds: Sequence[float] | None = None,
    fps_per_scan: Sequence[float] = LUNA16_FPS_PER_SCAN,
    iou: float = 0.5,
    centre_distance_mm: float | None = None,
) -> dict:
    """Sensitivity at average false positives per scan and its mean (the LUNA16 CPM), as the LUNA16
    evaluation script computes them.

    Each scan maps "pred_boxes", "scores" (one per predicted box), "ref_boxes" and optionally
    "spacing". A detection hits a reference when the pair passes ``match_detections``' threshold.
    As in LUNA16, each reference counts once, at the best score of the detections hitting it; other
    detections hitting a reference are neither hits nor false positives; a detection hitting none is
    a false positive. At each score threshold (every distinct score, or ``thresholds``): sensitivity
    = references hit / all references, FPs per scan = false positives / number of scans. The
    sensitivity at each rate is linearly interpolated along that curve from (0, 0), held at the
    last point beyond it: np.interp, as the script's curve (which samples np.interp on a grid).
    Returns fps_per_scan, sensitivity (one per rate), cpm (their mean) and the curve: thresholds
    (from +inf), curve_fps, curve_sensitivity. NaN sensitivities and CPM when there are no scans or
    no references.
    """
    hits, false_positives, references = [], [], 0
    for scan in scans:
        pred, ref, ndim = _boxes(scan["pred_boxes"], scan["ref_boxes"])
        scores = np.asarray(scan["scores"], dtype=float).ravel()
        if scores.size != len(pred) or np.isnan(scores).any():
            raise ValueError(f"a scan has {len(pred)} pred_boxes but {scores.size} scores (or a NaN score)")
        passes, _ = _pair_quality(pred, ref, ndim, iou, centre_distance_mm, scan.get("spacing"))
        references += len(ref)
        hit = passes.any(axis=0)
        hits.append(np.where(passes[:, hit], scores[:, None], -np.inf).max(axis=0, initial=-np.inf))
        false_positives.append(scores[~passes.any(axis=1)])
    hit_scores = np.sort(np.concatenate(hits)) if hits else np.empty(0)
    fp_scores = np.sort(np.concatenate(false_positives)) if false_positives else np.empty(0)
    if thresholds is None:
        cuts = np.unique(np.concatenate([hit_scores, fp_scores]))[::-1]
    else:
        cuts = np.sort(np.asarray(thresholds, dtype=float).ravel())[::-1]
    cuts = np.concatenate([[np.inf], cuts])
    at = np.asarray(fps_per_scan, dtype=float)
    if not hits or not references:
        curve_fps = curve_sensitivity = np.full(cuts.shape, np.nan)
        sensitivity = np.full(at.shape, np.nan)
    else:
        curve_fps = (fp_scores.size - np.searchsorted(fp_scores, cuts, side="left")) / len(hits)
        curve_sensitivity = (hit_scores.size - np.searchsorted(hit_scores, cuts, side="left")) / references
        sensitivity = np.interp(at, curve_fps, curve_sensitivity)
    return {
        "fps_per_scan": tuple(at.tolist()),
        "sensitivity": tuple(sensitivity.tolist()),
        "cpm": float(sensitivity.mean()) if at.size else math.nan,
        "thresholds": cuts,
        "curve_fps": curve_fps,
        "curve_sensitivity": curve_sensitivity,
    }
