"""ProxySPEX with its boosters spread over threads (n_jobs) against one thread, side by side on a run's masks.

Each output's booster, and each (output, fold, grid point) of the hyper-parameter search, is an independent
single-threaded LightGBM model, so ``n_jobs`` changes the time and never the result: this script fits both ways
on the same fit masks, alternating (--repeats times each), checks that the spectra are bit-identical, and
prints the ratio of the median times and the pooled held-out R^2 (the same for both by construction).

    python benchmarks/proxyspex_jobs.py --run /tmp/runs/f1024p --m 1024           # n = 1,024 planted fortunes
    python benchmarks/proxyspex_jobs.py --run /tmp/runs/recipe_f_base --m 1024    # n = 256

Run it alone: a ratio of thread counts means nothing while other jobs hold the cores.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings

import numpy as np


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", required=True)
    parser.add_argument("--m", type=int, default=None, help="the first m fit masks (default: all)")
    parser.add_argument("--jobs", default="auto", help="n_jobs to compare with 1: an int or auto")
    parser.add_argument("--repeats", type=int, default=1)
    opts = parser.parse_args(argv)

    from dataspex.core.metrics import pooled_r2
    from dataspex.estimators import ProxySPEX
    from dataspex.fit.solvers.blas import usable_cores
    from dataspex.store import RunStore

    store = RunStore(opts.run)
    design = store.load_design()
    results = store.load_results(design)
    fit, held = results.keep(design, "fit"), results.keep(design, "heldout")
    losses = results.outputs("loss")
    masks_fit, losses_fit = results.masks[fit][: opts.m], losses[fit][: opts.m]
    jobs = opts.jobs if opts.jobs == "auto" else int(opts.jobs)
    print(f"{opts.run}: m = {len(masks_fit)} fit masks, n_train = {masks_fit.shape[1]}, {losses.shape[1]} test "
          f"examples; n_jobs 1 against {jobs} ({usable_cores()} usable cores)", file=sys.stderr)

    times: dict = {1: [], jobs: []}
    fitted = {}
    for _ in range(opts.repeats):
        for n_jobs in (1, jobs):
            started = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                fitted[n_jobs] = ProxySPEX(n_jobs=n_jobs).fit(masks_fit, losses_fit)
            times[n_jobs].append(time.perf_counter() - started)
            print(f"n_jobs={n_jobs}: {times[n_jobs][-1]:.1f} s", file=sys.stderr, flush=True)
    one, many = fitted[1].result_, fitted[jobs].result_
    identical = one.keys == many.keys and np.array_equal(one.fourier, many.fourier)
    r2 = pooled_r2(losses[held], fitted[jobs].predict(results.masks[held])) if held.any() else float("nan")
    out = {"run": opts.run, "m": len(masks_fit), "n_train": int(masks_fit.shape[1]), "jobs": jobs,
           "cores": usable_cores(), "seconds_1": statistics.median(times[1]),
           "seconds_jobs": statistics.median(times[jobs]), "identical": identical, "heldout_r2_pooled": r2}
    out["speedup"] = out["seconds_1"] / out["seconds_jobs"]
    print(f"| run | n | m | n_jobs=1 (s) | n_jobs={jobs} (s) | ratio | identical | held-out pooled R^2 |")
    print("|---|---:|---:|---:|---:|---:|---|---:|")
    print(f"| {opts.run} | {out['n_train']} | {out['m']} | {out['seconds_1']:.1f} | {out['seconds_jobs']:.1f} | "
          f"{out['speedup']:.2f}x | {identical} | {r2:.3f} |")
    if not identical:
        raise SystemExit("n_jobs changed the result: threads must only change the time")
    return out


if __name__ == "__main__":
    main()
