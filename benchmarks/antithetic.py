"""Antithetic (foldover) fit masks against uniform random ones, at the same number of retrains.

A foldover design draws m/2 uniform masks and adds each one's complement. In the +-1 coding the estimators use,
every main-effect column is then exactly orthogonal to every even-order column (pairs, the intercept, and any
unmodelled even-order part of the response), so an unmodelled even-order part cannot leak into the main
effects. Whether that buys faithfulness on real retrains is what this script measures.

For each ``--seeds`` value it makes a run next to ``--base`` (``<base>_antithetic<seed>``): the base run's
data, recipe and model, ``m`` antithetic fit masks and no held-out masks, and trains it (``dataspex train``;
resumable, a finished run is reused). Every estimator is then fitted on the first ``m/2`` and all ``m`` masks of
each antithetic run and of each disjoint block of ``m`` of the base run's own (uniform) fit masks, and scored by
pooled held-out R^2 on the base run's held-out masks: the base blocks show how much R^2 varies between mask
draws of one kind.

    python benchmarks/antithetic.py --base /tmp/runs/f256p_4096 --m 1024 --seeds 11,12
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import warnings

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from budget import estimator_config, markdown_table, run_splits  # noqa: E402


def antithetic_masks(n_train: int, m: int, rng: np.random.Generator) -> np.ndarray:
    """(m, n_train) uint8: m/2 uniform masks (p = 0.5), each followed by its complement. m must be even."""
    if m % 2:
        raise SystemExit(f"error: --m {m} must be even (masks come in complementary pairs)")
    half = (rng.random((m // 2, n_train)) < 0.5).astype(np.uint8)
    return np.stack([half, 1 - half], axis=1).reshape(m, n_train)


def make_run(base: str, out: str, m: int, seed: int) -> None:
    """Design (the base run's data and recipe, m antithetic fit masks) and train ``out``."""
    from dataspex.design.base import Design
    from dataspex.store import RunStore

    if not os.path.exists(os.path.join(out, "design.npz")):
        overrides = [o for o in json.load(open(os.path.join(base, "overrides.json")))
                     if not o.lstrip("+").startswith(("design.", "run_dir="))]
        subprocess.run(["dataspex", "design", *overrides, f"design.m={m}", "design.heldout=0",
                        "design.replicates=0", f"design.seed={seed}", f"run_dir={out}"], check=True)
        store = RunStore(out)
        drawn = store.load_design()
        masks = antithetic_masks(drawn.n_units, m, np.random.default_rng(seed))
        store.save_design(Design(masks, drawn.mask_ids, drawn.roles, {**drawn.meta, "antithetic": True}))
    subprocess.run(["dataspex", "train", f"run_dir={out}"], check=True)


def fit_masks(run_dir: str) -> tuple[np.ndarray, np.ndarray]:
    """A run's fit masks and their outputs (loss: every test example, then the mean), in mask-id order."""
    run = run_splits(run_dir)
    order = np.argsort(run["results"].mask_ids[run["fit_keep"]], kind="stable")
    return run["X_fit"][order], run["Y_fit"][order]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", required=True, help="a finished run with held-out masks and >= m fit masks")
    parser.add_argument("--m", type=int, default=1024, help="fit masks per design")
    parser.add_argument("--seeds", default="11,12", help="one antithetic run per seed")
    parser.add_argument("--estimators", default="linear,quadratic")
    opts = parser.parse_args(argv)

    from hydra.utils import instantiate

    from dataspex.core.metrics import pooled_r2

    base = run_splits(opts.base)
    T, X_ho, Y_ho = base["T"], base["X_ho"], base["Y_ho"][:, : base["T"]]
    designs = [(f"uniform, base block {b}", base["X_fit"][b * opts.m:(b + 1) * opts.m],
                base["Y_fit"][b * opts.m:(b + 1) * opts.m]) for b in range(len(base["X_fit"]) // opts.m)]
    for seed in (int(s) for s in opts.seeds.split(",") if s):
        out = f"{opts.base.rstrip('/')}_antithetic{seed}"
        make_run(opts.base, out, opts.m, seed)
        designs.append((f"antithetic, seed {seed}", *fit_masks(out)))
    rows = []
    for name, X, Y in designs:
        for m in (opts.m // 2, opts.m):
            row = {"design": name, "m": m}
            for spec in opts.estimators.split(","):
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    est = instantiate(estimator_config(base["cfg"], spec)).fit(X[:m], Y[:m])
                row[spec] = pooled_r2(Y_ho, est.predict(X_ho)[:, :T])
            rows.append(row)
            print(row, file=sys.stderr, flush=True)
    import pandas as pd

    print("\n".join(markdown_table(pd.DataFrame(rows))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
