"""Why a fit stops short of the noise ceiling: its estimation variance against its bias, from disjoint blocks.

A retrained output is y = g(mask) + e, with e the seed noise. A model f fitted on m other masks misses the held-out
y by E(y - f)^2 = E(g - E f)^2 + Var(f) + Var(e) (f does not see the held-out masks' noise), so in units of the
pooled held-out variance V its R^2 is

    R^2 = ceiling - bias - variance,    ceiling = 1 - Var(e) / V,  bias = E(g - E f)^2 / V,  variance = Var(f) / V.

The variance is what more retrains of the same kind buy back (it falls about as 1 / m); the bias is what the model
misses at that budget however its m masks fall (its shrinkage and which pair terms it kept at m, and what no model
of its class represents). Both are measured without a model of g: fit the estimator on K disjoint blocks of m fit
masks; the spread of the K held-out predictions around their mean, sum_k (f_k - mean f)^2 / (K - 1), estimates
Var(f) without bias, and the bias is the rest of the gap, ceiling - mean R^2 - variance (so it carries the
ceiling's error). Exactly, the mean of the K fits scores R^2 = mean R^2 + (K - 1) / K * variance (printed as a
check), and R^2 without variance = ceiling - bias = mean R^2 + variance is what the mean of infinitely many such
fits would reach at this budget. For an estimator that records its screened pairs (the quadratic model) the last
column is the share of the ceiling those pairs hold (:func:`dataspex.fit.faithfulness.pair_energy`, the mean over
the blocks' screens, on every random mask of the run): what `dataspex plan` adds to the main-effects limit as the
model's reach.

    python benchmarks/bias_variance.py --run /tmp/runs/f256u_4096 --budgets 256,512,1024,2048 --blocks 4
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


class ols:
    """Main effects and an intercept by unpenalised least squares
    (:func:`dataspex.fit.faithfulness.least_squares_main_effects`), fitted on masks (m, n) and outputs (m, T): its
    ``bias`` (:func:`dataspex.fit.faithfulness.gap_split`) is what no main-effects model represents, at any budget,
    and its ``variance`` all the cost of estimating it."""

    def __init__(self, masks: np.ndarray, outputs: np.ndarray):
        from dataspex.fit.faithfulness import least_squares_main_effects

        self.coef_ = least_squares_main_effects(masks, outputs)

    def predict(self, masks: np.ndarray) -> np.ndarray:
        return self.coef_[0] + masks.astype(np.float64) @ self.coef_[1:]


def bootstrap_se(Y_ho, predictions, replicate_of, Y_rep, n_boot: int = 500, seed: int = 0) -> dict:
    """Bootstrap standard errors of the ``variance`` and ``bias`` of :func:`dataspex.fit.faithfulness.gap_split` as
    shares of the ceiling: one resample draws the M held-out masks with replacement and scores the ceiling on the
    drawn masks that have a seed replicate (``replicate_of``: (M,) row of ``Y_rep`` or -1), as benchmarks/outputs.py's
    share_se does."""
    from dataspex.fit.faithfulness import gap_split, pooled_ceiling

    rng = np.random.default_rng(seed)
    draws = {"variance": [], "bias": []}
    for _ in range(n_boot):
        drawn = rng.integers(0, len(Y_ho), len(Y_ho))
        paired = drawn[replicate_of[drawn] >= 0]
        c = pooled_ceiling(Y_ho[paired], Y_rep[replicate_of[paired]])
        d = gap_split(Y_ho[drawn], predictions[:, drawn], c)
        draws["variance"].append(d["variance"] / c)
        draws["bias"].append(d["bias"] / c)
    return {k: float(np.std(v, ddof=1)) for k, v in draws.items()}


def limit_parts(run_dir: str) -> list:
    """:func:`dataspex.fit.faithfulness.main_effects_limit` (on the outputs `dataspex fit` models) from each disjoint
    part of 4n fit masks, the fewest it accepts, beside the limit from all of the run's fit masks: how far
    a small run's limit lands from a large one's, in units of the small run's own standard error."""
    from dataspex.fit.faithfulness import fit_outputs, main_effects_limit
    from outputs import replicated_run

    run = replicated_run(run_dir)
    results, fit, ho = run["results"], run["fit"], run["ho"]
    Y = fit_outputs(results, "loss")
    X_fit, Y_fit = results.masks[fit], Y[fit]
    part = 4 * X_fit.shape[1]
    full = main_effects_limit(X_fit, Y_fit, results.masks[ho], Y[ho])
    print(f"{run_dir}: limit from all {len(X_fit)} fit masks {full['r2']:.3f} +- {full['r2_se']:.3f}")
    rows = []
    for k in range(len(X_fit) // part):
        got = main_effects_limit(X_fit[k * part:(k + 1) * part], Y_fit[k * part:(k + 1) * part], results.masks[ho],
                                 Y[ho])
        rows.append(got)
        print(f"  part {k} ({part} masks): {got['r2']:.3f} +- {got['r2_se']:.3f}; off by "
              f"{got['r2'] - full['r2']:+.3f} = {abs(got['r2'] - full['r2']) / got['r2_se']:.2f} of its SE")
    return rows


def main(argv=None) -> list:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", required=True, help="a finished run with seed replicates (design.replicates)")
    parser.add_argument("--budgets", default="256,512,1024", help="fit masks per block, comma-separated")
    parser.add_argument("--blocks", type=int, default=4, help="disjoint blocks per budget, at most (2 or more)")
    parser.add_argument("--estimators", default="linear,quadratic,ols",
                        help="budget.estimator_config specs, or ols (main effects by unpenalised least squares); "
                        "NAME@margin fits the margin and predicts the loss as softplus(-margin)")
    parser.add_argument("--bootstrap", type=int, default=500, help="resamples for the standard errors (0: none)")
    parser.add_argument("--limit-parts", action="store_true",
                        help="instead: the product's main-effects limit from each disjoint part of 4n fit "
                        "masks (the fewest it accepts) against the limit from all of them")
    opts = parser.parse_args(argv)
    if opts.limit_parts:
        return limit_parts(opts.run)
    for spec in opts.estimators.split(","):
        if spec.partition("@")[2] not in ("", "margin"):
            raise SystemExit(f"error: {spec!r}: the only output after @ is margin")

    from hydra.utils import instantiate

    from budget import estimator_config
    from dataspex.fit.faithfulness import gap_split, pair_energy
    from outputs import replicated_run

    run = replicated_run(opts.run)
    cfg, results, fit, ho, replicate_of = run["cfg"], run["results"], run["fit"], run["ho"], run["replicate_of"]
    ceiling = run["ceiling"]["loss"]
    C = ceiling["pooled"]
    X, loss = results.masks, results.losses
    X_fit, Y_fit, X_ho, Y_ho = X[fit], loss[fit], X[ho], loss[ho]
    random_rows = fit | ho  # every independent random mask (a replicate repeats a held-out one)
    print(f"{opts.run}: {len(X_fit)} fit masks, {len(X_ho)} held out, n_train={X.shape[1]}, loss ceiling "
          f"{C:.3f} +- {ceiling['pooled_se']:.3f}", file=sys.stderr)
    rows = []
    for m in (int(b) for b in opts.budgets.split(",") if b):
        K = min(opts.blocks, len(X_fit) // m)
        if K < 2:
            print(f"m={m}: {len(X_fit)} fit masks make {K} block(s) of {m}; skipped", file=sys.stderr)
            continue
        for spec in opts.estimators.split(","):
            name, _, via = spec.partition("@")
            if name == "ols" and m < 2 * (X.shape[1] + 1):
                print(f"m={m}: ols needs 2 (n_train + 1) = {2 * (X.shape[1] + 1)} masks or more; skipped",
                      file=sys.stderr)
                continue
            started = time.perf_counter()
            fitter = ols if name == "ols" else lambda Xb, Yb: instantiate(estimator_config(cfg, name)).fit(Xb, Yb)
            target = results.margins[fit] if via else Y_fit
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                fits = [fitter(X_fit[k * m:(k + 1) * m], target[k * m:(k + 1) * m]) for k in range(K)]
            predictions = np.stack([f.predict(X_ho) for f in fits])
            summaries = [getattr(f, "fit_summary", dict)() for f in fits]  # ols has none
            screens = [summary["screen"] for summary in summaries if "screen" in summary]
            if via:  # the recorded margin is log p - log(1 - p) of the gold class, so the loss is softplus(-margin)
                predictions = np.logaddexp(0.0, -predictions)
            d = gap_split(Y_ho, predictions, C)
            row = {"m": m, "estimator": spec, **d}
            if screens and not via:  # each block's screened pairs' share, on every random mask of the run
                row["screen_share"] = float(np.mean([
                    pair_energy(X[random_rows], loss[random_rows], sc["pairs"], sc["outputs"], float(cfg.design.p))
                    ["share"] for sc in screens]))
            if opts.bootstrap:
                row.update({f"{k}_se": v for k, v in
                            bootstrap_se(Y_ho, predictions, replicate_of, loss, opts.bootstrap).items()})
            row["seconds"] = round(time.perf_counter() - started, 1)
            rows.append(row)
            print(" ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()),
                  file=sys.stderr, flush=True)

    def share(r, key):
        se = r.get(f"{key}_se")
        return f"{r[key] / C:.0%}" + ("" if se is None else f" +- {100 * se:.0f}")
    print(f"ceiling {C:.3f}; every share is of the ceiling")
    print("| m | estimator | K | R^2 (share) | variance | bias | R^2 without variance | R^2 of the mean of K "
          "(check: mean + (K-1)/K variance) | screened pairs' share |")
    print("|---:|---|---:|---:|---:|---:|---:|---|---:|")
    for r in rows:
        check = r["r2"] + (r["K"] - 1) / r["K"] * r["variance"]
        screen = f"{r['screen_share'] / C:.0%}" if "screen_share" in r else ""
        print(f"| {r['m']} | {r['estimator']} | {r['K']} | {r['r2']:.3f} ({r['r2'] / C:.0%}) | {share(r, 'variance')} "
              f"| {share(r, 'bias')} | {r['r2_without_variance'] / C:.0%} | {r['r2_of_mean']:.3f} ({check:.3f}) | "
              f"{screen} |")
    return rows


if __name__ == "__main__":
    main()
