"""Which output to model, and how many retrains faithfulness needs: loss, margin, and the loss through the margin.

For a classifier the recorded margin is logit(gold) - logsumexp(other logits) = log p - log(1 - p), so the test
loss -log p is exactly softplus(-margin). A model of the margin therefore also predicts the loss, through a link
that saturates as the loss does. This script fits each estimator on the loss and on the margin at budgets of m
fit masks (the first m of the run's fit masks) and prints pooled held-out R^2 of

* the loss model against the loss, beside the run's loss noise ceiling (its seed replicates, ``design.replicates``);
* the margin model against the margin, beside the margin's ceiling;
* the margin model mapped to the loss (softplus(-prediction)) against the loss.

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


def scores(estimator_cfg, X_fit, loss_fit, margin_fit, X_ho, loss_ho, margin_ho) -> dict:
    """Pooled held-out R^2 of one estimator (a Hydra config with ``_target_``) fitted on the loss (``loss``), on
    the margin (``margin``), and of the margin model mapped to the loss (``loss_via_margin``). Arrays: masks
    (m, n), outputs (m, T)."""
    from hydra.utils import instantiate

    from dataspex.core.metrics import pooled_r2

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        on_loss = instantiate(estimator_cfg).fit(X_fit, loss_fit).predict(X_ho)
        on_margin = instantiate(estimator_cfg).fit(X_fit, margin_fit).predict(X_ho)
    return {"loss": pooled_r2(loss_ho, on_loss), "margin": pooled_r2(margin_ho, on_margin),
            "loss_via_margin": pooled_r2(loss_ho, np.logaddexp(0.0, -on_margin))}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", required=True)
    parser.add_argument("--budgets", default="256,512,1024", help="fit masks per refit, comma-separated")
    parser.add_argument("--estimators", default="linear,quadratic",
                        help="comma-separated: the run's or conf/estimator/<name>.yaml, name:key=value for parameters")
    opts = parser.parse_args(argv)

    from omegaconf import OmegaConf

    from dataspex.core.errors import DataspexError
    from dataspex.fit.faithfulness import noise_ceiling
    from dataspex.store import RunStore

    cfg = OmegaConf.load(os.path.join(opts.run, "config.yaml"))
    store = RunStore(opts.run)
    design = store.load_design()
    results = store.load_results(design)
    fit, ho = results.keep(design, "fit"), results.keep(design, "heldout")
    X = results.masks
    loss, margin = results.losses, results.margins  # the recorded margin, not the modelled (negated) one
    gap = float(np.abs(np.logaddexp(0.0, -margin) - loss).max())
    ceiling = {o: noise_ceiling(design, results, o) for o in ("loss", "margin")}
    if ceiling["loss"]["pooled"] is None:
        raise DataspexError(f"no noise ceiling: {ceiling['loss']['why']}")
    print(f"{opts.run}: {int(fit.sum())} fit, {int(ho.sum())} held-out masks, n_train={X.shape[1]}, "
          f"{loss.shape[1]} test examples; max |softplus(-margin) - loss| = {gap:.1e}; ceilings (from "
          f"{ceiling['loss']['n_masks']} seed replicates): loss {ceiling['loss']['pooled']:.3f}, margin "
          f"{ceiling['margin']['pooled']:.3f}", file=sys.stderr)
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
            row = {"m": m, "estimator": name, **scores(est_cfg, X[fit][:m], loss[fit][:m], margin[fit][:m],
                                                       X[ho], loss[ho], margin[ho])}
            row["loss_share"] = row["loss"] / ceiling["loss"]["pooled"]
            row["margin_share"] = row["margin"] / ceiling["margin"]["pooled"]
            row["via_share"] = row["loss_via_margin"] / ceiling["loss"]["pooled"]
            row["seconds"] = round(time.perf_counter() - started, 1)
            rows.append(row)
            print(" ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()),
                  file=sys.stderr, flush=True)
    out = {"run": opts.run, "ceiling": ceiling, "max_link_gap": gap, **quality, "rows": rows}
    with open(os.path.join(opts.run, "outputs_study.json"), "w") as fh:
        json.dump(out, fh, indent=1, default=float)
    print("| m | estimator | loss R^2 (share of ceiling) | margin R^2 (share) | loss via margin (share) |")
    print("|---:|---|---:|---:|---:|")
    for r in rows:
        print(f"| {r['m']} | {r['estimator']} | {r['loss']:.3f} ({r['loss_share']:.0%}) | {r['margin']:.3f} "
              f"({r['margin_share']:.0%}) | {r['loss_via_margin']:.3f} ({r['via_share']:.0%}) |")
    return out


if __name__ == "__main__":
    main()
