"""Tiny networks on small volumes: the whole directory stays well under a minute on two cores."""

import numpy as np
import pytest

from learning.ml import ModelSpec


@pytest.fixture
def tiny_classifier() -> ModelSpec:
    return ModelSpec(task="classification", architecture="densenet", spatial_dims=3, grid=(16, 16, 16),
                     num_classes=2, modality="CT", window=(100.0, 300.0), dropout=0.2,
                     init_features=4, growth_rate=4, block_config=(1, 1))


@pytest.fixture
def tiny_unet() -> ModelSpec:
    return ModelSpec(task="segmentation", architecture="unet", spatial_dims=3, grid=(16, 16, 16),
                     num_classes=2, modality="CT", window=(100.0, 300.0), dropout=0.3, channels=(4, 8))


def bright_and_dark(n: int, seed: int, grid: int = 16):
    """Volumes with a lesion enhancing to 200 HU (class 1) or 40 HU (class 0), preprocessed, with masks."""
    rng = np.random.default_rng(seed)
    volumes, labels, masks = [], [], []
    zz, yy, xx = np.mgrid[:grid, :grid, :grid]
    for i in range(n):
        centre = rng.integers(5, grid - 5, 3)
        mask = (zz - centre[0]) ** 2 + (yy - centre[1]) ** 2 + (xx - centre[2]) ** 2 <= 9
        label = i % 2
        hu = 30.0 + mask * (170.0 if label else 10.0) + rng.normal(0, 10, mask.shape)
        window_lo = -50.0
        volumes.append(((np.clip(hu, window_lo, 250.0) - window_lo) / 300.0)[None].astype(np.float32))
        labels.append(label)
        masks.append(mask.astype(np.int64))
    return np.stack(volumes), np.array(labels), np.stack(masks)
