"""Detection matching and FROC."""

import math
from collections.abc import Mapping, Sequence

import numpy as np
from scipy import optimize, spatial

from tasks.metrics.segmentation import spacing_of

LUNA16_FPS_PER_SCAN = (0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)


# Detection


def _boxes(pred_boxes, ref_boxes) -> tuple[np.ndarray, np.ndarray, int]:
    pred, ref = np.asarray(pred_boxes, dtype=float), np.asarray(ref_boxes, dtype=float)
    widths = {x.shape[-1] for x in (pred, ref) if x.size or x.ndim == 2}
    if len(widths) > 1 or not widths <= {4, 6}:
        raise ValueError("boxes must be (x0, y0, x1, y1) or (x0, y0, z0, x1, y1, z1), the same for both")
    ndim = widths.pop() // 2 if widths else 2
    pred, ref = pred.reshape(-1, 2 * ndim), ref.reshape(-1, 2 * ndim)
    for x in (pred, ref):
        if np.any(x[:, ndim:] < x[:, :ndim]):
            raise ValueError("a box's far corner (x1, y1[, z1]) lies before its near corner")
    return pred, ref, ndim


def _pair_quality(pred, ref, ndim, iou, centre_distance_mm, spacing) -> tuple[np.ndarray, np.ndarray]:
    """(pair passes the threshold, quality in [0, 1], higher better) for every pred x ref pair."""
    if centre_distance_mm is not None and not centre_distance_mm >= 0:
        raise ValueError(f"centre_distance_mm must be >= 0, got {centre_distance_mm}")
    if centre_distance_mm is None and not 0 <= iou <= 1:
        raise ValueError(f"iou must be within [0, 1], got {iou}")
    if not pred.size or not ref.size:
        return np.zeros((len(pred), len(ref)), dtype=bool), np.zeros((len(pred), len(ref)))
    if centre_distance_mm is not None:
        scale = np.ones(ndim) if spacing is None else spacing_of(spacing, ndim)
        centres = [(x[:, :ndim] + x[:, ndim:]) / 2 * scale for x in (pred, ref)]
        distance = spatial.distance.cdist(*centres)
        passes = distance <= centre_distance_mm
        quality = 1 - distance / centre_distance_mm if centre_distance_mm else np.ones_like(distance)
        return passes, quality
    near = np.maximum(pred[:, None, :ndim], ref[None, :, :ndim])
    far = np.minimum(pred[:, None, ndim:], ref[None, :, ndim:])
    inter = np.prod(np.clip(far - near, 0, None), axis=-1)
    union = (
        np.prod(pred[:, ndim:] - pred[:, :ndim], axis=-1)[:, None]
        + np.prod(ref[:, ndim:] - ref[:, :ndim], axis=-1)[None, :]
        - inter
    )
    overlap = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
    return overlap >= iou, overlap


def match_detections(
    pred_boxes, ref_boxes, *, iou: float = 0.5, centre_distance_mm: float | None = None, spacing=None
) -> dict:
    """One-to-one matching of predicted to reference boxes: as many pairs as possible that pass the
    threshold, and among those the highest total IoU (or lowest total centre distance), by the
    Hungarian algorithm. Returns tp, fp, fn and ``matches`` [(pred index, ref index)] by pred index.

    Boxes are (x0, y0, x1, y1) or (x0, y0, z0, x1, y1, z1) in continuous coordinates (volume =
    product of x1 - x0 ...). A pair passes with IoU >= ``iou``, or, when ``centre_distance_mm`` is
    given (``iou`` is then ignored), with box centres at most that far apart; ``spacing`` (x, y[, z]
    order) turns box coordinates into mm, None meaning they are mm already. No boxes: all counts 0.
    """
    pred, ref, ndim = _boxes(pred_boxes, ref_boxes)
    passes, quality = _pair_quality(pred, ref, ndim, iou, centre_distance_mm, spacing)
    pairs: list[tuple[int, int]] = []
    if passes.any():
        # Each pass is worth more than any total of qualities (all <= 1), so the number of matches
        # comes first and quality only breaks ties between maximum matchings.
        gain = np.where(passes, min(passes.shape) + 1 + quality, 0.0)
        rows, cols = optimize.linear_sum_assignment(gain, maximize=True)
        pairs = sorted((int(r), int(c)) for r, c in zip(rows, cols, strict=True) if passes[r, c])
    return {"tp": len(pairs), "fp": len(pred) - len(pairs), "fn": len(ref) - len(pairs), "matches": pairs}


def froc(
    scans: Sequence[Mapping],
    *,
    thresholds: Sequence[float] | None = None,
    fps_per_scan: Sequence[float] = LUNA16_FPS_PER_SCAN,
    iou: float = 0.5,
    centre_distance_mm: float | None = None,
) -> dict:
    """Sensitivity at average false positives per scan and its mean (the LUNA16 CPM), as the LUNA16
    evaluation script computes them.

    Each scan maps "pred_boxes", "scores" (one per predicted box), "ref_boxes" and optionally
    "spacing". A detection hits a reference when the pair passes ``match_detections``' threshold.
    As in LUNA16, each reference counts once, at the best score of the detections hitting it; other
    detections hitting a reference are neither hits nor false positives; a detection hitting none is
    a false positive. At each score threshold (every distinct score, or ``thresholds``): sensitivity
    = references hit / all references, FPs per scan = false positives / number of scans. The
    sensitivity at each rate is linearly interpolated along that curve from (0, 0), held at the
    last point beyond it: np.interp, as the script's curve (which samples np.interp on a grid).
    Returns fps_per_scan, sensitivity (one per rate), cpm (their mean) and the curve: thresholds
    (from +inf), curve_fps, curve_sensitivity. NaN sensitivities and CPM when there are no scans or
    no references.
    """
    hits, false_positives, references = [], [], 0
    for scan in scans:
        pred, ref, ndim = _boxes(scan["pred_boxes"], scan["ref_boxes"])
        scores = np.asarray(scan["scores"], dtype=float).ravel()
        if scores.size != len(pred) or np.isnan(scores).any():
            raise ValueError(f"a scan has {len(pred)} pred_boxes but {scores.size} scores (or a NaN score)")
        passes, _ = _pair_quality(pred, ref, ndim, iou, centre_distance_mm, scan.get("spacing"))
        references += len(ref)
        hit = passes.any(axis=0)
        hits.append(np.where(passes[:, hit], scores[:, None], -np.inf).max(axis=0, initial=-np.inf))
        false_positives.append(scores[~passes.any(axis=1)])
    hit_scores = np.sort(np.concatenate(hits)) if hits else np.empty(0)
    fp_scores = np.sort(np.concatenate(false_positives)) if false_positives else np.empty(0)
    if thresholds is None:
        cuts = np.unique(np.concatenate([hit_scores, fp_scores]))[::-1]
    else:
        cuts = np.sort(np.asarray(thresholds, dtype=float).ravel())[::-1]
    cuts = np.concatenate([[np.inf], cuts])
    at = np.asarray(fps_per_scan, dtype=float)
    if not hits or not references:
        curve_fps = curve_sensitivity = np.full(cuts.shape, np.nan)
        sensitivity = np.full(at.shape, np.nan)
    else:
        curve_fps = (fp_scores.size - np.searchsorted(fp_scores, cuts, side="left")) / len(hits)
        curve_sensitivity = (hit_scores.size - np.searchsorted(hit_scores, cuts, side="left")) / references
        sensitivity = np.interp(at, curve_fps, curve_sensitivity)
    return {
        "fps_per_scan": tuple(at.tolist()),
        "sensitivity": tuple(sensitivity.tolist()),
        "cpm": float(sensitivity.mean()) if at.size else math.nan,
        "thresholds": cuts,
        "curve_fps": curve_fps,
        "curve_sensitivity": curve_sensitivity,
    }
