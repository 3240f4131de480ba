"""The one door between Django and the models: a Predictor.

learning.ml (torch / MONAI) is imported only inside ``MonaiPredictor``'s methods, which only
job runners call; the web process never loads a model. Tests and benchmarks plug in a numpy
stand-in through the ``LEARNING_PREDICTOR`` setting (a dotted path to a class).
"""

from typing import Protocol

import numpy as np
from django.conf import settings
from django.utils.module_loading import import_string


class Predictor(Protocol):
    def train(self, spec: dict, volumes: list, labels: list[int], *, epochs: int, seed: int,
              progress=None, init_weights: bytes | None = None) -> bytes: ...

    def predict_proba(self, spec: dict, weights: bytes, volumes: list) -> np.ndarray: ...

    def evaluate(self, spec: dict, weights: bytes, volumes: list, labels: list[int]) -> dict: ...

    def uncertainty(self, proba: np.ndarray, strategy: str) -> np.ndarray: ...

    def epistemic(self, spec: dict, weights: bytes, volumes: list, *, passes: int) -> np.ndarray: ...


class MonaiPredictor:
    """learning.ml behind the seam. ``volumes`` are core.dicom.volume.Volume objects."""

    def _prepared(self, spec: dict, volumes: list):
        from learning import ml

        model_spec = ml.ModelSpec.from_dict(spec)
        return model_spec, np.stack([ml.preprocess(v.array, v.spacing, model_spec) for v in volumes])

    def train(self, spec, volumes, labels, *, epochs, seed, progress=None, init_weights=None) -> bytes:
        from learning import ml

        model_spec, arrays = self._prepared(spec, volumes)
        return ml.train(model_spec, arrays, np.asarray(labels), epochs=epochs, seed=seed, progress=progress,
                        init_weights=init_weights)

    def predict_proba(self, spec, weights, volumes) -> np.ndarray:
        from learning import ml

        model_spec, arrays = self._prepared(spec, volumes)
        return np.asarray(ml.predict_proba(model_spec, weights, arrays))

    def evaluate(self, spec, weights, volumes, labels) -> dict:
        from learning import ml

        model_spec, arrays = self._prepared(spec, volumes)
        return dict(ml.evaluate(model_spec, weights, arrays, np.asarray(labels)))

    def uncertainty(self, proba, strategy) -> np.ndarray:
        from learning import ml

        scores = np.asarray(ml.uncertainty(proba, strategy), dtype=float)
        # Entropy comes in nats; the priority formula takes 0..1, so divide by its maximum, ln(classes).
        return scores / np.log(proba.shape[1]) if strategy == "entropy" else scores

    def epistemic(self, spec, weights, volumes, *, passes) -> np.ndarray:
        """MC dropout: the entropy of the mean of ``passes`` dropout-sampled predictions, in 0..1."""
        from learning import ml

        model_spec, arrays = self._prepared(spec, volumes)
        scores = np.asarray(ml.mc_dropout(model_spec, weights, arrays, passes=passes), dtype=float)
        return scores / np.log(model_spec.num_classes)


def get_predictor() -> Predictor:
    return import_string(getattr(settings, "LEARNING_PREDICTOR", "learning.predictors.MonaiPredictor"))()
