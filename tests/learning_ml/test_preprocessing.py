import subprocess
import sys

import numpy as np
import pytest

from learning.ml import ModelSpec, preprocess, select_sequence


def test_spec_round_trips_through_json_shaped_dicts(tiny_classifier):
    data = tiny_classifier.to_dict()
    assert data["grid"] == [16, 16, 16]
    assert ModelSpec.from_dict(data) == tiny_classifier


def test_spec_rejects_unknown_fields_and_mismatched_architectures(tiny_classifier):
    with pytest.raises(ValueError, match="unknown"):
        ModelSpec.from_dict({**tiny_classifier.to_dict(), "optimizer": "sgd"})
    with pytest.raises(ValueError, match="architecture"):
        ModelSpec(task="segmentation", architecture="densenet121", spatial_dims=3, grid=(16, 16, 16), num_classes=2)
    with pytest.raises(ValueError, match="grid"):
        ModelSpec(task="classification", architecture="densenet121", spatial_dims=2, grid=(16, 16, 16),
                  num_classes=2)


def test_ct_is_windowed_in_hu_and_resized_to_the_model_grid():
    spec = ModelSpec(task="classification", architecture="densenet121", spatial_dims=3, grid=(8, 12, 12),
                     num_classes=2, modality="CT", window=(40.0, 400.0))
    volume = np.full((20, 30, 30), 40.0, dtype=np.float32)
    volume[:, :, :15] = -1000.0  # air: below the window
    out = preprocess(volume, (2.5, 0.8, 0.8), spec)
    assert out.shape == (1, 8, 12, 12) and out.dtype == np.float32
    assert out[0, :, :, 0].max() == pytest.approx(0.0)
    assert out[0, :, :, -1].min() == pytest.approx(0.5)  # the window's level maps to the middle


def test_mr_is_z_scored_over_the_body_not_the_background():
    spec = ModelSpec(task="classification", architecture="densenet121", spatial_dims=3, grid=(16, 16, 16),
                     num_classes=2, modality="MR")
    rng = np.random.default_rng(0)
    volume = np.zeros((16, 16, 16), dtype=np.float32)
    volume[4:12, 4:12, 4:12] = rng.normal(800.0, 100.0, (8, 8, 8))
    out = preprocess(volume, (1.0, 1.0, 1.0), spec)[0]
    body = out[4:12, 4:12, 4:12]
    assert body.mean() == pytest.approx(0.0, abs=1e-4)
    assert body.std() == pytest.approx(1.0, abs=1e-2)
    assert out[0, 0, 0] == 0.0


def test_resampling_to_a_spacing_keeps_the_physical_size_of_a_structure():
    spec = ModelSpec(task="classification", architecture="densenet121", spatial_dims=3, grid=(32, 32, 32),
                     num_classes=2, modality="OT", spacing=(1.0, 1.0, 1.0))
    volume = np.zeros((10, 40, 40), dtype=np.float32)
    volume[3:7, 10:30, 10:30] = 1.0  # 4 slices of 2 mm = 8 mm thick, 20 mm wide
    out = preprocess(volume, (2.0, 1.0, 1.0), spec)[0]
    extent = (out > 0.5).any(axis=(1, 2)).sum(), (out > 0.5).any(axis=(0, 2)).sum()
    assert extent[0] == pytest.approx(8, abs=1) and extent[1] == pytest.approx(20, abs=1)


def test_a_2d_model_takes_the_middle_slice():
    spec = ModelSpec(task="classification", architecture="densenet121", spatial_dims=2, grid=(8, 8),
                     num_classes=2, modality="OT")
    volume = np.zeros((5, 8, 8), dtype=np.float32)
    volume[2] = np.arange(64).reshape(8, 8)
    out = preprocess(volume, (3.0, 1.0, 1.0), spec)
    assert out.shape == (1, 8, 8)
    assert out[0, 0, 0] == 0.0 and out[0, -1, -1] == pytest.approx(1.0)


def test_sequence_selection_follows_the_protocol_order():
    series = [{"uid": "a", "sequence": "T1"}, {"uid": "b", "mr_sequence": "FLAIR", "num_instances": 20},
              {"uid": "c", "sequence": "FLAIR", "num_instances": 40}, {"uid": "d", "sequence": "DWI"}]
    assert select_sequence(series, ["FLAIR", "T1"])["uid"] == "c"
    assert select_sequence(series, ["t1_post", "t1"])["uid"] == "a"
    assert select_sequence(series, ["ADC"]) is None


def test_the_ml_package_loads_without_django():
    code = "import sys, learning.ml; sys.exit(any(m.split('.')[0] == 'django' for m in sys.modules))"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
