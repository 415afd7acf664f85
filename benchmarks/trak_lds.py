"""TRAK vs the linear datamodel vs ProxySPEX: LDS and R^2 on a run's held-out masks.

TRAK costs one fine-tune on the full training set (per ensemble member) plus gradients; the fitted estimators
cost the run's retrains. Each is scored on the same held-out random masks, per test example and for the mean
test output (the columns ``dataspex fit`` models): LDS (Spearman across masks; TRAK's summed scores signed for
the output, no calibration) and R^2 (TRAK after a per-output affine calibration fitted on the fit masks).

    python benchmarks/trak_lds.py RUN_DIR                      # an existing run (e.g. made by `dataspex run`)
    python benchmarks/trak_lds.py --create DIR --m 192 --heldout 48   # make the demo run first (the budget)
    python benchmarks/trak_lds.py RUN_DIR --grid               # also a few TRAK settings (LDS on fit and held-out)

TRAK scores are computed with the run's config plus ``--set key=value`` overrides (e.g. ``--set
trak.n_models=3``) and saved into the run (``<run>/trak/``), as ``dataspex trak`` does.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def compose(run_dir: str, extra: list[str]):
    """The run's config: its creation overrides (overrides.json), then ``extra``."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from dataspex.cli import merge_overrides

    stored = []
    path = os.path.join(run_dir, "overrides.json")
    if os.path.exists(path):
        with open(path) as fh:
            stored = json.load(fh)
    overrides = merge_overrides(stored, [f"run_dir={run_dir}", "progress=false", *extra])
    with initialize_config_dir(version_base="1.3", config_dir=os.path.join(ROOT, "conf")):
        return hydra_compose(config_name="config", overrides=overrides)


def create_run(run_dir: str, m: int, heldout: int, extra: list[str]) -> None:
    exe = os.path.join(os.path.dirname(sys.executable), "dataspex")
    args = [exe, "run", f"run_dir={run_dir}", f"design.m={m}", f"design.heldout={heldout}", "progress=false", *extra]
    print("creating the run:", " ".join(args[1:]), flush=True)
    subprocess.run(args, check=True)


def _lds_r2(Y, pred, ranked=None):
    from dataspex.core.metrics import faithfulness_r2, lds

    return float(lds(Y, pred if ranked is None else ranked)), float(faithfulness_r2(Y, pred))


def grid(cfg, store, data, output: str) -> None:
    """LDS of a few TRAK settings on the fit masks (choose here) and the held-out masks (report here)."""
    from dataspex.core.models import load_base_model
    from dataspex.fit.trak import OUTPUT_SIGN, trak_predict
    from dataspex.fit.trak.gradients import compute_trak_scores

    design = store.load_design()
    results = store.load_results(design)
    Y = results.outputs(output)
    Y = np.column_stack([Y, Y.mean(axis=1)])
    fit = results.keep(design, "fit")
    ho = results.keep(design, "heldout")
    base = load_base_model(cfg.model, len(data.label_names) if data.label_names else None, cfg.train.seed)
    settings = [{}, {"seed": 1}, {"params": "trainable"}, {"proj_dim": 128}, {"proj_dim": 2048},
                {"lambda_reg": 1e-2}, {"lambda_reg": 1e-1}, {"lambda_reg": 10.0}, {"n_models": 3}]
    print(f"\nTRAK settings ({output}; LDS = Spearman over masks, mean over test examples and their mean; "
          "corr = Pearson correlation of the scores with the default setting's)")
    print("| setting | LDS fit masks | LDS held-out | corr | seconds |\n|---|---|---|---|---|")
    reference = None
    for change in settings:
        run_cfg = cfg.copy()
        for k, v in change.items():
            run_cfg.trak[k] = v
        started = time.perf_counter()
        scores = compute_trak_scores(run_cfg, data=data, base=base)
        reference = scores if reference is None else reference
        S = np.column_stack([scores, scores.mean(axis=1)])
        raw = OUTPUT_SIGN * trak_predict(S, results.masks)
        label = ", ".join(f"{k}={v}" for k, v in change.items()) or "default"
        corr = np.corrcoef(reference.ravel(), scores.ravel())[0, 1]
        print(f"| {label} | {_lds_r2(Y[fit], raw[fit])[0]:.3f} | {_lds_r2(Y[ho], raw[ho])[0]:.3f} | {corr:.2f} | "
              f"{time.perf_counter() - started:.0f} |", flush=True)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", nargs="?", help="an existing run directory with trained fit and held-out masks")
    parser.add_argument("--create", metavar="DIR", help="create a demo run here first (dataspex run)")
    parser.add_argument("--m", type=int, default=192, help="fit masks (retrains) of the created run")
    parser.add_argument("--heldout", type=int, default=48, help="held-out masks of the created run")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config overrides")
    parser.add_argument("--grid", action="store_true", help="also compare a few TRAK settings")
    parser.add_argument("--threads", type=int, default=None, help="torch threads")
    args = parser.parse_args(argv)
    if bool(args.run_dir) == bool(args.create):
        parser.error("give RUN_DIR or --create DIR")
    logging.basicConfig(level=logging.WARNING)
    run_dir = os.path.abspath(args.create or args.run_dir)
    if args.create:
        create_run(run_dir, args.m, args.heldout, args.set + ([f"train.threads={args.threads}"] if args.threads else []))

    import torch

    from dataspex.fit.trak import load_trak_scores, trak_faithfulness
    from dataspex.stages.rundir import open_run
    from dataspex.stages.trak import stage_trak

    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = compose(run_dir, args.set)
    store, data = open_run(cfg)
    started = time.perf_counter()
    stage_trak(cfg)  # computes (or reuses, with the same settings) <run>/trak/scores.npz
    scores, meta = load_trak_scores(store, with_meta=True)
    table = trak_faithfulness(store, scores)
    if not table["available"]:
        sys.exit(f"cannot score: {table['reason']}")
    with open(store.path("fit", "faithfulness.json")) as fh:
        fitted = json.load(fh)
    design = store.load_design()
    print(f"\nrun {run_dir}: n_train={data.n_train}, n_test={data.n_test}, "
          f"{table['n_fit_masks']} fit masks ({table['fit_role']}), {table['n_heldout_masks']} held-out masks")
    print(f"TRAK: {meta['settings']}, {meta['n_params']} gradient parameters, projector {meta['projector_used']}, "
          f"{meta['seconds']:.0f} s (this call: {time.perf_counter() - started:.0f} s)")
    for output, entry in table["outputs"].items():
        print(f"\n### held-out {output} (mean over {data.n_test} test examples and their mean)\n")
        print("| estimator | retrains | LDS | R^2 |\n|---|---|---|---|")
        for name, m in entry.items():
            retrains = (f"{meta['settings']['n_models']} full-data (R^2: + {table['n_fit_masks']} for calibration)"
                        if name == "trak" else str(fitted.get(name, {}).get("n_fit_masks", "?")))
            lds_v = m["lds_mean_over_outputs"]
            print(f"| {name} | {retrains} | {'n/a' if lds_v is None else f'{lds_v:.3f}'} | "
                  f"{m['r2_mean_over_outputs']:.3f} |")
    print(f"\n(design: {design.meta.get('kind')}, {len(design)} masks; fit output: "
          f"{next(iter(fitted.values()), {}).get('output', '?')})")
    if args.grid:
        grid(cfg, store, data, "loss")


if __name__ == "__main__":
    main()
