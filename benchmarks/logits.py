"""Does the softmax explain the loss's interactions? Main effects on each class's logit, mapped through the softmax.

The sixth session's bias-variance split (benchmarks/README.md, *Why the fits stop short*) found that no model of
main effects on the loss, nor on the margin mapped through softplus, reaches 80% of the noise ceiling on fortunes
at any budget, and that the pair models add nothing there without planted pairs. The test loss of a classifier
is log-softmax of C logits; if each logit is close to additive in the kept examples, the loss is a *known*
nonlinear function of C main-effects models, with interactions of every order that no sparse pair model
represents (the margin folds the C - 1 other logits into one logsumexp, so it is additive only where one wrong
class dominates). A store records losses and margins only, so this script retrains masks of a finished run with
the run's own config and seeds and keeps every test example's C logits (checked against the stored losses: the
engine is deterministic), then fits the run's estimators

* on the loss (as ``dataspex fit`` does),
* on each class's logit, centred over the classes (the softmax ignores a shift common to all), and maps the C
  predictions to the loss: logsumexp(logits) - logit(gold),

each on the first ``--m`` fit masks, and prints pooled held-out R^2 of the loss beside the run's loss ceiling, and
each logit's own R^2 beside the logits' ceiling (the replicate rows, retrained too).

    python benchmarks/logits.py --run /tmp/runs/fx_2048 --m 1024     # 1,472 retrains: about 5 min, 2-core box
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
from outputs import replicated_run, share_se  # noqa: E402


def retrain_logits(cfg, masks: np.ndarray, ids: list[int], log) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Losses (M, T), logits (M, T, C) and the test examples' gold classes (T,) of the masks ``masks`` (M, n) under
    ids ``ids`` (their seeds), trained by the batched engine as the run's train stage does. The logits are caught
    where the classification runner computes the margins from them (``runners.margins``): each pass evaluates its
    adapters chunk by chunk over the test examples, each chunk's rows adapter-major, and yields its masks in order
    right after, so the chunks caught since the last pass are that pass's logits."""
    import torch

    from dataspex.train import engine, runners
    from train_throughput import setup

    base, train, test = setup(cfg)
    n_test = len(test)
    caught: list[torch.Tensor] = []
    original = runners.margins

    def catching(logits, targets, task):
        caught.append(logits.detach().float().cpu())
        return original(logits, targets, task)

    runners.margins = catching
    losses, logits = {}, {}
    started = time.perf_counter()
    try:
        pass_logits, j = None, 0
        for mask_id, loss, *_ in engine.train_masks(base, cfg.lora, cfg.train, train, test, masks, ids):
            if caught:  # a new pass: (g * chunk, C) pieces, one per chunk of test examples
                g = sum(c.shape[0] for c in caught) // n_test
                pass_logits = torch.cat([c.view(g, -1, c.shape[1]) for c in caught], dim=1).double().numpy()
                caught.clear()
                j = 0
            losses[int(mask_id)], logits[int(mask_id)] = loss, pass_logits[j]
            j += 1
            if len(losses) % 128 == 0:
                log(f"{len(losses)} of {len(ids)} masks retrained, {time.perf_counter() - started:.0f} s")
    finally:
        runners.margins = original
    gold = test.targets.cpu().numpy().astype(np.int64)
    return np.stack([losses[i] for i in ids]), np.stack([logits[i] for i in ids]), gold


def loss_from_logits(logits: np.ndarray, gold: np.ndarray) -> np.ndarray:
    """Cross-entropy (M, T) from logits (M, T, C) and gold classes (T,)."""
    top = logits.max(axis=2, keepdims=True)
    lse = top[..., 0] + np.log(np.exp(logits - top).sum(axis=2))
    return lse - np.take_along_axis(logits, gold[None, :, None].repeat(len(logits), 0), axis=2)[..., 0]


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", required=True, help="a finished run with seed replicates (design.replicates)")
    parser.add_argument("--m", type=int, default=1024, help="fit masks: the first m of the run's")
    parser.add_argument("--estimators", default="linear,quadratic")
    parser.add_argument("--cache", default=None, help="where the retrained logits go (default <run>/logits.npz)")
    parser.add_argument("--bootstrap", type=int, default=500)
    opts = parser.parse_args(argv)

    from hydra.utils import instantiate

    from dataspex.core.metrics import pooled_r2
    from dataspex.fit.faithfulness import pooled_ceiling

    def log(msg):
        print(msg, file=sys.stderr, flush=True)

    run = replicated_run(opts.run)
    cfg, results, fit, ho = run["cfg"], run["results"], run["fit"], run["ho"]
    fit_rows = np.flatnonzero(fit)[: opts.m]
    ho_rows = np.flatnonzero(ho)
    rep_rows = np.array(sorted(set(run["replica"].values())), dtype=int)
    rows = np.concatenate([fit_rows, ho_rows, rep_rows])
    ids = [int(results.mask_ids[r]) for r in rows]
    cache = opts.cache or os.path.join(opts.run, "logits.npz")
    if os.path.exists(cache):
        with np.load(cache, allow_pickle=False) as z:
            cached_ids, logits, gold = z["mask_ids"], z["logits"], z["gold"]
        if not np.array_equal(cached_ids, ids):
            raise SystemExit(f"error: {cache} holds other masks; remove it or pass --cache")
        log(f"logits of {len(ids)} masks read from {cache}")
    else:
        log(f"retraining {len(ids)} masks ({len(fit_rows)} fit, {len(ho_rows)} held-out, {len(rep_rows)} "
            "replicates) to catch their logits")
        started = time.perf_counter()
        losses, logits, gold = retrain_logits(cfg, results.masks[rows], ids, log)
        gap = float(np.abs(losses - results.losses[rows]).max())
        log(f"retrained in {time.perf_counter() - started:.0f} s; max |loss - stored loss| = {gap:.1e}")
        if gap > 1e-4:
            raise SystemExit(f"error: the retrained losses differ from the run's by up to {gap:.1e}: not the same "
                             "training (another engine, thread count or code version?)")
        tmp = cache + ".tmp.npz"
        np.savez(tmp, mask_ids=np.array(ids), logits=logits, gold=gold)
        os.replace(tmp, cache)
    where = {int(r): k for k, r in enumerate(rows)}
    stored = results.losses[rows]
    check = float(np.abs(loss_from_logits(logits, gold) - stored).max())
    log(f"max |loss from the logits - stored loss| = {check:.1e}")
    centred = logits - logits.mean(axis=2, keepdims=True)
    C = logits.shape[2]
    f_idx = [where[r] for r in fit_rows]
    h_idx = [where[r] for r in ho_rows]
    rep_of = np.array([where[run["replica"][int(r)]] if int(r) in run["replica"] else -1 for r in ho_rows])
    X_fit, X_ho = results.masks[fit_rows], results.masks[ho_rows]
    loss_ho = stored[h_idx]
    ceil_loss = run["ceiling"]["loss"]["pooled"]
    paired = rep_of >= 0
    logit_ceiling = [pooled_ceiling(centred[h_idx][paired, :, c], centred[rep_of[paired], :, c]) for c in range(C)]
    log(f"loss ceiling {ceil_loss:.3f}; centred logits' ceilings " + ", ".join(f"{v:.3f}" for v in logit_ceiling))
    out_rows = []
    for name in opts.estimators.split(","):
        est_cfg = estimator_config(cfg, name)
        started = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            on_loss = instantiate(est_cfg).fit(X_fit, stored[f_idx]).predict(X_ho)
            per_class = np.stack([instantiate(est_cfg).fit(X_fit, centred[f_idx][:, :, c]).predict(X_ho)
                                  for c in range(C)], axis=2)
        via = loss_from_logits(per_class, gold)
        row = {"estimator": name, "m": len(fit_rows),
               "loss": pooled_r2(loss_ho, on_loss), "loss_via_logits": pooled_r2(loss_ho, via),
               "logits": [pooled_r2(centred[h_idx][:, :, c], per_class[:, :, c]) for c in range(C)]}
        row["loss_share"], row["via_share"] = row["loss"] / ceil_loss, row["loss_via_logits"] / ceil_loss
        if opts.bootstrap:
            row["loss_share_se"] = share_se(loss_ho, on_loss, rep_of, stored, opts.bootstrap)
            row["via_share_se"] = share_se(loss_ho, via, rep_of, stored, opts.bootstrap)
        row["seconds"] = round(time.perf_counter() - started, 1)
        out_rows.append(row)
        log(json.dumps(row, default=float))
    out = {"run": opts.run, "m": len(fit_rows), "loss_ceiling": ceil_loss, "logit_ceilings": logit_ceiling,
           "rows": out_rows}
    print("| estimator | m | loss R^2 (share of ceiling) | loss via logits (share) | centred logits' R^2 / ceiling |")
    print("|---|---:|---:|---:|---|")
    for r in out_rows:
        se = (lambda k: f" +- {100 * r[k]:.0f}" if k in r else "")
        print(f"| {r['estimator']} | {r['m']} | {r['loss']:.3f} ({r['loss_share']:.0%}{se('loss_share_se')}) | "
              f"{r['loss_via_logits']:.3f} ({r['via_share']:.0%}{se('via_share_se')}) | "
              + ", ".join(f"{a:.2f}/{b:.2f}" for a, b in zip(r["logits"], logit_ceiling)) + " |")
    return out


if __name__ == "__main__":
    main()
