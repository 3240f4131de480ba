"""A numpy stand-in for learning.ml behind the Predictor seam: no torch, fully scripted.

``probabilities``: rows handed out in the order the volumes arrive (scoring walks tasks by id);
``accuracies``: the gold accuracy each successive ``train`` call's weights will evaluate to;
``epistemics``: MC-dropout scores handed out like ``probabilities`` (``passes`` is recorded).
"""

import json

import numpy as np


class StandInPredictor:
    probabilities: list[list[float]] = []
    accuracies: list[float] = []
    epistemics: list[float] = []
    passes_asked: list[int] = []

    def train(self, spec, volumes, labels, *, epochs, seed, progress=None, init_weights=None) -> bytes:
        assert len(volumes) == len(labels) and all(v.array.ndim == 3 for v in volumes)
        for epoch in range(epochs):
            if progress:
                progress((epoch + 1) / epochs)
        accuracy = StandInPredictor.accuracies.pop(0)
        return json.dumps({"accuracy": accuracy, "classes": spec["num_classes"]}).encode()

    def predict_proba(self, spec, weights, volumes) -> np.ndarray:
        n = json.loads(weights)["classes"]
        rows = []
        for _ in volumes:
            rows.append(StandInPredictor.probabilities.pop(0) if StandInPredictor.probabilities
                        else [1.0 / n] * n)
        return np.asarray(rows, dtype=float)

    def evaluate(self, spec, weights, volumes, labels) -> dict:
        return {"accuracy": json.loads(weights)["accuracy"], "n": len(labels)}

    def uncertainty(self, proba, strategy) -> np.ndarray:
        p = np.clip(np.asarray(proba, dtype=float), 1e-12, 1)
        return -(p * np.log(p)).sum(axis=1) / np.log(p.shape[1])

    def epistemic(self, spec, weights, volumes, *, passes) -> np.ndarray:
        StandInPredictor.passes_asked.append(passes)
        return np.asarray([StandInPredictor.epistemics.pop(0) for _ in volumes], dtype=float)
