"""The one door to torch and MONAI. No Django imports here; the web process never imports this package.

Everything takes and returns numpy arrays and bytes, so Celery jobs can store weights in the model
registry and the Django side never holds a torch object.

Interface (what learning/ jobs call):

``ModelSpec(task, architecture, spatial_dims, grid, num_classes, modality="CT", window=None,
dropout=0.2, spacing=None, ordinal=False, init_features=64, growth_rate=32, block_config=(6, 12, 24, 16),
channels=(16, 32, 64, 128))``
    Frozen dataclass; ``to_dict()`` / ``ModelSpec.from_dict(d)`` round-trip through JSON. task is
    "classification" (architecture "densenet121", or "densenet" sized by init_features/growth_rate/
    block_config) or "segmentation" ("unet" with ``channels``). ``window`` is (level, width) in HU
    (default 40/400). ``num_classes`` counts the background for segmentation. ``ordinal`` marks grades.

``preprocess(volume, spacing, spec) -> float32 (1, *grid)``
    array[k, j, i] and spacing from core.dicom.volume; CT: clip to the window and scale to [0, 1];
    MR: z-score over non-zero voxels; other: min-max. Resize to ``grid`` (or resample to
    ``spec.spacing`` mm and pad/crop to ``grid``). A 2D spec takes the middle slice.

``select_sequence(series, wanted) -> dict | None``
    The series dict whose ``sequence`` (or ``mr_sequence``) is first in ``wanted`` (MRSequence values).

``train(spec, volumes, labels, *, epochs, seed, device=None, progress=None, init_weights=None) -> bytes``
    volumes (n, 1, *grid); labels (n,) class indices or (n, *grid) label maps. progress(fraction) after
    each epoch. Deterministic on CPU for a seed. Raises ValueError on shapes/labels that do not fit.

``predict_proba(spec, weights, volumes, *, device=None, batch_size=8) -> float32``
    (n, num_classes), or (n, num_classes, *grid) for segmentation.

``mc_dropout(spec, weights, volumes, *, passes=10, device=None) -> (n,)``
    Epistemic uncertainty: mean voxel entropy of the pass-averaged softmax (segmentation), entropy of
    the pass-averaged probabilities (classification).

``evaluate(spec, weights, volumes, labels) -> dict``
    accuracy, balanced_accuracy, auc (binary, both classes present), kappa (ordinal, quadratic); or dice.

``uncertainty(proba, strategy) -> (n,)``
    "least_confidence" | "margin" | "entropy" through modAL.uncertainty; higher = less sure.

``select_batch(source, n, *, strategy="entropy", pool=None, groups=None, features=None,
labelled_features=None) -> indices``
    source: probabilities, ready scores (n_pool,) or an estimator (scoring ``pool``). At most one item
    per group (patient); with features, modAL's ranked batch mode for diversity.

``MonaiEstimator(spec, epochs=10, seed=0, device=None, batch_size=16, warm_start=False, weights=None)``
    scikit-learn classifier (fit / predict_proba / predict) for modAL's query strategies.

``suggest(spec, weights, volumes) -> list``
    Pre-annotations: {"label": int, "probability": float} per volume, or a uint8 argmax mask.

``resolve_device(device=None)``: the device jobs run on: as asked, else CUDA when present, else CPU.
"""

from learning.ml.engine import evaluate, mc_dropout, predict_proba, resolve_device, suggest, train
from learning.ml.estimator import MonaiEstimator
from learning.ml.preprocess import preprocess, select_sequence
from learning.ml.selection import STRATEGIES, select_batch, uncertainty
from learning.ml.spec import ModelSpec

__all__ = [
    "STRATEGIES", "ModelSpec", "MonaiEstimator", "evaluate", "mc_dropout", "predict_proba", "preprocess",
    "resolve_device", "select_batch", "select_sequence", "suggest", "train", "uncertainty",
]
