"""Quality metrics against scikit-learn, MONAI and published examples; no database.

scikit-learn, torch and MONAI are test-only references: the tests that need one skip without it.
"""

import math
import warnings

import numpy as np
import pytest
from scipy import ndimage

from tasks import metrics

nan = np.nan
SPACING = (0.7, 0.7, 2.5)


@pytest.fixture(scope="module")
def sklearn_metrics():
    return pytest.importorskip("sklearn.metrics")


@pytest.fixture(scope="module")
def monai_metrics():
    pytest.importorskip("torch")
    return pytest.importorskip("monai.metrics")


def monai_value(metric, a, b, spacing=None):
    import torch

    def tensor(mask):
        return torch.from_numpy(np.asarray(mask, dtype=np.float32))[None, None]

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        kwargs = {} if spacing is None else {"spacing": spacing}
        return float(metric(tensor(a), tensor(b), **kwargs).item())


def blob_pair(rng, shape=(32, 32, 16), sigma=2.0):
    """Two overlapping smooth irregular masks."""
    field = ndimage.gaussian_filter(rng.standard_normal(shape), sigma)
    other = field + 0.5 * ndimage.gaussian_filter(rng.standard_normal(shape), sigma)
    return field > 0.3 * field.std(), other > 0.3 * other.std()


# Cohen's kappa


@pytest.mark.parametrize("weights", [None, "linear", "quadratic"])
def test_cohen_kappa_matches_sklearn_for_random_readers(sklearn_metrics, weights):
    rng = np.random.default_rng(7)
    for trial in range(40):
        k = int(rng.integers(2, 7))
        categories = list(range(10, 10 + k)) if trial % 2 else [f"grade {i}" for i in range(k)]
        n = int(rng.integers(1, 60))
        a = rng.integers(0, k, n)
        b = np.clip(a + rng.integers(-1, 2, n), 0, k - 1)
        values = np.asarray(categories, dtype=None if trial % 2 else object)  # integers take the fast path
        a, b = values[a], values[b]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            expected = sklearn_metrics.cohen_kappa_score(a, b, labels=categories, weights=weights)
        ours = metrics.cohen_kappa(a, b, categories=categories, weights=weights)
        if math.isnan(expected):
            assert math.isnan(ours)
        else:
            assert ours == pytest.approx(expected, abs=1e-12)


def test_cohen_kappa_counts_a_category_nobody_used(sklearn_metrics):
    a = [0, 0, 1, 3, 3, 1, 0]
    b = [0, 1, 1, 3, 1, 1, 0]
    with_gap = metrics.cohen_kappa(a, b, categories=[0, 1, 2, 3], weights="quadratic")
    without = metrics.cohen_kappa(a, b, categories=[0, 1, 3], weights="quadratic")
    assert with_gap != pytest.approx(without)
    expected = sklearn_metrics.cohen_kappa_score(a, b, labels=[0, 1, 2, 3], weights="quadratic")
    assert with_gap == pytest.approx(expected, abs=1e-12)


def test_cohen_kappa_fast_integer_path_agrees_with_strings():
    rng = np.random.default_rng(3)
    a = rng.integers(-2, 3, 5000)
    b = np.clip(a + rng.integers(-1, 2, 5000), -2, 2)
    names = np.array(["a", "b", "c", "d", "e"], dtype=object)
    for weights in metrics.KAPPA_WEIGHTS:
        numeric = metrics.cohen_kappa(a, b, categories=[-2, -1, 0, 1, 2], weights=weights)
        named = metrics.cohen_kappa(names[a + 2], names[b + 2], categories=list(names), weights=weights)
        assert numeric == pytest.approx(named, abs=1e-12)
    small = metrics.cohen_kappa((a + 2).astype(np.uint8), (b + 2).astype(np.uint8), categories=[0, 1, 2, 3, 4])
    assert small == pytest.approx(metrics.cohen_kappa(a, b, categories=[-2, -1, 0, 1, 2]), abs=1e-12)


def test_cohen_kappa_is_nan_when_both_readers_use_one_identical_category(sklearn_metrics):
    for weights in metrics.KAPPA_WEIGHTS:
        assert math.isnan(metrics.cohen_kappa(["benign"] * 4, ["benign"] * 4, categories=["benign", "malignant"],
                                              weights=weights))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            assert math.isnan(sklearn_metrics.cohen_kappa_score([1, 1], [1, 1], labels=[0, 1], weights=weights))


def test_cohen_kappa_empty_is_nan_and_bad_input_raises():
    assert math.isnan(metrics.cohen_kappa([], [], categories=[0, 1]))
    assert metrics.cohen_kappa([0, 1, 1], [0, 1, 1], categories=[0, 1]) == 1.0
    with pytest.raises(ValueError, match="not one of categories"):
        metrics.cohen_kappa([0, 7], [0, 1], categories=[0, 1])
    with pytest.raises(ValueError, match="rating 1 is not one of categories"):
        metrics.cohen_kappa(np.array([0, 1]), np.array([0, 2]), categories=[0, 2])
    with pytest.raises(ValueError, match="not one of categories"):
        metrics.cohen_kappa(["a", "z"], ["a", "a"], categories=["a", "b"])
    with pytest.raises(ValueError, match="missing"):
        metrics.cohen_kappa(["a", None], ["a", "a"], categories=["a", "b"])
    with pytest.raises(ValueError, match="same length"):
        metrics.cohen_kappa([0, 1], [0], categories=[0, 1])
    with pytest.raises(ValueError, match="weights"):
        metrics.cohen_kappa([0], [0], categories=[0, 1], weights="cubic")
    with pytest.raises(ValueError, match="twice"):
        metrics.cohen_kappa([0], [0], categories=[0, 0])


# Fleiss' kappa and Krippendorff's alpha

# Wikipedia's worked example (Fleiss' kappa article): 10 subjects, 14 raters, 5 categories; kappa 0.210.
WIKIPEDIA_FLEISS_COUNTS = [
    [0, 0, 0, 0, 14], [0, 2, 6, 4, 2], [0, 0, 3, 5, 6], [0, 3, 9, 2, 0], [2, 2, 8, 1, 1],
    [7, 7, 0, 0, 0], [3, 2, 6, 3, 0], [2, 5, 3, 2, 2], [6, 5, 2, 1, 0], [0, 2, 2, 3, 7],
]

# Fleiss (1971): 30 patients, 6 psychiatrists each, 5 diagnoses; R irr::kappam.fleiss gives 0.4302445.
FLEISS_1971_DIAGNOSES = [
    [4, 4, 4, 4, 4, 4], [2, 2, 2, 5, 5, 5], [2, 3, 3, 3, 3, 5], [5, 5, 5, 5, 5, 5], [2, 2, 2, 4, 4, 4],
    [1, 1, 3, 3, 3, 3], [3, 3, 3, 3, 5, 5], [1, 1, 3, 3, 3, 4], [1, 1, 4, 4, 4, 4], [5, 5, 5, 5, 5, 5],
    [1, 4, 4, 4, 4, 4], [1, 2, 4, 4, 4, 4], [2, 2, 2, 3, 3, 3], [1, 4, 4, 4, 4, 4], [2, 2, 4, 4, 4, 5],
    [3, 3, 3, 3, 3, 5], [1, 1, 1, 4, 5, 5], [1, 1, 1, 1, 1, 2], [2, 2, 4, 4, 4, 4], [1, 3, 3, 5, 5, 5],
    [5, 5, 5, 5, 5, 5], [2, 4, 4, 4, 4, 4], [2, 2, 4, 5, 5, 5], [1, 1, 4, 4, 4, 4], [1, 4, 4, 4, 4, 5],
    [2, 2, 2, 2, 2, 4], [1, 1, 1, 1, 5, 5], [2, 2, 4, 4, 4, 4], [1, 3, 3, 3, 3, 3], [5, 5, 5, 5, 5, 5],
]

# Krippendorff (2011), "Computing Krippendorff's alpha-reliability": 4 observers x 12 units, missing
# values; alpha nominal 0.743, ordinal 0.815, interval 0.849. Here one row per unit.
KRIPPENDORFF_2011 = np.array([
    [1, 2, 3, 3, 2, 1, 4, 1, 2, nan, nan, nan],
    [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, nan, 3],
    [nan, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, nan],
    [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, nan],
]).T

# Wikipedia's computational example (Krippendorff's alpha article): 3 coders x 15 units;
# nominal 0.691, interval 0.811 (fast-krippendorff's tests: 0.691358, 0.810845).
WIKIPEDIA_KRIPPENDORFF = np.array([
    [nan, nan, nan, nan, nan, 3, 4, 1, 2, 1, 1, 3, 3, nan, 3],
    [1, nan, 2, 1, 3, 3, 4, 3, nan, nan, nan, nan, nan, nan, nan],
    [nan, nan, 2, 1, 3, 4, 4, nan, 2, 1, 1, 3, 3, nan, 4],
]).T


def test_fleiss_kappa_reproduces_wikipedia_example():
    ratings = np.array([np.repeat(np.arange(1, 6), row) for row in WIKIPEDIA_FLEISS_COUNTS])
    assert metrics.fleiss_kappa(ratings, categories=[1, 2, 3, 4, 5]) == pytest.approx(0.210, abs=5e-4)


def test_fleiss_kappa_reproduces_fleiss_1971_diagnoses():
    kappa = metrics.fleiss_kappa(FLEISS_1971_DIAGNOSES, categories=[1, 2, 3, 4, 5])
    assert kappa == pytest.approx(0.4302445, abs=1e-7)


def test_fleiss_kappa_takes_string_categories_and_different_readers_per_unit():
    complete = [["a", "b"], ["a", "a"], ["b", "b"], ["c", "b"]]
    scattered = [["a", "b", None], [None, "a", "a"], ["b", nan, "b"], ["c", "b", None]]
    expected = metrics.fleiss_kappa(complete, categories=["a", "b", "c"])
    assert metrics.fleiss_kappa(scattered, categories=["a", "b", "c"]) == pytest.approx(expected)


def test_fleiss_kappa_rejects_units_with_a_different_number_of_ratings():
    with pytest.raises(ValueError, match="unit 1 has 2 ratings but unit 0 has 3"):
        metrics.fleiss_kappa([[1, 2, 2], [1, nan, 2], [2, 2, 2]], categories=[1, 2])
    with pytest.raises(ValueError, match="at least 2"):
        metrics.fleiss_kappa([[1, nan], [nan, 2]], categories=[1, 2])


def test_fleiss_kappa_undefined_cases_are_nan():
    assert math.isnan(metrics.fleiss_kappa(np.empty((0, 3)), categories=[1, 2]))
    assert math.isnan(metrics.fleiss_kappa([[1, 1, 1], [1, 1, 1]], categories=[1, 2]))


@pytest.mark.parametrize("level,expected", [("nominal", 0.743), ("ordinal", 0.815), ("interval", 0.849)])
def test_krippendorff_alpha_reproduces_krippendorff_2011(level, expected):
    assert metrics.krippendorff_alpha(KRIPPENDORFF_2011, level=level) == pytest.approx(expected, abs=5e-4)


def test_krippendorff_alpha_reproduces_wikipedia_example():
    assert metrics.krippendorff_alpha(WIKIPEDIA_KRIPPENDORFF) == pytest.approx(0.691358, abs=1e-6)
    assert metrics.krippendorff_alpha(WIKIPEDIA_KRIPPENDORFF, level="interval") == pytest.approx(0.810845, abs=1e-6)


def test_krippendorff_ordinal_alpha_orders_string_ratings_by_categories():
    names = np.array(["very low", "low", "mid", "high", "very high"], dtype=object)
    table = np.full(KRIPPENDORFF_2011.shape, None, dtype=object)
    present = ~np.isnan(KRIPPENDORFF_2011)
    table[present] = names[KRIPPENDORFF_2011[present].astype(int) - 1]
    alpha = metrics.krippendorff_alpha(table, level="ordinal", categories=list(names) + ["extreme"])
    assert alpha == pytest.approx(0.815, abs=5e-4)
    assert metrics.krippendorff_alpha(table, categories=list(names)) == pytest.approx(0.743, abs=5e-4)
    with pytest.raises(ValueError, match="numeric"):
        metrics.krippendorff_alpha(table, level="ordinal")
    with pytest.raises(ValueError, match="numeric"):
        metrics.krippendorff_alpha(table, level="interval", categories=list(names))


def test_krippendorff_alpha_undefined_cases_are_nan():
    assert math.isnan(metrics.krippendorff_alpha(np.full((3, 2), nan)))
    assert math.isnan(metrics.krippendorff_alpha([[1, nan], [nan, 2]]))  # nothing pairable
    assert math.isnan(metrics.krippendorff_alpha([[2, 2], [2, 2, ]], level="interval"))  # one value only
    assert metrics.krippendorff_alpha([[1, 1], [2, 2], [3, 3]], level="ordinal") == 1.0


# Segmentation overlap and surface distance


def test_dice_and_jaccard_match_monai_on_random_masks(monai_metrics):
    rng = np.random.default_rng(11)
    for _ in range(10):
        a, b = blob_pair(rng)
        expected = monai_value(monai_metrics.DiceMetric(include_background=True), a, b)
        assert metrics.dice(a, b) == pytest.approx(expected, abs=1e-6)
        d = metrics.dice(a, b)
        assert metrics.jaccard(a, b) == pytest.approx(d / (2 - d))


def test_dice_and_jaccard_empty_mask_conventions():
    empty, full = np.zeros((4, 4, 2), bool), np.ones((4, 4, 2), bool)
    assert metrics.dice(empty, empty) == 1.0 and metrics.jaccard(empty, empty) == 1.0
    assert metrics.dice(empty, full) == 0.0 and metrics.jaccard(full, empty) == 0.0
    assert metrics.dice(np.zeros(0), np.zeros(0)) == 1.0
    with pytest.raises(ValueError, match="same shape"):
        metrics.dice(empty, np.zeros((4, 4, 3), bool))
    with pytest.raises(ValueError, match="same shape"):
        metrics.hausdorff(empty, np.zeros((4, 4)), spacing=1)


def test_dice_counts_across_chunks():
    rng = np.random.default_rng(0)
    a, b = rng.random(3_000_001) < 0.3, rng.random(3_000_001) < 0.3
    assert metrics.dice(a, b) == pytest.approx(2 * np.sum(a & b) / (a.sum() + b.sum()))


@pytest.mark.parametrize("percentile", [95, None])
def test_hausdorff_matches_monai_with_anisotropic_spacing(monai_metrics, percentile):
    rng = np.random.default_rng(5)
    metric = monai_metrics.HausdorffDistanceMetric(include_background=True, percentile=percentile)
    for trial in range(8):
        if trial < 6:
            a, b = blob_pair(rng)
        else:  # speckle: surfaces fill the crop, the distance-transform path
            a, b = rng.random((24, 20, 12)) < 0.4, rng.random((24, 20, 12)) < 0.4
        expected = monai_value(metric, a, b, SPACING)
        ours = metrics.hausdorff(a, b, spacing=SPACING, percentile=percentile or 100)
        assert ours == pytest.approx(expected, abs=1e-4)


def test_average_surface_distance_matches_monai_symmetric(monai_metrics):
    rng = np.random.default_rng(9)
    metric = monai_metrics.SurfaceDistanceMetric(include_background=True, symmetric=True)
    for trial in range(8):
        a, b = blob_pair(rng) if trial < 6 else (rng.random((24, 20, 12)) < 0.4, rng.random((24, 20, 12)) < 0.4)
        expected = monai_value(metric, a, b, SPACING)
        assert metrics.average_surface_distance(a, b, spacing=SPACING) == pytest.approx(expected, abs=1e-4)


def test_surface_distances_match_monai_in_2d_and_at_the_array_border(monai_metrics):
    rng = np.random.default_rng(2)
    hd95 = monai_metrics.HausdorffDistanceMetric(include_background=True, percentile=95)
    asd = monai_metrics.SurfaceDistanceMetric(include_background=True, symmetric=True)
    for _ in range(5):
        a, b = blob_pair(rng, shape=(40, 28), sigma=3)
        a[0, :], b[:, -1] = True, True  # touching the border: edge voxels there
        assert metrics.hausdorff(a, b, spacing=(0.5, 1.5), percentile=95) == pytest.approx(
            monai_value(hd95, a, b, (0.5, 1.5)), abs=1e-4)
        assert metrics.average_surface_distance(a, b, spacing=(0.5, 1.5)) == pytest.approx(
            monai_value(asd, a, b, (0.5, 1.5)), abs=1e-4)


def single_voxels():
    a, b = np.zeros((9, 9, 9), bool), np.zeros((9, 9, 9), bool)
    a[2, 3, 4] = True
    b[5, 3, 6] = True
    return a, b, math.hypot(3 * 0.7, 2 * 2.5)


def test_single_voxel_masks_are_their_own_surface():
    a, b, expected = single_voxels()
    assert metrics.hausdorff(a, b, spacing=SPACING) == pytest.approx(expected)
    assert metrics.hausdorff(a, b, spacing=SPACING, percentile=95) == pytest.approx(expected)
    assert metrics.average_surface_distance(a, b, spacing=SPACING) == pytest.approx(expected)
    assert metrics.hausdorff(a, a, spacing=SPACING) == 0.0
    assert metrics.dice(a, b) == 0.0 and metrics.dice(a, a) == 1.0


def test_single_voxel_masks_match_monai(monai_metrics):
    a, b, expected = single_voxels()
    hd95 = monai_metrics.HausdorffDistanceMetric(include_background=True, percentile=95)
    asd = monai_metrics.SurfaceDistanceMetric(include_background=True, symmetric=True)
    assert monai_value(hd95, a, b, SPACING) == pytest.approx(expected, abs=1e-4)
    assert monai_value(asd, a, b, SPACING) == pytest.approx(expected, abs=1e-4)


def test_isotropic_spacing_scales_distances():
    rng = np.random.default_rng(4)
    a, b = blob_pair(rng)
    unit = metrics.hausdorff(a, b, spacing=1.0)
    assert metrics.hausdorff(a, b, spacing=(2.0, 2.0, 2.0)) == pytest.approx(2 * unit)
    with pytest.raises(ValueError, match="spacing"):
        metrics.hausdorff(a, b, spacing=(1.0, 1.0))
    with pytest.raises(ValueError, match="percentile"):
        metrics.hausdorff(a, b, spacing=1.0, percentile=101)


def test_surface_distance_empty_mask_conventions():
    empty, some = np.zeros((8, 8, 4), bool), np.zeros((8, 8, 4), bool)
    some[2:5, 2:5, 1:3] = True
    assert metrics.hausdorff(empty, empty, spacing=SPACING) == 0.0
    assert metrics.hausdorff(empty, empty, spacing=SPACING, percentile=95) == 0.0
    assert metrics.average_surface_distance(empty, empty, spacing=SPACING) == 0.0
    assert metrics.hausdorff(some, empty, spacing=SPACING) == math.inf
    assert metrics.hausdorff(empty, some, spacing=SPACING, percentile=95) == math.inf
    assert metrics.average_surface_distance(empty, some, spacing=SPACING) == math.inf


# Diagnostic accuracy


def test_sensitivity_specificity_counts_and_rates():
    result = metrics.sensitivity_specificity([1, 1, 0, 0, 1], [True, False, False, True, True])
    assert result == {
        "tp": 2, "fp": 1, "fn": 1, "tn": 1,
        "sensitivity": pytest.approx(2 / 3), "specificity": 0.5, "ppv": pytest.approx(2 / 3), "npv": 0.5,
    }


def test_sensitivity_specificity_zero_denominators_are_nan():
    no_positives = metrics.sensitivity_specificity([0, 0, 0], [0, 0, 0])
    assert (no_positives["tn"], no_positives["specificity"], no_positives["npv"]) == (3, 1.0, 1.0)
    assert math.isnan(no_positives["sensitivity"]) and math.isnan(no_positives["ppv"])
    empty = metrics.sensitivity_specificity([], [])
    assert all(math.isnan(empty[key]) for key in ("sensitivity", "specificity", "ppv", "npv"))
    with pytest.raises(ValueError, match="binary"):
        metrics.sensitivity_specificity([0, 2], [0, 1])


def test_roc_auc_matches_sklearn_with_ties(sklearn_metrics):
    rng = np.random.default_rng(1)
    for _ in range(30):
        n = int(rng.integers(2, 80))
        y = rng.random(n) < 0.4
        y[0], y[1] = True, False
        scores = rng.integers(0, 5, n) + 0.5 * y  # few distinct values: many ties
        assert metrics.roc_auc(y, scores) == pytest.approx(sklearn_metrics.roc_auc_score(y, scores), abs=1e-12)


def test_roc_auc_single_class_is_nan():
    assert math.isnan(metrics.roc_auc([1, 1, 1], [0.2, 0.4, 0.9]))
    assert math.isnan(metrics.roc_auc([], []))
    assert metrics.roc_auc([0, 1], [0.5, 0.5]) == 0.5


def test_bootstrap_ci_is_deterministic_and_brackets_the_estimate():
    rng = np.random.default_rng(0)
    values = rng.normal(10, 2, 200)
    low, high = metrics.bootstrap_ci(np.mean, values, n=500)
    assert low < values.mean() < high
    assert high - low == pytest.approx(2 * 1.96 * values.std() / np.sqrt(200), rel=0.2)
    assert metrics.bootstrap_ci(np.mean, values, n=500) == (low, high)
    assert metrics.bootstrap_ci(np.mean, values, n=500, seed=1) != (low, high)


def test_bootstrap_ci_resamples_units_jointly_and_skips_undefined_resamples():
    y = np.array([1, 0, 1, 0, 1, 1, 0, 0, 1, 0])
    scores = np.array([0.9, 0.1, 0.8, 0.3, 0.7, 0.6, 0.4, 0.2, 0.95, 0.05])
    low, high = metrics.bootstrap_ci(metrics.roc_auc, y, scores, n=300)
    assert (low, high) == (1.0, 1.0)  # separable: every defined resample has AUC 1
    assert metrics.bootstrap_ci(metrics.roc_auc, [1, 1], [0.2, 0.3]) == pytest.approx((nan, nan), nan_ok=True)
    assert metrics.bootstrap_ci(np.mean, []) == pytest.approx((nan, nan), nan_ok=True)
    with pytest.raises(ValueError, match="same number of units"):
        metrics.bootstrap_ci(metrics.roc_auc, y, scores[:5])


# Detection


def test_match_detections_maximises_matches_before_iou():
    refs = [[0, 0, 10, 10], [4, 0, 14, 10]]
    preds = [[1, 0, 11, 10], [-3, 0, 7, 10]]  # pred 0 fits ref 0 best, but only ref 0 fits pred 1
    result = metrics.match_detections(preds, refs, iou=0.5)
    assert result == {"tp": 2, "fp": 0, "fn": 0, "matches": [(0, 1), (1, 0)]}


def test_match_detections_prefers_the_higher_total_iou():
    refs = [[0, 0, 10, 10], [20, 0, 30, 10]]
    preds = [[19, 0, 29, 10], [1, 0, 11, 10], [50, 50, 60, 60]]
    result = metrics.match_detections(preds, refs, iou=0.3)
    assert result == {"tp": 2, "fp": 1, "fn": 0, "matches": [(0, 1), (1, 0)]}
    strict = metrics.match_detections(preds, refs, iou=0.95)
    assert strict == {"tp": 0, "fp": 3, "fn": 2, "matches": []}


def test_match_detections_by_centre_distance_in_mm_3d():
    refs = [[8, 8, 4, 12, 12, 6]]  # centre (10, 10, 5)
    preds = [[8, 8, 3, 12, 12, 5]]  # centre (10, 10, 4): one slice away
    assert metrics.match_detections(preds, refs, centre_distance_mm=2.0)["tp"] == 1
    assert metrics.match_detections(preds, refs, centre_distance_mm=2.0, spacing=SPACING)["tp"] == 0
    assert metrics.match_detections(preds, refs, centre_distance_mm=2.5, spacing=SPACING)["matches"] == [(0, 0)]


def test_match_detections_empty_and_malformed_boxes():
    assert metrics.match_detections([], []) == {"tp": 0, "fp": 0, "fn": 0, "matches": []}
    assert metrics.match_detections([[0, 0, 1, 1]], []) == {"tp": 0, "fp": 1, "fn": 0, "matches": []}
    assert metrics.match_detections([], np.zeros((2, 6))) == {"tp": 0, "fp": 0, "fn": 2, "matches": []}
    with pytest.raises(ValueError, match="far corner"):
        metrics.match_detections([[5, 5, 1, 1]], [[0, 0, 1, 1]])
    with pytest.raises(ValueError, match="the same for both"):
        metrics.match_detections([[0, 0, 1, 1]], [[0, 0, 0, 1, 1, 1]])
    with pytest.raises(ValueError, match="iou"):
        metrics.match_detections([], [], iou=1.5)


def box(x, y, size=10):
    return [x, y, x + size, y + size]


HAND_MADE_SCANS = [
    {  # ref 0 hit twice (0.9 counts, the 0.4 duplicate is ignored), ref 1 missed, one FP at 0.8
        "ref_boxes": [box(0, 0), box(20, 20)],
        "pred_boxes": [box(0, 0), box(1, 1), box(50, 50)],
        "scores": [0.9, 0.4, 0.8],
    },
    {  # ref hit at 0.3, FPs at 0.6 and 0.2
        "ref_boxes": [box(0, 0)],
        "pred_boxes": [box(0, 0), box(40, 40), box(70, 70)],
        "scores": [0.3, 0.6, 0.2],
    },
    {"ref_boxes": [], "pred_boxes": [], "scores": []},  # a clean scan still counts in FPs per scan
]


def test_froc_on_a_hand_made_case():
    result = metrics.froc(HAND_MADE_SCANS)
    # curve (FPs/scan, sensitivity): (0, 0) (0, 1/3) (1/3, 1/3) (2/3, 1/3) (2/3, 2/3) (1, 2/3)
    assert result["curve_fps"] == pytest.approx([0, 0, 1 / 3, 2 / 3, 2 / 3, 1])
    assert result["curve_sensitivity"] == pytest.approx([0, 1 / 3, 1 / 3, 1 / 3, 2 / 3, 2 / 3])
    assert result["sensitivity"] == pytest.approx([1 / 3, 1 / 3, 1 / 3, 2 / 3, 2 / 3, 2 / 3, 2 / 3])
    assert result["cpm"] == pytest.approx((3 / 3 + 8 / 3) / 7)
    coarse = metrics.froc(HAND_MADE_SCANS, thresholds=[0.5], fps_per_scan=(1 / 3, 1))
    assert coarse["sensitivity"] == pytest.approx([1 / 6, 1 / 3])  # (0, 0) to (2/3, 1/3), then held


def test_froc_undefined_without_references():
    result = metrics.froc([{"ref_boxes": [], "pred_boxes": [box(0, 0)], "scores": [0.5]}])
    assert math.isnan(result["cpm"]) and all(math.isnan(s) for s in result["sensitivity"])
    assert math.isnan(metrics.froc([])["cpm"])


def luna16_reference(scans, centre_distance_mm, fps_per_scan, roc_curve):
    """LUNA16's computeFROC: per-reference best hit, unhit detections as FPs, sklearn's roc_curve."""
    labels, probs, excluded, references = [], [], [], 0
    for scan in scans:
        pred = np.asarray(scan["pred_boxes"], float).reshape(-1, 6)
        ref = np.asarray(scan["ref_boxes"], float).reshape(-1, 6)
        references += len(ref)
        pred_centres, ref_centres = ((x[:, :3] + x[:, 3:]) / 2 * np.asarray(scan["spacing"]) for x in (pred, ref))
        inside = np.linalg.norm(pred_centres[:, None] - ref_centres[None], axis=-1) <= centre_distance_mm
        for j in range(len(ref)):
            hit = inside[:, j]
            labels.append(1)
            probs.append(max(np.asarray(scan["scores"])[hit]) if hit.any() else -1e9)
            excluded.append(not hit.any())
        for i in np.flatnonzero(~inside.any(axis=1)):
            labels.append(0)
            probs.append(scan["scores"][i])
            excluded.append(False)
    kept = ~np.asarray(excluded)
    local_labels, local_probs = np.asarray(labels)[kept], np.asarray(probs)[kept]
    detected = local_labels.sum()
    if detected < 1:
        return np.zeros(len(fps_per_scan))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fpr, tpr, _ = roc_curve(local_labels, local_probs)
    if local_labels.all():
        fps = np.zeros(len(fpr))
    else:
        fps = fpr * (len(local_probs) - detected) / len(scans)
    sens = tpr * detected / references
    return np.interp(fps_per_scan, fps, sens)


def test_froc_matches_luna16_evaluation_on_random_scans(sklearn_metrics):
    rng = np.random.default_rng(21)
    for _ in range(25):
        scans = []
        for _ in range(int(rng.integers(1, 6))):
            refs = rng.uniform(0, 100, (int(rng.integers(0, 4)), 3))
            near = refs[rng.integers(0, len(refs), int(rng.integers(0, 5)))] if len(refs) else np.empty((0, 3))
            strays = rng.uniform(0, 100, (int(rng.integers(0, 6)), 3))
            centres = np.vstack([near + rng.normal(0, 3, near.shape), strays])
            scans.append({
                "ref_boxes": np.hstack([refs - 2, refs + 2]),
                "pred_boxes": np.hstack([centres - 1, centres + 1]),
                "scores": np.round(rng.random(len(centres)), 1),  # ties between scans
                "spacing": (0.8, 0.8, 1.25),
            })
        if not sum(len(s["ref_boxes"]) for s in scans):
            continue
        expected = luna16_reference(scans, 5.0, metrics.LUNA16_FPS_PER_SCAN, sklearn_metrics.roc_curve)
        result = metrics.froc(scans, centre_distance_mm=5.0)
        assert result["sensitivity"] == pytest.approx(expected, abs=1e-12)
        assert result["cpm"] == pytest.approx(expected.mean(), abs=1e-12)
