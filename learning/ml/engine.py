"""Train, run and score MONAI networks. Weights travel as bytes so callers never hold a torch object."""

import io
import os
from collections.abc import Callable

import numpy as np
import torch
from monai.losses import DiceCELoss
from monai.networks.nets import DenseNet, DenseNet121, UNet
from sklearn.metrics import accuracy_score, balanced_accuracy_score, cohen_kappa_score, roc_auc_score
from torch import nn

from learning.ml.spec import ModelSpec

# Containers often report the host's cores; torch would start that many threads and thrash.
if hasattr(os, "sched_getaffinity") and torch.get_num_threads() > len(os.sched_getaffinity(0)):
    torch.set_num_threads(len(os.sched_getaffinity(0)))


def resolve_device(device: str | None = None) -> torch.device:
    """The requested device, else CUDA when the worker has a GPU, else CPU."""
    return torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))


def build_network(spec: ModelSpec) -> nn.Module:
    if spec.architecture == "densenet121":
        return DenseNet121(spatial_dims=spec.spatial_dims, in_channels=1, out_channels=spec.num_classes,
                           dropout_prob=spec.dropout)
    if spec.architecture == "densenet":
        return DenseNet(spatial_dims=spec.spatial_dims, in_channels=1, out_channels=spec.num_classes,
                        init_features=spec.init_features, growth_rate=spec.growth_rate,
                        block_config=spec.block_config, bn_size=2, dropout_prob=spec.dropout)
    if any(size % 2 ** (len(spec.channels) - 1) for size in spec.grid):
        raise ValueError(f"UNet with {len(spec.channels)} levels needs grid sizes divisible by "
                         f"{2 ** (len(spec.channels) - 1)}")
    return UNet(spatial_dims=spec.spatial_dims, in_channels=1, out_channels=spec.num_classes,
                channels=spec.channels, strides=(2,) * (len(spec.channels) - 1), num_res_units=1,
                dropout=spec.dropout)


def _as_batch(spec: ModelSpec, volumes: np.ndarray) -> np.ndarray:
    volumes = np.asarray(volumes, dtype=np.float32)
    if volumes.ndim == spec.spatial_dims + 1:
        volumes = volumes[:, None]
    if volumes.ndim != spec.spatial_dims + 2 or tuple(volumes.shape[2:]) != tuple(spec.grid):
        raise ValueError(f"volumes must be (n, 1, *{spec.grid}) as preprocess() makes them, got {volumes.shape}")
    return volumes


def serialize(spec: ModelSpec, network: nn.Module) -> bytes:
    buffer = io.BytesIO()
    state = {key: value.detach().cpu() for key, value in network.state_dict().items()}
    torch.save({"spec": spec.to_dict(), "state_dict": state}, buffer)
    return buffer.getvalue()


def load_network(spec: ModelSpec, weights: bytes, device: torch.device) -> nn.Module:
    payload = torch.load(io.BytesIO(weights), map_location="cpu", weights_only=True)
    if ModelSpec.from_dict(payload["spec"]) != spec:
        raise ValueError("these weights were trained for a different model spec")
    network = build_network(spec)
    network.load_state_dict(payload["state_dict"])
    return network.to(device)


def train(spec: ModelSpec, volumes: np.ndarray, labels: np.ndarray, *, epochs: int, seed: int,
          device: str | None = None, progress: Callable[[float], None] | None = None,
          init_weights: bytes | None = None, batch_size: int = 16, learning_rate: float = 1e-3) -> bytes:
    """Weights (bytes) after ``epochs`` passes of Adam; the same seed gives the same weights on CPU.

    Classification labels are class indices (n,), weighted by inverse class frequency so a skewed
    labelled set does not teach the majority class; segmentation labels are (n, *grid) label maps,
    trained with Dice + cross-entropy. ``init_weights`` continues from an earlier version (fine-tuning).
    """
    x = _as_batch(spec, volumes)
    y = np.asarray(labels).astype(np.int64)
    expected = (len(x),) if spec.task == "classification" else (len(x), *spec.grid)
    if y.shape != expected:
        raise ValueError(f"labels must have shape {expected}, got {y.shape}")
    if len(x) == 0 or epochs < 1:
        raise ValueError("training needs at least one volume and one epoch")
    if y.min() < 0 or y.max() >= spec.num_classes:
        raise ValueError(f"labels must lie in [0, {spec.num_classes})")
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    target = resolve_device(device)
    network = load_network(spec, init_weights, target) if init_weights else build_network(spec).to(target)
    if spec.task == "classification":
        counts = np.bincount(y, minlength=spec.num_classes).astype(np.float32)
        weight = np.where(counts > 0, counts.sum() / np.maximum(counts, 1) / (counts > 0).sum(), 0.0)
        loss_fn = nn.CrossEntropyLoss(weight=torch.as_tensor(weight, dtype=torch.float32, device=target))
    else:
        loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
        y = y[:, None]
    optimizer = torch.optim.Adam(network.parameters(), lr=learning_rate, weight_decay=1e-5)
    network.train()
    for epoch in range(epochs):
        order = rng.permutation(len(x))
        for start in range(0, len(x), batch_size):
            index = order[start:start + batch_size]
            if len(index) == 1 and len(x) > 1:
                continue  # batch norm cannot train on a single volume
            inputs = torch.from_numpy(x[index]).to(target)
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(network(inputs), torch.from_numpy(y[index]).to(target))
            loss.backward()
            optimizer.step()
        if progress is not None:
            progress((epoch + 1) / epochs)
    return serialize(spec, network)


def _forward(network: nn.Module, x: np.ndarray, device: torch.device, batch_size: int) -> np.ndarray:
    with torch.no_grad():
        chunks = [torch.softmax(network(torch.from_numpy(x[s:s + batch_size]).to(device)), dim=1).cpu().numpy()
                  for s in range(0, len(x), batch_size)]
    return np.concatenate(chunks).astype(np.float32)


def predict_proba(spec: ModelSpec, weights: bytes, volumes: np.ndarray, *, device: str | None = None,
                  batch_size: int = 8) -> np.ndarray:
    """Softmax probabilities: (n, num_classes), or (n, num_classes, *grid) for segmentation."""
    x = _as_batch(spec, volumes)
    target = resolve_device(device)
    network = load_network(spec, weights, target).eval()
    return _forward(network, x, target, batch_size)


def mc_dropout(spec: ModelSpec, weights: bytes, volumes: np.ndarray, *, passes: int = 10,
               device: str | None = None, batch_size: int = 8, seed: int = 0) -> np.ndarray:
    """Epistemic uncertainty per volume from ``passes`` forward passes with dropout left on.

    Batch norm stays in inference mode; only dropout samples. Segmentation: mean over voxels of the
    entropy of the averaged softmax (MONAI Label's epistemic scoring); classification: entropy of the
    averaged probabilities. Needs ``spec.dropout > 0`` to differ from a single pass.
    """
    if passes < 1:
        raise ValueError("passes must be at least 1")
    x = _as_batch(spec, volumes)
    target = resolve_device(device)
    network = load_network(spec, weights, target).eval()
    for module in network.modules():
        if isinstance(module, nn.Dropout | nn.Dropout1d | nn.Dropout2d | nn.Dropout3d | nn.AlphaDropout):
            module.train()
    torch.manual_seed(seed)
    mean = sum(_forward(network, x, target, batch_size) for _ in range(passes)) / passes
    entropy = -(mean * np.log(np.clip(mean, 1e-12, 1.0))).sum(axis=1)
    return entropy.reshape(len(x), -1).mean(axis=1)


def evaluate(spec: ModelSpec, weights: bytes, volumes: np.ndarray, labels: np.ndarray, *,
             device: str | None = None) -> dict:
    """Held-out figures: accuracy, balanced accuracy, AUC (binary), kappa (ordinal); or mean Dice."""
    proba = predict_proba(spec, weights, volumes, device=device)
    labels = np.asarray(labels).astype(np.int64)
    predicted = proba.argmax(axis=1)
    if spec.task == "segmentation":
        return {"dice": mean_dice(predicted, labels, spec.num_classes), "n": len(labels)}
    result = {"accuracy": float(accuracy_score(labels, predicted)),
              "balanced_accuracy": float(balanced_accuracy_score(labels, predicted)), "n": len(labels)}
    if spec.num_classes == 2 and len(np.unique(labels)) == 2:
        result["auc"] = float(roc_auc_score(labels, proba[:, 1]))
    if spec.ordinal:
        result["kappa"] = float(cohen_kappa_score(labels, predicted, weights="quadratic",
                                                  labels=list(range(spec.num_classes))))
    return result


def mean_dice(predicted: np.ndarray, labels: np.ndarray, num_classes: int) -> float:
    """Dice per volume and foreground class, averaged; a class absent from both counts as 1."""
    scores = []
    for guess, truth in zip(predicted, labels, strict=True):
        for label in range(1, num_classes):
            a, b = guess == label, truth == label
            total = a.sum() + b.sum()
            scores.append(1.0 if total == 0 else 2.0 * np.logical_and(a, b).sum() / total)
    return float(np.mean(scores))


def suggest(spec: ModelSpec, weights: bytes, volumes: np.ndarray, *, device: str | None = None) -> list:
    """Pre-annotations: {"label", "probability"} per volume, or a uint8 argmax mask per volume."""
    proba = predict_proba(spec, weights, volumes, device=device)
    if spec.task == "segmentation":
        return [mask.astype(np.uint8) for mask in proba.argmax(axis=1)]
    return [{"label": int(p.argmax()), "probability": float(p.max())} for p in proba]
