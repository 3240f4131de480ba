"""Does uncertainty sampling save labels? Simulated active learning on synthetic MONAI volumes.

Task: CT-like volumes (HU) whose lesion comes from monai.data.synthetic.create_test_image_3d (one
sphere of radius 3 voxels at a random place) on 30 HU tissue with 25 HU noise and +-10 HU calibration offset; lesions
enhance by 30..190 HU and the class is "enhancement >= 110 HU". Most studies are far from the threshold
and easy; the few near it decide the accuracy. Each simulated patient has two studies (same lesions,
fresh noise), so a batch may hold near-duplicates unless one per patient is enforced.

Loop, per seed and strategy: a small DenseNet (learning.ml, MONAI) starts from a random labelled seed
set, then each round labels ``batch`` more studies chosen by the strategy (random, least-confidence,
margin, entropy via modAL; MC-dropout entropy), at most one per patient, fine-tunes from the previous
round's weights, and records held-out accuracy. Every strategy of a seed shares the pool, the test set,
the seed set and the initial network.

Labels to target: the target is fixed before the run as 0.97 x the accuracy random sampling reaches
with every label of the last round, averaged over seeds (printed); a strategy's labels to target is the
first labelled-set size at which its seed-averaged accuracy reaches the target (null if never).
``label_ratio_best_vs_random`` = best uncertainty strategy's labels / random's labels.
``volumes_per_s`` = scoring throughput (preprocessed volumes through predict_proba) on the device used;
``volumes_per_s_densenet121_64`` the same for MONAI's DenseNet121 on a 64^3 grid (production size).

    .venv/bin/python bench/active_learning.py [--quick] [--seeds 3] [--device cuda]
"""

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import print_result  # noqa: E402
from learning.ml import ModelSpec, evaluate, mc_dropout, predict_proba, preprocess, select_batch, train  # noqa: E402

STRATEGIES = ("random", "least_confidence", "margin", "entropy", "mc_dropout")
THRESHOLD_HU = 110.0
ENHANCEMENT_RANGE = (30.0, 190.0)
LEARNING_RATE = 1e-3


def make_studies(n_patients: int, grid: int, rng: np.random.Generator, spec: ModelSpec):
    from monai.data.synthetic import create_test_image_3d

    volumes, labels, groups = [], [], []
    for patient in range(n_patients):
        enhancement = rng.uniform(ENHANCEMENT_RANGE[0], ENHANCEMENT_RANGE[1])
        layout_seed = int(rng.integers(2**31))
        for _ in range(2):
            # Same lesions (layout seed) for both studies of a patient; noise and calibration differ.
            _, mask = create_test_image_3d(grid, grid, grid, num_objs=1, rad_max=4, rad_min=3, num_seg_classes=1,
                                           random_state=np.random.RandomState(layout_seed))
            image = 30.0 + (mask > 0) * enhancement + rng.uniform(-10, 10) + rng.normal(0, 25, mask.shape)
            volumes.append(preprocess(image.astype(np.float32), (1.0, 1.0, 1.0), spec))
            labels.append(int(enhancement >= THRESHOLD_HU))
            groups.append(patient)
    return np.stack(volumes), np.array(labels), np.array(groups)


def epochs_for(steps: int, labelled: int, args) -> int:
    """Epochs giving about ``steps`` gradient steps: tiny labelled sets need many epochs to train at all."""
    return max(1, -(-steps * args.batch_size // labelled))


def run_seed(seed: int, args, spec: ModelSpec) -> dict:
    rng = np.random.default_rng(seed)
    pool_x, pool_y, groups = make_studies(args.pool // 2, args.grid, rng, spec)
    test_x, test_y, _ = make_studies(args.test // 2, args.grid, rng, spec)
    while True:
        start = rng.choice(len(pool_x), args.seed_size, replace=False)
        if len(np.unique(pool_y[start])) == 2:
            break
    initial = train(spec, pool_x[start], pool_y[start], epochs=epochs_for(args.steps0, len(start), args),
                    seed=seed, device=args.device, batch_size=args.batch_size, learning_rate=LEARNING_RATE)
    curves = {}
    for strategy in args.strategies:
        if strategy in ("margin", "entropy") and spec.num_classes == 2 and "least_confidence" in curves:
            # With two classes all three measures are monotone in max(p): same ranking, same run.
            curves[strategy] = curves["least_confidence"]
            continue
        labelled = list(start)
        weights = initial
        curve = [(len(labelled), evaluate(spec, weights, test_x, test_y, device=args.device)["accuracy"])]
        pick_rng = np.random.default_rng(seed + 1)
        for round_ in range(args.rounds):
            unlabelled = np.setdiff1d(np.arange(len(pool_x)), labelled)
            if strategy == "random":
                chosen = pick_rng.choice(unlabelled, args.batch, replace=False)
            else:
                if strategy == "mc_dropout":
                    scores = mc_dropout(spec, weights, pool_x[unlabelled], passes=args.passes, device=args.device,
                                        seed=seed + round_)
                    picked = select_batch(scores, args.batch, groups=groups[unlabelled])
                else:
                    proba = predict_proba(spec, weights, pool_x[unlabelled], device=args.device, batch_size=64)
                    picked = select_batch(proba, args.batch, strategy=strategy, groups=groups[unlabelled])
                chosen = unlabelled[picked]
            labelled += [int(i) for i in chosen]
            weights = train(spec, pool_x[labelled], pool_y[labelled], seed=seed + round_,
                            epochs=epochs_for(args.steps, len(labelled), args), learning_rate=LEARNING_RATE,
                            device=args.device, init_weights=weights, batch_size=args.batch_size)
            curve.append((len(labelled), evaluate(spec, weights, test_x, test_y, device=args.device)["accuracy"]))
        curves[strategy] = curve
        print(f"seed {seed} {strategy:>16}: " + " ".join(f"{n}:{acc:.3f}" for n, acc in curve), flush=True)
    return {"curves": curves, "pool_x": pool_x}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller pool, fewer rounds (< 1 minute)")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when present)")
    args = parser.parse_args()
    args.grid = 12 if args.quick else 16
    args.pool, args.test = (120, 120) if args.quick else (400, 300)
    args.seed_size, args.batch = (6, 6) if args.quick else (8, 8)
    args.rounds = 5 if args.quick else 10
    args.steps0, args.steps, args.batch_size = 40, 20, 16
    args.passes = 3 if args.quick else 10
    args.strategies = STRATEGIES
    spec = ModelSpec(task="classification", architecture="densenet", spatial_dims=3, grid=(args.grid,) * 3,
                     num_classes=2, modality="CT", window=(100.0, 300.0), dropout=0.2,
                     init_features=8, growth_rate=8, block_config=(2, 2))
    started = time.perf_counter()
    runs = [run_seed(seed, args, spec) for seed in range(args.seeds)]
    mean_curves = {s: np.mean([[acc for _, acc in run["curves"][s]] for run in runs], axis=0) for s in STRATEGIES}
    sizes = [n for n, _ in runs[0]["curves"]["random"]]
    target = 0.97 * mean_curves["random"][-1]
    labels_to_target = {}
    for strategy, curve in mean_curves.items():
        reached = [n for n, acc in zip(sizes, curve, strict=True) if acc >= target]
        labels_to_target[strategy] = reached[0] if reached else None
    print(f"target accuracy {target:.3f} (0.97 x random's final {mean_curves['random'][-1]:.3f})")
    for strategy in STRATEGIES:
        print(f"{strategy:>16}: labels to target {labels_to_target[strategy]}; mean accuracy "
              + " ".join(f"{acc:.3f}" for acc in mean_curves[strategy]))
    uncertain = [v for s, v in labels_to_target.items() if s != "random" and v is not None]
    random_labels = labels_to_target["random"]
    ratio = min(uncertain) / random_labels if uncertain and random_labels else None

    weights = train(spec, runs[0]["pool_x"][:32], np.arange(32) % 2, epochs=1, seed=0, device=args.device)
    pool_x = runs[0]["pool_x"]
    predict_proba(spec, weights, pool_x[:64], device=args.device, batch_size=64)  # warm-up
    tick = time.perf_counter()
    predict_proba(spec, weights, pool_x, device=args.device, batch_size=64)
    volumes_per_s = len(pool_x) / (time.perf_counter() - tick)
    print(f"scoring throughput: {volumes_per_s:.0f} volumes/s ({args.grid}^3, small DenseNet)")
    # What a production scoring run costs: MONAI's full DenseNet121 on a 64^3 grid (random weights:
    # throughput does not depend on them).
    real = ModelSpec(task="classification", architecture="densenet121", spatial_dims=3, grid=(64, 64, 64),
                     num_classes=2, modality="CT")
    real_weights = train(real, np.zeros((2, 1, 64, 64, 64), np.float32), np.array([0, 1]), epochs=1, seed=0,
                         device=args.device)
    batch = np.random.default_rng(0).normal(size=(16 if args.quick else 64, 1, 64, 64, 64)).astype(np.float32)
    predict_proba(real, real_weights, batch[:4], device=args.device, batch_size=8)  # warm-up
    tick = time.perf_counter()
    predict_proba(real, real_weights, batch, device=args.device, batch_size=8)
    densenet121_per_s = len(batch) / (time.perf_counter() - tick)
    print(f"scoring throughput: {densenet121_per_s:.1f} volumes/s (64^3, DenseNet121); "
          f"total {time.perf_counter() - started:.1f} s")
    print_result({"labels_to_target": labels_to_target, "label_ratio_best_vs_random": ratio,
                  "target_accuracy": round(float(target), 4), "volumes_per_s": round(volumes_per_s, 1),
                  "volumes_per_s_densenet121_64": round(densenet121_per_s, 2),
                  "seeds": args.seeds, "quick": args.quick,
                  "final_accuracy": {s: round(float(c[-1]), 4) for s, c in mean_curves.items()}})


if __name__ == "__main__":
    main()
