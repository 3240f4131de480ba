import numpy as np
import pytest
from modAL.uncertainty import uncertainty_sampling

from learning.ml import MonaiEstimator, select_batch, uncertainty
from tests.learning_ml.conftest import bright_and_dark

PROBA = np.array([[0.5, 0.5], [0.9, 0.1], [0.6, 0.4], [0.99, 0.01]])


def test_every_measure_ranks_the_coin_flip_first_and_the_sure_call_last():
    for strategy in ("least_confidence", "margin", "entropy"):
        scores = uncertainty(PROBA, strategy)
        assert list(np.argsort(-scores)) == [0, 2, 1, 3], strategy
    np.testing.assert_allclose(uncertainty(PROBA, "least_confidence"), [0.5, 0.1, 0.4, 0.01])
    np.testing.assert_allclose(uncertainty(PROBA, "margin"), [1.0, 0.2, 0.8, 0.02])
    assert uncertainty(PROBA, "entropy")[0] == pytest.approx(np.log(2))
    with pytest.raises(ValueError, match="strategy"):
        uncertainty(PROBA, "vibes")


def test_segmentation_probabilities_are_scored_per_voxel_and_averaged():
    proba = np.stack([np.full((2, 4, 4, 4), 0.5), np.stack([np.ones((4, 4, 4)), np.zeros((4, 4, 4))])])
    np.testing.assert_allclose(uncertainty(proba, "least_confidence"), [0.5, 0.0])


def test_a_batch_never_holds_two_studies_of_one_patient():
    proba = np.array([[0.5, 0.5], [0.52, 0.48], [0.6, 0.4], [0.7, 0.3], [0.99, 0.01]])
    patients = np.array(["p1", "p1", "p2", "p2", "p3"])
    assert list(select_batch(proba, 2, strategy="margin")) == [0, 1]
    assert list(select_batch(proba, 3, strategy="margin", groups=patients)) == [0, 2, 4]
    assert list(select_batch(proba, 5, strategy="margin", groups=patients)) == [0, 2, 4]


def test_ranked_batch_mode_spreads_a_batch_over_distinct_studies():
    # Two near-identical uncertain studies and a distinct, slightly less uncertain one.
    proba = np.array([[0.5, 0.5], [0.51, 0.49], [0.55, 0.45], [0.95, 0.05]])
    features = np.array([[0.0, 0.0], [0.01, 0.0], [5.0, 5.0], [0.0, 0.02]])
    assert sorted(select_batch(proba, 2, strategy="entropy")) == [0, 1]
    assert sorted(select_batch(proba, 2, strategy="entropy", features=features)) == [0, 2]
    labelled = np.array([[5.0, 5.0]])  # the distinct one is already like a labelled study
    picked = select_batch(proba, 2, strategy="entropy", features=features, labelled_features=labelled)
    assert len(set(picked)) == 2 and 2 not in picked[:1]


def test_ready_scores_such_as_mc_dropout_are_ranked_as_given():
    assert list(select_batch(np.array([0.1, 0.9, 0.5]), 2)) == [1, 2]


def test_the_monai_estimator_answers_modal_query_strategies(tiny_classifier):
    volumes, labels, _ = bright_and_dark(16, seed=7)
    estimator = MonaiEstimator(tiny_classifier, epochs=10, seed=0, batch_size=4)
    picked, scores = uncertainty_sampling(estimator, volumes, n_instances=3)
    assert np.all(scores == 1.0)  # unfitted: modAL treats every study as unknown
    estimator.fit(volumes, labels)
    assert (estimator.predict(volumes) == labels).mean() >= 0.9
    picked, scores = uncertainty_sampling(estimator, volumes, n_instances=3)
    proba = estimator.predict_proba(volumes)
    assert set(picked) == set(np.argsort(proba.max(axis=1))[:3])
    assert list(select_batch(estimator, 3, strategy="least_confidence", pool=volumes)) == \
        list(np.argsort(proba.max(axis=1), kind="stable")[:3])
