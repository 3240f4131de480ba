"""Which studies readers see next: modAL's uncertainty measures and ranked batch mode, one per patient.

modAL 0.4.2 is used for its measures (modAL.uncertainty) and ranked batch mode (modAL.batch), which
work on numpy 2 / scikit-learn 1.9. ``ActiveLearner.teach`` and ``modAL.expected_error`` do not, so
nothing here uses learners: the model is trained by learning.ml.engine and only its probabilities
reach modAL, through a stand-in object with ``predict_proba``.
"""

from types import SimpleNamespace

import numpy as np
from modAL.batch import ranked_batch
from modAL.uncertainty import classifier_entropy, classifier_margin, classifier_uncertainty

STRATEGIES = ("least_confidence", "margin", "entropy")


class _Probabilities:
    """modAL measures take an estimator; this one answers with probabilities already computed."""

    def __init__(self, proba: np.ndarray):
        self.proba = proba

    def predict_proba(self, indices, **_):
        return self.proba[np.asarray(indices)]


def uncertainty(proba: np.ndarray, strategy: str) -> np.ndarray:
    """Per-item uncertainty, higher = less sure: 1 - max p, 1 - (p1 - p2), or entropy (nats).

    ``proba`` is (n, classes); segmentation probabilities (n, classes, *grid) are scored per voxel and
    averaged per volume.
    """
    proba = np.asarray(proba, dtype=np.float64)
    if proba.ndim < 2:
        raise ValueError("proba must be (n, classes) or (n, classes, *grid)")
    n = len(proba)
    flat = np.moveaxis(proba, 1, -1).reshape(-1, proba.shape[1])
    stand_in, rows = _Probabilities(flat), np.arange(len(flat))
    if strategy == "least_confidence":
        scores = classifier_uncertainty(stand_in, rows)
    elif strategy == "margin":
        scores = 1.0 - classifier_margin(stand_in, rows)
    elif strategy == "entropy":
        scores = classifier_entropy(stand_in, rows)
    else:
        raise ValueError(f"strategy must be one of {STRATEGIES}, not {strategy!r}")
    return np.asarray(scores, dtype=np.float64).reshape(n, -1).mean(axis=1)


def select_batch(source, n: int, *, strategy: str = "entropy", pool: np.ndarray | None = None,
                 groups: np.ndarray | None = None, features: np.ndarray | None = None,
                 labelled_features: np.ndarray | None = None) -> np.ndarray:
    """Indices of the next ``n`` items to label, most informative first.

    ``source`` is probabilities (n_pool, classes[, *grid]), ready scores (n_pool,) such as mc_dropout's,
    or an estimator with ``predict_proba`` (then ``pool`` is what it scores). With ``groups`` (patient
    ids) a batch holds at most one item per group: each group offers its most uncertain item. With
    ``features`` (n_pool, d) the batch is ranked by modAL's ranked batch mode (Cardoso et al.), which
    trades uncertainty against distance to ``labelled_features`` and to items already picked, so
    parallel readers do not get near-duplicates; scores are scaled to [0, 1] first so neither term
    swamps the other.
    """
    scores = _scores(source, strategy, pool)
    if n < 1:
        return np.zeros(0, dtype=np.int64)
    # Most uncertain first; a stable sort keeps equal scores in pool order so selection is repeatable.
    order = np.argsort(-scores, kind="stable")
    if groups is not None:
        groups = np.asarray(groups)
        if len(groups) != len(scores):
            raise ValueError("groups must have one entry per pool item")
        _, first = np.unique(groups[order], return_index=True)
        order = order[np.sort(first)]
    if features is None:
        return order[:n].astype(np.int64)
    features = np.asarray(features, dtype=np.float64).reshape(len(scores), -1)
    candidates = features[order]
    span = scores.max() - scores.min()
    scaled = (scores[order] - scores.min()) / span if span > 0 else np.zeros(len(order))
    picked = []
    if labelled_features is not None and len(labelled_features):
        labelled = np.asarray(labelled_features, dtype=np.float64).reshape(len(labelled_features), -1)
    else:
        # modAL's own cold start can pick its first item twice (its mask misses it): start from the
        # most uncertain item instead and rank the rest against it.
        labelled, picked = candidates[:1], [0]
    rest = np.arange(len(order))[len(picked):]
    wanted = min(n, len(order)) - len(picked)
    if wanted > 0:
        learner = SimpleNamespace(on_transformed=False, X_training=labelled)
        ranked, _ = ranked_batch(learner, unlabeled=candidates[rest], uncertainty_scores=scaled[rest],
                                 n_instances=wanted, metric="euclidean", n_jobs=None)
        picked += [int(rest[i]) for i in ranked]
    return order[np.asarray(picked, dtype=np.int64)]


def _scores(source, strategy: str, pool) -> np.ndarray:
    if hasattr(source, "predict_proba"):
        if pool is None:
            raise ValueError("an estimator needs the pool it should score")
        return uncertainty(source.predict_proba(pool), strategy)
    source = np.asarray(source, dtype=np.float64)
    return source if source.ndim == 1 else uncertainty(source, strategy)
