"""Quality-metrics benchmark: HD95 and Dice of two CT-sized masks next to MONAI, and weighted kappa
on a million rating pairs next to scikit-learn, in one run.

    .venv/bin/python bench/metrics.py [--quick]        (512x512x300 masks; --quick: 256x256x150)

The masks are two overlapping irregular shapes (unions of random ellipsoids with a smooth random
boundary, the second a perturbed copy of the first; fixed seed) at spacing 0.7 x 0.7 x 2.5 mm.
MONAI gets float32 tensors built before its clock starts (HausdorffDistanceMetric(percentile=95),
DiceMetric, spacing passed to the call); tasks.metrics gets the boolean arrays. Each timing is the
best of a few runs. The run fails if the HD95 values differ by 1e-4 mm or more, or the kappas by
1e-9. Needs torch, MONAI and scikit-learn (test/bench-only dependencies).
Last line: one JSON object with hd95_s, monai_hd95_s, hd95_speedup_vs_monai, dice_speedup_vs_monai,
kappa_speedup_vs_sklearn, peak_rss_mb and the values compared.
"""

import argparse
import resource
import sys
import time
import warnings
from pathlib import Path

import numpy as np
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import print_result  # noqa: E402
from tasks import metrics  # noqa: E402

SPACING = (0.7, 0.7, 2.5)
KAPPA_PAIRS = 1_000_000
KAPPA_CATEGORIES = [0, 1, 2, 3, 4]


def smooth_noise(shape, rng) -> np.ndarray:
    coarse = rng.standard_normal([max(4, s // 16) for s in shape]).astype(np.float32)
    return ndimage.zoom(coarse, [s / c for s, c in zip(shape, coarse.shape, strict=True)], order=1, output=np.float32)


def ellipsoid_union(shape, ellipsoids, noise) -> np.ndarray:
    """Voxels inside any ellipsoid whose boundary is pushed in or out by up to ~35% by `noise`."""
    field = np.full(shape, np.inf, dtype=np.float32)
    for centre, radii in ellipsoids:
        low = np.maximum(np.floor(centre - 1.6 * radii).astype(int), 0)
        high = np.minimum(np.ceil(centre + 1.6 * radii).astype(int) + 1, shape)
        grid = np.ogrid[tuple(slice(lo, hi) for lo, hi in zip(low, high, strict=True))]
        distance = sum(((g - c) / r).astype(np.float32) ** 2 for g, c, r in zip(grid, centre, radii, strict=True))
        box = tuple(slice(lo, hi) for lo, hi in zip(low, high, strict=True))
        np.minimum(field[box], distance, out=field[box])
    return field < 1 + 0.35 * noise


def make_masks(shape, seed=0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    size = np.asarray(shape, dtype=float)
    ellipsoids = [
        (
            rng.uniform([0.3, 0.3, 0.25], [0.7, 0.7, 0.75]) * size,
            rng.uniform([0.05, 0.05, 0.06], [0.16, 0.16, 0.2]) * size,
        )
        for _ in range(12)
    ]
    jittered = [(c + rng.normal(0, 2, 3), r * rng.uniform(0.9, 1.1, 3)) for c, r in ellipsoids]
    return ellipsoid_union(shape, ellipsoids, smooth_noise(shape, rng)), ellipsoid_union(
        shape, jittered, smooth_noise(shape, rng)
    )


def best_of(repeats: int, function):
    """(fastest wall time in seconds, value of the last run)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        value = function()
        times.append(time.perf_counter() - start)
    return min(times), value


def bench_masks(a, b) -> dict:
    import torch
    from monai.metrics import DiceMetric, HausdorffDistanceMetric

    warnings.filterwarnings("ignore", category=FutureWarning)
    ta, tb = (torch.from_numpy(m.astype(np.float32))[None, None] for m in (a, b))
    hd95_s, hd95 = best_of(3, lambda: metrics.hausdorff(a, b, spacing=SPACING, percentile=95))
    monai_hd = HausdorffDistanceMetric(include_background=True, percentile=95)
    monai_hd95_s, monai_hd95 = best_of(3, lambda: float(monai_hd(ta, tb, spacing=SPACING).item()))
    print(f"HD95   ours {hd95:.6f} mm in {hd95_s:.3f} s; MONAI {monai_hd95:.6f} mm in {monai_hd95_s:.3f} s "
          f"-> {monai_hd95_s / hd95_s:.1f}x")
    dice_s, dice = best_of(3, lambda: metrics.dice(a, b))
    monai_dice = DiceMetric(include_background=True)
    monai_dice_s, monai_dice_value = best_of(3, lambda: float(monai_dice(ta, tb).item()))
    print(f"Dice   ours {dice:.6f} in {dice_s * 1e3:.1f} ms; MONAI {monai_dice_value:.6f} in "
          f"{monai_dice_s * 1e3:.1f} ms -> {monai_dice_s / dice_s:.0f}x")
    if abs(hd95 - monai_hd95) >= 1e-4:
        sys.exit(f"HD95 differs from MONAI's: {hd95} vs {monai_hd95} mm")
    return {
        "hd95_s": round(hd95_s, 4),
        "monai_hd95_s": round(monai_hd95_s, 4),
        "hd95_speedup_vs_monai": round(monai_hd95_s / hd95_s, 2),
        "hd95_mm": round(hd95, 6),
        "monai_hd95_mm": round(monai_hd95, 6),
        "hd95_diff_mm": float(f"{abs(hd95 - monai_hd95):.3g}"),
        "dice_s": round(dice_s, 5),
        "monai_dice_s": round(monai_dice_s, 4),
        "dice_speedup_vs_monai": round(monai_dice_s / dice_s, 1),
    }


def bench_kappa() -> dict:
    from sklearn.metrics import cohen_kappa_score

    rng = np.random.default_rng(1)
    first = rng.integers(0, 5, KAPPA_PAIRS)
    second = np.clip(first + rng.integers(-1, 2, KAPPA_PAIRS), 0, 4)
    kappa_s, kappa = best_of(
        5, lambda: metrics.cohen_kappa(first, second, categories=KAPPA_CATEGORIES, weights="quadratic")
    )
    sklearn_kappa_s, sklearn_kappa = best_of(
        3, lambda: cohen_kappa_score(first, second, labels=KAPPA_CATEGORIES, weights="quadratic")
    )
    print(f"kappa  ours {kappa:.9f} in {kappa_s * 1e3:.1f} ms; scikit-learn {sklearn_kappa:.9f} in "
          f"{sklearn_kappa_s * 1e3:.1f} ms -> {sklearn_kappa_s / kappa_s:.0f}x  ({KAPPA_PAIRS:,} pairs, quadratic)")
    if abs(kappa - sklearn_kappa) >= 1e-9:
        sys.exit(f"kappa differs from scikit-learn's: {kappa} vs {sklearn_kappa}")
    return {
        "kappa_s": round(kappa_s, 5),
        "sklearn_kappa_s": round(sklearn_kappa_s, 4),
        "kappa_speedup_vs_sklearn": round(sklearn_kappa_s / kappa_s, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="256x256x150 masks")
    args = parser.parse_args()
    shape = (256, 256, 150) if args.quick else (512, 512, 300)
    start = time.perf_counter()
    a, b = make_masks(shape)
    print(f"masks {shape}: {a.sum():,} and {b.sum():,} voxels, made in {time.perf_counter() - start:.1f} s")
    result = {"quick": args.quick, "shape": list(shape), **bench_masks(a, b), **bench_kappa()}
    result["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    print(f"peak RSS {result['peak_rss_mb']} MB (this process, MONAI and torch included)")
    print_result(result)


if __name__ == "__main__":
    main()
