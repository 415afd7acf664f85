"""Scale benchmark: n training examples, m masks, T outputs; fit time and peak memory per estimator.

    python benchmarks/scale.py                              # n=10,000, m=20,000, T=1,000 (README "## Scale")
    python benchmarks/scale.py --n 2000 --m 4000 --T 200    # any size
    python benchmarks/scale.py --quick                      # CI-sized

Each estimator runs in its own child process (so peak RSS, from resource.getrusage, is its own):
the child regenerates the same data from the seed (masks uint8 (m, n): never a float64 (m, n)
array; T sparse functions as in benchmarks/estimators.py, SNR 10), fits, and scores faithfulness
R^2 (against the noise-free functions) on held-out uniformly random masks.

* LinearDatamodel: defaults (5-fold CV of the L1 penalty per output).
* ProxySPEX: feature_screen=64 (each output's booster sees its 64 most correlated examples),
  depth {3, 5}, trees {100, 200, 300} (prefixes scored for free), rate 0.1, 3-fold shared search
  on 2 outputs, 2 threads.
* SPEX: its own structured design with at most m masks (t = 3), defaults.

Peak RSS includes the data (masks, outputs, held-out masks) the child holds.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import numpy as np

ESTIMATORS = ("linear", "proxyspex", "spex")


def _rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # Linux: kB


def child(name: str, n: int, m: int, T: int, heldout: int, seed: int) -> dict:
    from dataspex.estimators import SPEX, LinearDatamodel, ProxySPEX, SpexDesign
    from dataspex.fit.estimators.synthetic import random_masks, sparse_functions
    from dataspex.core.metrics import faithfulness_r2

    t0 = time.perf_counter()
    rng = np.random.default_rng(seed)
    fn = sparse_functions(n, T, snr=10.0, random_state=seed)
    if name == "spex":
        design = SpexDesign(n, budget=m, max_degree=3, random_state=seed)
        X = design.masks()
        est = SPEX(design)
        config = f"SPEX(design: b={design.b}, C={design.n_groups}, P+1={design.n_delays})"
    else:
        X = random_masks(m, n, rng)
        if name == "linear":
            est = LinearDatamodel()
            config = "LinearDatamodel()"
        else:
            est = ProxySPEX(
                feature_screen=64, max_depth=(3, 5), n_estimators=(100, 200, 300), learning_rate=(0.1,),
                cv=3, n_search_outputs=2, n_jobs=2,
            )
            config = "ProxySPEX(feature_screen=64, depth (3,5), trees (100,200,300), rate 0.1, cv=3, n_jobs=2)"
    Y = fn.observe(X, rng)
    Xt = random_masks(heldout, n, np.random.default_rng(seed + 1))
    Yt = fn.evaluate(Xt)
    data_s = time.perf_counter() - t0
    rss_data = _rss_gb()
    t0 = time.perf_counter()
    est.fit(X, Y)
    fit_s = time.perf_counter() - t0
    rss_fit = _rss_gb()
    r2 = float(faithfulness_r2(Yt, est.result_.predict(Xt)))
    return dict(
        estimator=name, config=config, n=n, m=int(X.shape[0]), T=T, fit_s=fit_s, s_per_output=fit_s / T,
        peak_rss_gb=rss_fit, rss_before_fit_gb=rss_data, r2=r2, data_s=data_s, n_keys=est.result_.n_keys,
        masks_mb=X.nbytes / 1e6, masks_dtype=str(X.dtype),
    )


def main(argv=None, log=print) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--m", type=int, default=20_000)
    ap.add_argument("--T", type=int, default=1_000)
    ap.add_argument("--heldout", type=int, default=1_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--estimators", default=",".join(ESTIMATORS))
    ap.add_argument("--quick", action="store_true", help="n=300, m=1000, T=20")
    ap.add_argument("--json", help="append result rows to this JSON-lines file")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.quick:
        a.n, a.m, a.T, a.heldout = 300, 1000, 20, 500
    if a.child:
        print("RESULT " + json.dumps(child(a.child, a.n, a.m, a.T, a.heldout, a.seed)), flush=True)
        return []
    try:
        load = " ".join(f"{v:.1f}" for v in os.getloadavg())
    except OSError:  # pragma: no cover
        load = "n/a"
    log(f"# scale benchmark: n={a.n}, m={a.m}, T={a.T}, held-out {a.heldout}; {os.cpu_count()} CPUs; load {load}")
    rows = []
    for name in a.estimators.split(","):
        cmd = [sys.executable, os.path.abspath(__file__), "--child", name, "--n", str(a.n), "--m", str(a.m),
               "--T", str(a.T), "--heldout", str(a.heldout), "--seed", str(a.seed)]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
        if proc.returncode != 0 or not lines:
            log(f"  {name}: FAILED ({proc.returncode}) after {time.perf_counter() - t0:.0f} s\n{proc.stderr[-3000:]}")
            continue
        row = json.loads(lines[-1][len("RESULT "):])
        rows.append(row)
        log(f"  {name}: fit {row['fit_s']:.0f} s, peak RSS {row['peak_rss_gb']:.2f} GB, R2 {row['r2']:.3f}")
        if a.json:
            with open(a.json, "a") as fh:
                fh.write(json.dumps(row) + "\n")
    log("\n| estimator | masks (m x n, dtype) | fit time | s / output | peak RSS | RSS before fit | R^2 held-out |")
    log("|---|---|---|---|---|---|---|")
    for r in rows:
        log(f"| {r['config']} | {r['m']} x {r['n']}, {r['masks_dtype']} ({r['masks_mb']:.0f} MB) | {r['fit_s']:.0f} s "
            f"({r['fit_s'] / 60:.1f} min) | {r['s_per_output']:.3f} | {r['peak_rss_gb']:.2f} GB | "
            f"{r['rss_before_fit_gb']:.2f} GB | {r['r2']:.3f} |")
    return rows


if __name__ == "__main__":
    main(sys.argv[1:], log=lambda s: print(s, flush=True))
