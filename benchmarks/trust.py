"""How faithful must the ranking model be before its top pairs survive retraining? (issue 16, item 5)

The report's trust threshold (``report.trust_r2``) is read off this measurement. For a finished ``dataspex run``
and each budget m, the script refits the linear datamodel and the quadratic model on the run's first m fit masks,
scores the quadratic model's pooled held-out R^2 on the run's held-out masks, takes its top pairs as ``dataspex
validate`` does (``validate.top_k`` of each of ``validate.kinds``), tests each one on the held-out masks against
the linear model's main effects (a finding when q <= ``report.q_max``), and then checks each pair as ``dataspex
validate`` would: the four training sets full, minus i, minus j, minus both, retrained under ``--seeds`` training
seeds, and the realised interaction's t-interval at ``validate.level`` (confirmed: it excludes 0 on the predicted
side). The retrains are cached in ``--out`` by training set and seed, so budgets that pick the same pairs share
them and a second call trains nothing.

    python benchmarks/trust.py --run /tmp/runs/f256flip_m1024 --out /tmp/trust/f256flip
    python benchmarks/trust.py --run /tmp/runs/w256p_m1024 --out /tmp/trust/w256p

Prints one row per budget (pooled R^2, pairs confirmed, findings and findings confirmed) and writes trust.json.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
import warnings

import numpy as np
import pandas as pd

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from budget import estimator_config, markdown_table, run_splits  # noqa: E402


def read_cache(path: str) -> dict:
    """{(mask bytes hex, seed): losses (T,)} of earlier calls."""
    if not os.path.exists(path):
        return {}
    with np.load(path, allow_pickle=False) as z:
        return {(k, int(s)): z["losses"][r] for r, (k, s) in enumerate(zip(z["keys"], z["seeds"]))}


def write_cache(path: str, cache: dict) -> None:
    keys = sorted(cache)
    tmp = path + ".tmp.npz"
    np.savez(tmp, keys=np.array([k for k, _ in keys]), seeds=np.array([s for _, s in keys]),
             losses=np.stack([cache[k] for k in keys]))
    os.replace(tmp, path)


def retrain(cfg, masks: list[np.ndarray], seeds: list[int], cache_path: str, log) -> dict:
    """Test losses of every training set in ``masks`` under every training seed, from the cache or trained."""
    cache = read_cache(cache_path)
    todo = {}
    for mask in masks:
        for seed in seeds:
            if (mask.tobytes().hex(), seed) not in cache:
                todo.setdefault(seed, {})[mask.tobytes().hex()] = mask
    if todo:
        from dataspex.train import engine
        from train_throughput import setup

        base, train, test = setup(cfg)  # the run's base model and head (train.seed), as every mask of the run
        for seed, group in todo.items():
            keys = list(group)
            run_cfg = copy.deepcopy(cfg)
            run_cfg.train.seed = seed
            start = time.perf_counter()
            # Mask ids only seed each mask's LoRA init and order (per_mask policy): 0..k-1 under each seed.
            ids = np.arange(len(keys))
            stacked = np.stack([group[k] for k in keys])
            for m, loss, *_ in engine.train_masks(base, run_cfg.lora, run_cfg.train, train, test, stacked, ids):
                cache[(keys[int(m)], seed)] = np.asarray(loss, dtype=np.float64)
            log(f"retrained {len(keys)} training sets under seed {seed} in {time.perf_counter() - start:.0f} s")
            write_cache(cache_path, cache)
    return cache


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", required=True, help="a finished dataspex run directory")
    parser.add_argument("--budgets", default="", help="comma-separated numbers of fit masks (default: 16 to 4n)")
    parser.add_argument("--seeds", default="100,101,102,103", help="training seeds of the validation retrains")
    parser.add_argument("--estimator", default="quadratic",
                        help="the pair model (budget.estimator_config: the run's, else conf/estimator/<name>.yaml)")
    parser.add_argument("--out", required=True, help="folder for trust.json and the retrain cache")
    opts = parser.parse_args(argv)

    from hydra.utils import instantiate

    from dataspex.core.metrics import pooled_r2
    from dataspex.design.validation import variant_masks
    from dataspex.fit.ranking import select_pairs
    from dataspex.fit.significance import ranked_pair_tests
    from dataspex.validate.analysis import t_interval, verdict

    def log(msg):
        print(msg, file=sys.stderr, flush=True)

    run = run_splits(opts.run)
    cfg, ho_keep = run["cfg"], run["ho_keep"]
    X_fit, Y_fit, X_ho, Y_ho, n, T = (run[k] for k in ("X_fit", "Y_fit", "X_ho", "Y_ho", "n", "T"))
    budgets = [int(b) for b in opts.budgets.split(",") if b] or [b for b in (16, 32, 64, 128, n // 2, n, 2 * n, 4 * n)
                                                                  if b <= len(X_fit)]
    budgets = sorted(set(budgets))
    seeds = [int(s) for s in opts.seeds.split(",")]
    kinds, top_k = list(cfg.validate.kinds), int(cfg.validate.top_k)
    level, q_max = float(cfg.validate.level), float(cfg.report.q_max)
    os.makedirs(opts.out, exist_ok=True)

    picked = {}
    for m in budgets:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            linear = instantiate(cfg.estimators.linear).fit(X_fit[:m], Y_fit[:m])
            quad = instantiate(estimator_config(cfg, opts.estimator)).fit(X_fit[:m], Y_fit[:m])
        pairs = select_pairs(quad.result_, kinds, top_k, "uniform", T)
        tested = ranked_pair_tests(quad.result_, pairs[["i", "j", "test"]], X_ho, Y_ho, linear.predict(X_ho))
        pairs["q_value"] = tested["q_value"].to_numpy()
        pairs["predicted"] = [float(quad.result_.pair_scores("full", output=int(t))[i, j])
                              for i, j, t in zip(pairs["i"], pairs["j"], pairs["test"])]
        picked[m] = (pairs, pooled_r2(Y_ho[:, :T], quad.predict(X_ho)[:, :T]),
                     pooled_r2(Y_ho[:, :T], linear.predict(X_ho)[:, :T]))
        log(f"m={m}: quadratic pooled R^2 {picked[m][1]:.3f}, pairs {list(zip(pairs['i'], pairs['j']))}")

    masks = {}
    for pairs, *_ in picked.values():
        for i, j in zip(pairs["i"], pairs["j"]):
            for mask in variant_masks(n, int(i), int(j)).values():
                masks[mask.tobytes()] = mask
    cache = retrain(cfg, list(masks.values()), seeds, os.path.join(opts.out, "retrains.npz"), log)

    def losses(mask):
        return np.stack([cache[(mask.tobytes().hex(), s)] for s in seeds])  # (seeds, T)

    rows, pair_rows = [], []
    for m, (pairs, r2, r2_linear) in picked.items():
        confirmed = []
        for p in pairs.itertuples():
            v = {k: losses(x)[:, int(p.test)] for k, x in variant_masks(n, int(p.i), int(p.j)).items()}
            d = v["minus_both"] - v["minus_i"] - v["minus_j"] + v["full"]
            mean, _, lo, hi = t_interval(d, level)
            ok = verdict(p.predicted, lo, hi) == "confirmed"
            confirmed.append(ok)
            pair_rows.append({"m": m, "kind": p.kind, "i": int(p.i), "j": int(p.j), "test": int(p.test),
                              "predicted": p.predicted, "realised": mean, "low": lo, "high": hi,
                              "q_value": p.q_value, "confirmed": ok})
        confirmed = np.array(confirmed)
        found = pairs["q_value"].to_numpy() <= q_max
        rows.append({"m": m, "r2 quadratic": round(r2, 3), "r2 linear": round(r2_linear, 3),
                     "top pairs confirmed": f"{int(confirmed.sum())} / {len(pairs)}",
                     "findings (q <= %g)" % q_max: int(found.sum()),
                     "findings confirmed": f"{int(confirmed[found].sum())} / {int(found.sum())}",
                     "non-findings confirmed": f"{int(confirmed[~found].sum())} / {int((~found).sum())}"})
    with open(os.path.join(opts.out, "trust.json"), "w") as fh:
        json.dump({"run": opts.run, "seeds": seeds, "level": level, "q_max": q_max, "rows": rows,
                   "pairs": pair_rows}, fh, indent=1, default=float)
    print(f"\n{opts.run}: n_train={n}, {T} test examples, {int(ho_keep.sum())} held-out masks, "
          f"{len(seeds)} seeds per validation training set, {round(100 * level)}% intervals\n")
    print("\n".join(markdown_table(pd.DataFrame(rows))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
