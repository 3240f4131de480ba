"""From an ingested series volume to the network's input: one grid, one intensity scale, one sequence."""

import numpy as np
from monai.transforms import NormalizeIntensity, Resize, ResizeWithPadOrCrop
from scipy.ndimage import zoom

from learning.ml.spec import DEFAULT_CT_WINDOW, ModelSpec


def preprocess(volume: np.ndarray, spacing: tuple[float, ...], spec: ModelSpec) -> np.ndarray:
    """float32 (1, *spec.grid): resampled to the model's grid, intensities scaled for the modality.

    ``volume`` is array[k, j, i] as core.dicom.volume gives it, ``spacing`` in the same axis order. A 2D
    spec takes the middle slice of a 3D volume.
    """
    array = np.asarray(volume, dtype=np.float32)
    spacing = tuple(float(s) for s in spacing)
    if spec.spatial_dims == 2 and array.ndim == 3:
        array, spacing = array[array.shape[0] // 2], spacing[1:]
    if array.ndim != spec.spatial_dims or len(spacing) != spec.spatial_dims:
        raise ValueError(f"expected a {spec.spatial_dims}D volume with matching spacing, got {array.shape}")
    if not np.all(np.isfinite(array)):
        array = np.nan_to_num(array, nan=float(np.nanmin(array)) if np.isfinite(array).any() else 0.0)
    image = _scale_intensity(array, spec)[None]
    if spec.spacing is not None:
        # Physical resampling keeps sizes comparable across scanners; the grid then fixes the field of view.
        factors = [1.0] + [current / target for current, target in zip(spacing, spec.spacing, strict=True)]
        image = zoom(image, factors, order=1, mode="nearest", grid_mode=True)
        image = ResizeWithPadOrCrop(spec.grid, mode="constant")(image)
    else:
        image = Resize(spec.grid, mode="trilinear" if spec.spatial_dims == 3 else "bilinear")(image)
    return np.ascontiguousarray(np.asarray(image, dtype=np.float32))


def _scale_intensity(array: np.ndarray, spec: ModelSpec) -> np.ndarray:
    modality = spec.modality.upper()
    if modality == "CT":
        level, width = spec.window or DEFAULT_CT_WINDOW
        low = level - width / 2
        return (np.clip(array, low, low + width) - low) / width
    if modality == "MR":
        # MR has no absolute scale: z-score over the body (non-zero voxels), as MONAI's recipes do.
        return np.asarray(NormalizeIntensity(nonzero=True)(array), dtype=np.float32)
    low, high = float(array.min()), float(array.max())
    return (array - low) / (high - low) if high > low else np.zeros_like(array)


def select_sequence(series: list[dict], wanted: list[str]) -> dict | None:
    """The series whose MR sequence comes first in ``wanted`` (the protocol's names), else None.

    Each series dict carries its sequence under ``sequence`` (or ``mr_sequence``, the Series field),
    valued as core.dicom.sequences.MRSequence (T1, T1_POST, T2, FLAIR, DWI, ADC, OTHER); matching ignores
    case. Among several series of the wanted sequence the one with the most instances wins.
    """
    def sequence_of(item: dict) -> str:
        return str(item.get("sequence") or item.get("mr_sequence") or "").upper()

    for name in wanted:
        matches = [item for item in series if sequence_of(item) == str(name).upper()]
        if matches:
            return max(matches, key=lambda item: int(item.get("num_instances") or 0))
    return None
