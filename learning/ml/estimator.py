"""A MONAI network dressed as a scikit-learn classifier, so modAL's query strategies can call it."""

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.exceptions import NotFittedError

from learning.ml import engine
from learning.ml.spec import ModelSpec


class MonaiEstimator(ClassifierMixin, BaseEstimator):
    """fit/predict_proba/predict over preprocessed volumes (n, 1, *grid).

    ``warm_start`` continues from the previous fit's weights, as an active-learning round does.
    ``weights`` starts from a stored model version without fitting.
    """

    def __init__(self, spec: ModelSpec | None = None, epochs: int = 10, seed: int = 0, device: str | None = None,
                 batch_size: int = 16, warm_start: bool = False, weights: bytes | None = None):
        self.spec = spec
        self.epochs = epochs
        self.seed = seed
        self.device = device
        self.batch_size = batch_size
        self.warm_start = warm_start
        self.weights = weights

    def _spec(self) -> ModelSpec:
        return self.spec if isinstance(self.spec, ModelSpec) else ModelSpec.from_dict(self.spec)

    def fit(self, X, y):
        spec = self._spec()
        start = getattr(self, "weights_", None) if self.warm_start else None
        self.weights_ = engine.train(spec, X, y, epochs=self.epochs, seed=self.seed, device=self.device,
                                     batch_size=self.batch_size, init_weights=start or self.weights)
        self.classes_ = np.arange(spec.num_classes)
        return self

    def _weights(self) -> bytes:
        weights = getattr(self, "weights_", None) or self.weights
        if weights is None:
            raise NotFittedError("MonaiEstimator has no weights: fit it or pass weights=")
        return weights

    def predict_proba(self, X):
        spec = self._spec()
        if spec.task != "classification":
            raise ValueError("MonaiEstimator scores classification models; use mc_dropout for segmentation")
        return engine.predict_proba(spec, self._weights(), X, device=self.device).astype(np.float64)

    def predict(self, X):
        return self.predict_proba(X).argmax(axis=1)  # classes are 0 .. num_classes - 1
