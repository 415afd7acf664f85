"""Noise budget on real data (issue 15, item 2): how much of a retrained output is the mask, how much the seed.

The same random masks (p = ``design.p``) are retrained under several training seeds (``train.seed``); for each
output the replicate correlation across masks, rho = corr(y_seed_a, y_seed_b), estimates the share of its
variance that the mask explains. rho is the noise ceiling of any estimator's held-out R^2 against one
replicate (no function of the mask can predict the seed's part), and rho / (1 - rho) its signal-to-noise ratio.
Averaging r replicates per mask lifts the ceiling to r rho / (1 + (r - 1) rho) (Spearman-Brown; with 4 or more
seeds it is also measured, halves against halves).

Outputs: (a) each test example's loss, (b) its margin (median rho over test examples), (c) aggregates over the
test set: mean loss, mean margin, accuracy, and the mean loss of each class (median over classes). Seed
policies: ``per_mask`` (each mask its own init and data order) and ``shared`` (common random numbers: one init,
one permutation per epoch restricted to each mask). Recipes: any overrides of ``train.*``.

    python benchmarks/noise.py --source fortunes --n-train 256 --masks 64             # the README table
    python benchmarks/noise.py --source wordnet --recipes "epochs=12;epochs=4;epochs=12,lr=1e-3"
    python benchmarks/noise.py --quick                                                # a smoke run
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import realdata  # noqa: E402
from train_throughput import engine_with, load_config, setup  # noqa: E402


def replicate_rho(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per column, the correlation across masks (rows) of two replicates (M, K) -> (K,); nan for a column
    that does not vary."""
    a, b = a - a.mean(0), b - b.mean(0)
    denom = np.sqrt((a * a).sum(0) * (b * b).sum(0))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, (a * b).sum(0) / denom, np.nan)


def outputs(losses: np.ndarray, margins: np.ndarray, labels: np.ndarray) -> dict[str, np.ndarray]:
    """Each kind of output of one replicate, (M, K): losses and margins (M, T) as they are, and aggregates."""
    per_class = np.stack([losses[:, labels == c].mean(1) for c in np.unique(labels)], axis=1)
    return {"loss": losses, "margin": margins, "mean loss": losses.mean(1, keepdims=True),
            "mean margin": margins.mean(1, keepdims=True), "accuracy": (margins > 0).mean(1, keepdims=True),
            "class mean loss": per_class}


def spearman_brown(rho: float, r: int) -> float:
    return r * rho / (1 + (r - 1) * rho)


def measure(cfg, base, train, test, masks, seeds, log) -> tuple[dict, float]:
    """Losses and margins (S, M, T) of every mask under every seed; returns them and seconds per retrain."""
    losses, margins = [], []
    start = time.perf_counter()
    for seed in seeds:
        train_cfg = cfg.train.copy()
        train_cfg.seed = int(seed)
        out = {m: (loss, marg) for m, loss, marg, *_ in engine_with("auto")(
            base, cfg.lora, train_cfg, train, test, masks, list(range(len(masks))))}
        losses.append(np.stack([out[m][0] for m in range(len(masks))]))
        margins.append(np.stack([out[m][1] for m in range(len(masks))]))
        log(f"    seed {seed}: {len(masks)} retrains, {time.perf_counter() - start:.0f} s so far")
    return (np.stack(losses), np.stack(margins)), (time.perf_counter() - start) / (len(seeds) * len(masks))


def summarise(losses, margins, labels) -> dict[str, dict]:
    """Per kind of output: median replicate rho over its columns (seed 0 against seed 1), and with 4+ seeds the
    measured rho of 2-replicate means (seeds 0+1 against 2+3)."""
    reps = [outputs(losses[s], margins[s], labels) for s in range(len(losses))]
    rows = {}
    for kind in reps[0]:
        rho = float(np.nanmedian(replicate_rho(reps[0][kind], reps[1][kind])))
        row = {"rho": rho, "snr": rho / (1 - rho) if rho < 1 else float("inf"), "rho2_pred": spearman_brown(rho, 2),
               "rho4_pred": spearman_brown(rho, 4), "rho2": float("nan")}
        if len(reps) >= 4:
            first = (reps[0][kind] + reps[1][kind]) / 2
            second = (reps[2][kind] + reps[3][kind]) / 2
            row["rho2"] = float(np.nanmedian(replicate_rho(first, second)))
        rows[kind] = row
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", choices=realdata.SOURCES, default="fortunes")
    parser.add_argument("--n-train", type=int, default=256)
    parser.add_argument("--n-test", type=int, default=64)
    parser.add_argument("--masks", type=int, default=64, help="random masks, each retrained under every seed")
    parser.add_argument("--seeds", default="0,1", help="training seeds (4+ also measures 2-replicate means)")
    parser.add_argument("--policies", default="per_mask,shared")
    parser.add_argument("--recipes", default="epochs=12",
                        help="';'-separated train.* overrides, each a comma-separated list of key=value")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="n_train 32, 8 masks, one policy (a smoke run)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="any config override")
    opts = parser.parse_args(argv)
    if opts.quick:
        opts.n_train, opts.n_test, opts.masks, opts.policies = 32, 8, 8, "per_mask"
    torch.set_num_threads(opts.threads)
    import transformers

    transformers.logging.set_verbosity_error()

    def log(msg):
        print(msg, file=sys.stderr, flush=True)

    folder = os.path.join(tempfile.mkdtemp(prefix="dataspex-noise-"), opts.source)
    realdata.write(realdata.build(opts.source, opts.n_train, n_test=opts.n_test, n_eval=0, seed=0), folder)
    seeds = [int(s) for s in opts.seeds.split(",")]
    if len(seeds) < 2:
        parser.error("--seeds needs at least two seeds")
    results = []
    for recipe in opts.recipes.split(";"):
        for policy in opts.policies.split(","):
            overrides = ["data=files", f"data.train_file={folder}/train.csv", f"data.test_file={folder}/test.csv",
                         f"train.seed_policy={policy}", *(f"train.{kv}" for kv in recipe.split(",") if kv), *opts.set]
            cfg = load_config("top:1", overrides)
            base, train, test = setup(cfg)
            rng = np.random.default_rng(0)
            masks = (rng.random((opts.masks, len(train))) < cfg.design.p).astype(np.uint8)
            masks[masks.sum(axis=1) == 0, 0] = 1
            log(f"  {opts.source} n={len(train)}: recipe {recipe}, seed_policy={policy}")
            (losses, margins), per = measure(cfg, base, train, test, masks, seeds, log)
            labels = test.targets.numpy() if hasattr(test.targets, "numpy") else np.asarray(test.targets)
            results.append((recipe, policy, per, summarise(losses, margins, labels), float(losses.mean())))

    print(f"\n{opts.source}, n_train={opts.n_train}, n_test={opts.n_test}, {opts.masks} random masks "
          f"(p = design.p) x seeds {seeds}; torch {torch.__version__}, {opts.threads} thread(s); rho = median over "
          f"outputs of the seed-{seeds[0]}-vs-seed-{seeds[1]} correlation across masks (the R^2 ceiling)\n")
    print("| recipe | seed_policy | s / retrain | mean test loss | output | rho (ceiling) | SNR | rho, 2 reps "
          "(pred.) | rho, 4 reps (pred.) | rho, 2 reps (measured) |")
    print("|---|---|---:|---:|---|---:|---:|---:|---:|---:|")
    for recipe, policy, per, rows, mean_loss in results:
        for kind, r in rows.items():
            measured = "-" if np.isnan(r["rho2"]) else f"{r['rho2']:.2f}"
            print(f"| {recipe} | {policy} | {per:.3f} | {mean_loss:.3f} | {kind} | {r['rho']:.2f} | {r['snr']:.2f} "
                  f"| {r['rho2_pred']:.2f} | {r['rho4_pred']:.2f} | {measured} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
