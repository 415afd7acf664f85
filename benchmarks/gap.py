"""Where the rest of the ceiling goes: per test example, how much of its mask-determined variance the default
quadratic model leaves unexplained, and whether any other learner explains it.

For a run with seed replicates (``design.replicates``) the script takes, per test example t, the replicate
correlation rho_t (the share of its held-out variance the mask determines) and the quadratic model's held-out R^2
at each budget, and lists the test examples with the largest unexplained mask-determined variance,
var_t * (rho_t - R^2_t). For those it fits, on the largest budget, other model classes on the same masks:

* ``ridge``: all main effects, L2 (dense small effects);
* ``diffusion``: kernel ridge with k(x, x') = exp(-gamma * Hamming(x, x')) (every interaction order, decaying);
* ``gbm``: LightGBM with early stopping (trees: thresholds and high-order interactions);
* ``link``: the quadratic model's prediction through a cubic polynomial fitted on the fit masks (a nonlinear
  link of the fitted index, as a saturating loss would need).

If none of them comes close to rho_t the missing part is not a denser, deeper or monotone-transformed version
of what the quadratic model has, and more budget buys it slowly (as the R^2 columns show).

    python benchmarks/gap.py --run /tmp/runs/f256p_4096 --budgets 1024,4096 --top 6
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from budget import markdown_table  # noqa: E402


def diffusion_kernel(A: np.ndarray, B: np.ndarray, gamma: float) -> np.ndarray:
    """exp(-gamma * Hamming distance) between the 0/1 rows of A (a, n) and B (b, n): (a, b)."""
    A, B = A.astype(np.float64), B.astype(np.float64)
    return np.exp(-gamma * (A @ (1.0 - B).T + (1.0 - A) @ B.T))


def alternatives(X: np.ndarray, y: np.ndarray, Xh: np.ndarray, quad_fit: np.ndarray, quad_ho: np.ndarray,
                 seed: int = 0) -> dict:
    """Held-out predictions of the other model classes (module docstring) for one output: {name: (M,)}.
    Hyperparameters by a fixed 20% validation split of the fit masks."""
    import lightgbm as lgb
    from sklearn.kernel_ridge import KernelRidge
    from sklearn.linear_model import RidgeCV

    rng = np.random.default_rng(seed)
    order = rng.permutation(len(X))
    va, tr = order[: len(X) // 5], order[len(X) // 5:]
    out = {"ridge": RidgeCV(alphas=np.logspace(-1, 4, 20)).fit(X, y).predict(Xh)}
    best = None
    for gamma in (0.002, 0.005, 0.01, 0.02):
        for lam in (0.01, 0.1, 1.0):
            kr = KernelRidge(alpha=lam, kernel="precomputed").fit(diffusion_kernel(X[tr], X[tr], gamma),
                                                                  y[tr] - y[tr].mean())
            err = np.mean((kr.predict(diffusion_kernel(X[va], X[tr], gamma)) + y[tr].mean() - y[va]) ** 2)
            if best is None or err < best[0]:
                best = (err, gamma, lam)
    _, gamma, lam = best
    kr = KernelRidge(alpha=lam, kernel="precomputed").fit(diffusion_kernel(X, X, gamma), y - y.mean())
    out["diffusion"] = kr.predict(diffusion_kernel(Xh, X, gamma)) + y.mean()
    gbm = lgb.LGBMRegressor(n_estimators=3000, learning_rate=0.02, max_depth=3, num_leaves=8, subsample=0.8,
                            subsample_freq=1, colsample_bytree=0.5, random_state=seed, verbose=-1)
    gbm.fit(X[tr], y[tr], eval_set=[(X[va], y[va])], callbacks=[lgb.early_stopping(100, verbose=False)])
    out["gbm"] = gbm.predict(Xh)
    out["link"] = np.polyval(np.polyfit(quad_fit, y, 3), quad_ho)
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", required=True, help="a finished run with seed replicates (design.replicates)")
    parser.add_argument("--budgets", default="1024,4096", help="fit masks per refit; alternatives at the largest")
    parser.add_argument("--top", type=int, default=6, help="test examples listed (largest unexplained variance)")
    parser.add_argument("--estimator", default="quadratic", help="budget.estimator_config spec of the model")
    opts = parser.parse_args(argv)

    from hydra.utils import instantiate

    from budget import estimator_config, run_splits
    from dataspex.core.metrics import faithfulness_r2, pooled_r2
    from dataspex.design.replicate import finished_replicate_rows

    run = run_splits(opts.run)
    cfg, results, design, T = run["cfg"], run["results"], run["design"], run["T"]
    X_fit, Y_fit, X_ho, Y_ho = run["X_fit"], run["Y_fit"][:, :T], run["X_ho"], run["Y_ho"][:, :T]
    done = finished_replicate_rows(design, results.mask_ids)
    if len(done) < 16:
        raise SystemExit(f"error: {opts.run} has {len(done)} finished seed replicates; 16 or more needed")
    Y = results.outputs("loss")
    a, b = Y[[x for x, _ in done]], Y[[y for _, y in done]]
    rho = ((a - a.mean(0)) * (b - b.mean(0))).sum(0) / ((a - a.mean(0)) ** 2).sum(0)
    var = Y_ho.var(0)
    budgets = [int(m) for m in opts.budgets.split(",") if m]
    r2, fitted = {}, {}
    for m in budgets:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            est = instantiate(estimator_config(cfg, opts.estimator)).fit(X_fit[:m], Y_fit[:m])
        predicted = est.predict(X_ho)
        r2[m] = faithfulness_r2(Y_ho, predicted, multioutput="raw_values")
        fitted[m] = est
        unexplained = var * np.maximum(rho - r2[m], 0.0)
        print(f"m={m}: pooled R^2 {pooled_r2(Y_ho, predicted):.3f}; "
              f"mask-determined variance left unexplained {unexplained.sum():.2f} of {(var * rho).sum():.2f} "
              f"(the {opts.top} largest test examples: {np.sort(unexplained)[::-1][:opts.top].sum():.2f})",
              file=sys.stderr)
    m = max(budgets)
    gap = var * (rho - r2[m])
    rows = []
    for t in np.argsort(-gap)[: opts.top]:
        row = {"test": int(t), "held-out var": float(var[t]), "rho": float(rho[t])}
        row.update({f"quadratic m={b}": float(r2[b][t]) for b in budgets})
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            alt = alternatives(X_fit[:m], Y_fit[:m, t], X_ho, fitted[m].predict(X_fit[:m])[:, t],
                               fitted[m].predict(X_ho)[:, t])
        row.update({f"{k} m={m}": float(faithfulness_r2(Y_ho[:, t], p)) for k, p in alt.items()})
        rows.append(row)
        print(f"test {t}: {row}", file=sys.stderr, flush=True)
    import pandas as pd

    print("\n".join(markdown_table(pd.DataFrame(rows))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
