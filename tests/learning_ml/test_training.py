import numpy as np
import pytest
import torch

from learning.ml import evaluate, mc_dropout, predict_proba, resolve_device, suggest, train
from learning.ml.spec import ModelSpec
from tests.learning_ml.conftest import bright_and_dark


def test_a_classifier_learns_enhancement_and_the_same_seed_gives_the_same_model(tiny_classifier):
    volumes, labels, _ = bright_and_dark(24, seed=0)
    reported = []
    weights = train(tiny_classifier, volumes, labels, epochs=12, seed=3, progress=reported.append)
    again = train(tiny_classifier, volumes, labels, epochs=12, seed=3)
    assert reported[-1] == 1.0 and len(reported) == 12
    test_volumes, test_labels, _ = bright_and_dark(20, seed=1)
    proba = predict_proba(tiny_classifier, weights, test_volumes)
    assert proba.shape == (20, 2) and np.allclose(proba.sum(axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(proba, predict_proba(tiny_classifier, again, test_volumes))
    figures = evaluate(tiny_classifier, weights, test_volumes, test_labels)
    assert figures["accuracy"] >= 0.9 and figures["auc"] >= 0.9
    first = suggest(tiny_classifier, weights, test_volumes[:1])[0]
    assert first["label"] == int(proba[0].argmax()) and first["probability"] == pytest.approx(proba[0].max())


def test_fine_tuning_starts_from_the_given_weights(tiny_classifier):
    volumes, labels, _ = bright_and_dark(24, seed=2)
    weights = train(tiny_classifier, volumes, labels, epochs=12, seed=0)
    tuned = train(tiny_classifier, volumes[:8], labels[:8], epochs=1, seed=1, init_weights=weights)
    scratch = train(tiny_classifier, volumes[:8], labels[:8], epochs=1, seed=1)
    assert evaluate(tiny_classifier, tuned, volumes, labels)["accuracy"] >= 0.9
    assert evaluate(tiny_classifier, scratch, volumes, labels)["accuracy"] < 0.9


def test_weights_of_another_spec_and_misshapen_inputs_are_refused(tiny_classifier):
    volumes, labels, _ = bright_and_dark(4, seed=0)
    weights = train(tiny_classifier, volumes, labels, epochs=1, seed=0)
    other = ModelSpec.from_dict({**tiny_classifier.to_dict(), "num_classes": 3})
    with pytest.raises(ValueError, match="different model spec"):
        predict_proba(other, weights, volumes)
    with pytest.raises(ValueError, match="volumes must be"):
        predict_proba(tiny_classifier, weights, volumes[:, :, :8])
    with pytest.raises(ValueError, match="labels must lie"):
        train(tiny_classifier, volumes, labels + 5, epochs=1, seed=0)


def test_ordinal_grades_are_scored_with_quadratic_kappa():
    spec = ModelSpec(task="classification", architecture="densenet", spatial_dims=3, grid=(16, 16, 16),
                     num_classes=3, ordinal=True, init_features=4, growth_rate=4, block_config=(1, 1))
    volumes, _, _ = bright_and_dark(9, seed=4)
    grades = np.arange(9) % 3
    weights = train(spec, volumes, grades, epochs=1, seed=0)
    figures = evaluate(spec, weights, volumes, grades)
    assert -1.0 <= figures["kappa"] <= 1.0 and "auc" not in figures


def test_a_unet_learns_to_segment_lesions_and_suggests_uint8_masks(tiny_unet):
    volumes, _, masks = bright_and_dark(12, seed=5)
    volumes, masks = volumes[1::2], masks[1::2]  # the enhancing lesions
    weights = train(tiny_unet, volumes, masks, epochs=20, seed=0, batch_size=3, learning_rate=1e-2)
    assert evaluate(tiny_unet, weights, volumes, masks)["dice"] >= 0.7
    proba = predict_proba(tiny_unet, weights, volumes[:2])
    assert proba.shape == (2, 2, 16, 16, 16)
    mask = suggest(tiny_unet, weights, volumes[:1])[0]
    assert mask.dtype == np.uint8 and mask.shape == (16, 16, 16)


def test_mc_dropout_averages_passes_with_dropout_switched_on(tiny_unet):
    volumes, _, masks = bright_and_dark(4, seed=6)
    weights = train(tiny_unet, volumes, masks, epochs=2, seed=0)
    one = mc_dropout(tiny_unet, weights, volumes, passes=1, seed=0)
    other = mc_dropout(tiny_unet, weights, volumes, passes=1, seed=1)
    assert one.shape == (4,) and not np.allclose(one, other)  # dropout really samples
    assert np.all((one >= 0) & (one <= np.log(2) + 1e-6))

    without = ModelSpec.from_dict({**tiny_unet.to_dict(), "dropout": 0.0})
    weights = train(without, volumes, masks, epochs=2, seed=0)
    proba = predict_proba(without, weights, volumes)
    expected = -(proba * np.log(np.clip(proba, 1e-12, 1))).sum(axis=1).reshape(4, -1).mean(axis=1)
    np.testing.assert_allclose(mc_dropout(without, weights, volumes, passes=3), expected, rtol=1e-5)


def test_jobs_use_cuda_when_the_worker_has_a_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device().type == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device().type == "cuda"
    assert resolve_device("cpu").type == "cpu"
