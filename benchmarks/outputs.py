"""Which output to model, and how many retrains faithfulness needs: loss, margin, and the loss through the margin.

For a classifier the recorded margin is logit(gold) - logsumexp(other logits) = log p - log(1 - p), so the test
loss -log p is exactly softplus(-margin). A model of the margin therefore also predicts the loss, through a link
that saturates as the loss does. This script fits each estimator on the loss and on the margin at budgets of m
fit masks (the first m of the run's fit masks) and prints pooled held-out R^2 of

* the loss model against the loss, beside the run's loss noise ceiling (its seed replicates, ``design.replicates``);
* the margin model against the margin, beside the margin's ceiling;
* the margin model mapped to the loss (softplus(-prediction)) against the loss.

Each share of a ceiling comes with a bootstrap standard error (``--bootstrap``, :func:`share_se`): on the runs of
benchmarks/README.md (256 held-out masks, 128 of them with a seed replicate) it is 1-2 points.

    python benchmarks/realdata.py fortunes --n-train 256 --harmful 4 --redundant 4 --out /tmp/real/f256p
    dataspex design data=files data.train_file=/tmp/real/f256p/train.csv data.test_file=/tmp/real/f256p/test.csv \\
        design.m=4096 design.heldout=256 design.replicates=128 run_dir=/tmp/runs/f256p_4096
    dataspex train run_dir=/tmp/runs/f256p_4096
    python benchmarks/outputs.py --run /tmp/runs/f256p_4096 --budgets 256,512,1024,2048,4096
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from budget import estimator_config  # noqa: E402


def predictions(estimator_cfg, X_fit, loss_fit, margin_fit, X_ho) -> tuple[np.ndarray, np.ndarray]:
    """Held-out predictions (M, T) of one estimator (a Hydra config with ``_target_``) fitted on the loss and, apart,
    on the margin. Arrays: masks (m, n), outputs (m, T)."""
    from hydra.utils import instantiate

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        on_loss = instantiate(estimator_cfg).fit(X_fit, loss_fit).predict(X_ho)
        on_margin = instantiate(estimator_cfg).fit(X_fit, margin_fit).predict(X_ho)
    return on_loss, on_margin


def r2s(on_loss, on_margin, loss_ho, margin_ho) -> dict:
    """Pooled held-out R^2 of the loss model (``loss``), the margin model (``margin``), and the margin model mapped
    to the loss (``loss_via_margin``), from :func:`predictions`."""
    from dataspex.core.metrics import pooled_r2

    return {"loss": pooled_r2(loss_ho, on_loss), "margin": pooled_r2(margin_ho, on_margin),
            "loss_via_margin": pooled_r2(loss_ho, np.logaddexp(0.0, -on_margin))}


def scores(estimator_cfg, X_fit, loss_fit, margin_fit, X_ho, loss_ho, margin_ho) -> dict:
    """:func:`r2s` of one estimator fitted on the first four arrays and scored on the last three."""
    return r2s(*predictions(estimator_cfg, X_fit, loss_fit, margin_fit, X_ho), loss_ho, margin_ho)


def share_se(Y_ho: np.ndarray, predicted: np.ndarray, replicate_of: np.ndarray, Y_rep: np.ndarray,
             n_boot: int = 1000, seed: int = 0) -> float:
    """Bootstrap standard error of the share of the noise ceiling, pooled R^2 / pooled ceiling.

    Y_ho, predicted: (M, T) held-out outputs and a model's predictions of them; replicate_of: (M,) for each held-out
    mask the row of ``Y_rep`` (R, T) that retrains it under another seed, -1 for a mask without one. One resample
    draws M held-out masks with replacement and scores both the R^2 and the ceiling on what it drew (the ceiling on
    the drawn masks that have a replicate), so the two share their masks' luck as they do in the measurement. With
    128 replicates it is 1-2 points of share (benchmarks/README)."""
    from dataspex.core.metrics import pooled_r2
    from dataspex.fit.faithfulness import pooled_ceiling

    rng = np.random.default_rng(seed)
    has = np.flatnonzero(replicate_of >= 0)
    if len(has) < 8:
        raise ValueError(f"{len(has)} held-out masks have a seed replicate; 8 or more needed")
    shares = []
    for _ in range(n_boot):
        drawn = rng.integers(0, len(Y_ho), len(Y_ho))
        paired = drawn[replicate_of[drawn] >= 0]
        shares.append(pooled_r2(Y_ho[drawn], predicted[drawn])
                      / pooled_ceiling(Y_ho[paired], Y_rep[replicate_of[paired]]))
    return float(np.std(shares, ddof=1))


def replicated_run(run_dir: str) -> dict:
    """A finished run with seed replicates: keys cfg, design, results, fit and ho (row masks of the fit and held-out
    retrains), ceiling ({"loss": ..., "margin": ...}, :func:`dataspex.fit.faithfulness.noise_ceiling`), replica
    (held-out row -> its replicate's row) and replicate_of ((M,) per held-out mask its replicate's row, -1 for
    none). Raises DataspexError when the run has no loss ceiling."""
    from omegaconf import OmegaConf

    from dataspex.core.errors import DataspexError
    from dataspex.design.replicate import finished_replicate_rows
    from dataspex.fit.faithfulness import noise_ceiling
    from dataspex.store import RunStore

    store = RunStore(run_dir)
    design = store.load_design()
    results = store.load_results(design)
    ho = results.keep(design, "heldout")
    ceiling = {o: noise_ceiling(design, results, o) for o in ("loss", "margin")}
    if ceiling["loss"]["pooled"] is None:
        raise DataspexError(f"no noise ceiling: {ceiling['loss']['why']}")
    replica = dict(finished_replicate_rows(design, results.mask_ids))
    return {"cfg": OmegaConf.load(os.path.join(run_dir, "config.yaml")), "design": design, "results": results,
            "fit": results.keep(design, "fit"), "ho": ho, "ceiling": ceiling, "replica": replica,
            "replicate_of": np.array([replica.get(int(r), -1) for r in np.flatnonzero(ho)])}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", required=True)
    parser.add_argument("--budgets", default="256,512,1024", help="fit masks per refit, comma-separated")
    parser.add_argument("--estimators", default="linear,quadratic",
                        help="comma-separated: the run's or conf/estimator/<name>.yaml, name:key=value for parameters")
    parser.add_argument("--bootstrap", type=int, default=1000,
                        help="resamples for the standard error of each share of the ceiling (0: none)")
    opts = parser.parse_args(argv)

    from dataspex.fit.faithfulness import ceiling_se, pooled_ceiling

    run = replicated_run(opts.run)
    cfg, design, results, fit, ho = run["cfg"], run["design"], run["results"], run["fit"], run["ho"]
    ceiling, replica, replicate_of = run["ceiling"], run["replica"], run["replicate_of"]
    X = results.masks
    loss, margin = results.losses, results.margins  # the recorded margin, not the modelled (negated) one
    gap = float(np.abs(np.logaddexp(0.0, -margin) - loss).max())
    print(f"{opts.run}: {int(fit.sum())} fit, {int(ho.sum())} held-out masks, n_train={X.shape[1]}, "
          f"{loss.shape[1]} test examples; max |softplus(-margin) - loss| = {gap:.1e}; ceilings (from "
          f"{ceiling['loss']['n_masks']} seed replicates, +- bootstrap SE): loss {ceiling['loss']['pooled']:.3f} +- "
          f"{ceiling['loss']['pooled_se']:.3f}, margin {ceiling['margin']['pooled']:.3f} +- "
          f"{ceiling['margin']['pooled_se']:.3f}", file=sys.stderr)
    # What the default design (design.replicates=16) would have said of the same loss ceiling: its first 16 pairs.
    first = list(replica.items())[:16]
    a, b = loss[[x for x, _ in first]], loss[[y for _, y in first]]
    print(f"loss ceiling from the first 16 replicates only (the default design.replicates): "
          f"{pooled_ceiling(a, b):.3f} +- {ceiling_se(a, b):.3f}", file=sys.stderr)
    # How good the retrained models are, whatever their attributability: over the held-out masks (half-size
    # training sets at p = 0.5), the mean test loss and the accuracy (margin > 0: gold logit above every other).
    quality = {"heldout_mean_loss": float(loss[ho].mean()), "heldout_accuracy": float((margin[ho] > 0).mean())}
    print(f"held-out retrains: mean test loss {quality['heldout_mean_loss']:.3f}, accuracy "
          f"{quality['heldout_accuracy']:.3f}", file=sys.stderr)
    rows = []
    for m in (int(b) for b in opts.budgets.split(",") if b):
        if m > fit.sum():
            print(f"m={m}: the run has only {int(fit.sum())} fit masks", file=sys.stderr)
            continue
        for name in opts.estimators.split(","):
            est_cfg = estimator_config(cfg, name)
            started = time.perf_counter()
            on_loss, on_margin = predictions(est_cfg, X[fit][:m], loss[fit][:m], margin[fit][:m], X[ho])
            row = {"m": m, "estimator": name, **r2s(on_loss, on_margin, loss[ho], margin[ho])}
            row["loss_share"] = row["loss"] / ceiling["loss"]["pooled"]
            row["margin_share"] = row["margin"] / ceiling["margin"]["pooled"]
            row["via_share"] = row["loss_via_margin"] / ceiling["loss"]["pooled"]
            if opts.bootstrap:
                row["loss_share_se"] = share_se(loss[ho], on_loss, replicate_of, loss, opts.bootstrap)
                row["margin_share_se"] = share_se(margin[ho], on_margin, replicate_of, margin, opts.bootstrap)
            row["seconds"] = round(time.perf_counter() - started, 1)
            rows.append(row)
            print(" ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()),
                  file=sys.stderr, flush=True)
    out = {"run": opts.run, "ceiling": ceiling, "max_link_gap": gap, **quality, "rows": rows}
    with open(os.path.join(opts.run, "outputs_study.json"), "w") as fh:
        json.dump(out, fh, indent=1, default=float)
    print("| m | estimator | loss R^2 (share of ceiling" + (" +- SE" if opts.bootstrap else "") +
          ") | margin R^2 (share) | loss via margin (share) |")
    print("|---:|---|---:|---:|---:|")

    def share(r, key):
        se = r.get(f"{key}_se")
        return f"{r[key]:.0%}" + ("" if se is None else f" +- {100 * se:.0f}")
    for r in rows:
        print(f"| {r['m']} | {r['estimator']} | {r['loss']:.3f} ({share(r, 'loss_share')}) | {r['margin']:.3f} "
              f"({share(r, 'margin_share')}) | {r['loss_via_margin']:.3f} ({r['via_share']:.0%}) |")
    return out


if __name__ == "__main__":
    main()
