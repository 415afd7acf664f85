"""Does a validated pair's interaction depend on how much of the training set is kept around it?

`dataspex validate` measures a pair's interaction at the full training set: the second difference
loss(both kept) - loss(i dropped) - loss(j dropped) + loss(both dropped) of its test example, over fresh seeds. The
models that chose the pair were fitted on random masks that keep each example with probability p (0.5 by
default), so what they estimate is that second difference averaged over random half-size training sets. This
script measures the same second difference on the random masks themselves, as a difference of four cell means
(the masks that keep both, only i, only j, neither; no model), at each run's p, beside the model's prediction and
the full-set value `validate` measured. Runs of the same data at other kept fractions (``--other``, for example a
run with design.p=0.9) show how the interaction moves between half-size sets and the full set.

The standard error of a difference of cell means is sqrt(sum over cells of var / count): at p = 0.9 the
"neither" cell holds 1% of the masks, so its error dominates there.

    python benchmarks/pair_context.py --run /tmp/runs/wx_2048 --other /tmp/runs/wx_p09
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from budget import run_splits  # noqa: E402

def second_difference(masks: np.ndarray, y: np.ndarray, i: int, j: int) -> dict:
    """The cell-mean second difference of outputs ``y`` (M,) over 0/1 ``masks`` (M, n) for examples i and j, with
    its standard error: the held-out pair test's contrast with each cell's own variance
    (:func:`dataspex.fit.significance._welch`, here on the outputs themselves rather than on residuals).
    {"value", "se", "counts" (masks per cell: both, i only, j only, neither)}; value and se None where a cell holds
    fewer than two masks, or every cell is constant."""
    from dataspex.fit.significance import _cells, _welch

    cells = _cells(masks, i, j)  # neither, only j, only i, both
    contrast = _welch(np.asarray(y, dtype=np.float64), cells)
    counts = [int(c.sum()) for c in reversed(cells)]
    if contrast is None:
        return {"value": None, "se": None, "counts": counts}
    return {"value": contrast[0], "se": contrast[1], "counts": counts}


def random_masks(run_dir: str) -> dict:
    """The run's independent random masks (fit and held out; replicates repeat held-out masks) and their outputs
    (every test example's loss), with the design's kept fraction and the hash of its data: {"masks", "Y", "p",
    "data"}."""
    run = run_splits(run_dir)
    return {"masks": np.vstack([run["X_fit"], run["X_ho"]]), "Y": np.vstack([run["Y_fit"], run["Y_ho"]]),
            "p": float(run["design"].meta.get("p", 0.5)), "data": run["store"].stored_fingerprint().get("data")}


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", required=True, help="a run with `dataspex validate` done")
    parser.add_argument("--other", nargs="*", default=[], help="runs of the same data at other kept fractions")
    opts = parser.parse_args(argv)

    from dataspex.store import RunStore
    from dataspex.validate.artifacts import load_validation

    table, _ = load_validation(RunStore(opts.run))
    if table is None:
        raise SystemExit(f"error: {opts.run}: no validation (run `dataspex validate run_dir={opts.run}` first)")
    runs = [random_masks(opts.run)] + [random_masks(r) for r in opts.other]
    if len({r["data"] for r in runs}) != 1:
        raise SystemExit("error: the runs were made on different data (their fingerprints' data hashes differ): "
                         + ", ".join([opts.run, *opts.other]))
    rows = []
    heads = " | ".join(f"at p = {r['p']:g} ({len(r['masks'])} masks)" for r in runs)
    print(f"| kind | pair | test | predicted | {heads} | full set (`validate`) | verdict |")
    print("|---|---|---:|---:|" + "---:|" * len(runs) + "---:|---|")
    for v in table.itertuples():
        got = [second_difference(r["masks"], r["Y"][:, int(v.test)], int(v.i), int(v.j)) for r in runs]
        rows.append({"kind": v.kind, "i": int(v.i), "j": int(v.j), "test": int(v.test), "predicted": v.predicted,
                     "realised": v.realised, "ci": [v.ci_low, v.ci_high], "verdict": v.verdict,
                     "by_p": {r["p"]: g for r, g in zip(runs, got)}})
        cells = " | ".join("n/a" if g["value"] is None else f"{g['value']:+.3f} +- {g['se']:.3f}" for g in got)
        print(f"| {v.kind} | ({v.i}, {v.j}) | {v.test} | {v.predicted:+.3f} | {cells} | {v.realised:+.3f} "
              f"[{v.ci_low:+.3f}, {v.ci_high:+.3f}] | {v.verdict} |")
    print()
    for r in runs:
        print(f"at p = {r['p']:g}: {summary(rows, r['p'])}")
    return rows


def summary(rows: list[dict], p: float) -> str:
    """How the pairs' second differences at kept fraction ``p`` compare with the full-set values: the mean absolute
    difference, and the median ratio full set / at p (its magnitude kept)."""
    got = [(r["by_p"][p]["value"], r["realised"]) for r in rows if r["by_p"][p]["value"] is not None]
    if not got:
        return "no pair with every cell filled"
    at, full = np.array(got).T
    predicted = np.array([r["predicted"] for r in rows if r["by_p"][p]["value"] is not None])
    return (f"mean |at p - full set| {np.abs(at - full).mean():.3f} over {len(got)} pairs; median full set / at p "
            f"{np.median(full / at):.2f}; the model's prediction against the cell means at p: mean |difference| "
            f"{np.abs(predicted - at).mean():.3f}")


if __name__ == "__main__":
    main()
