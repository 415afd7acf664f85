"""How many seeds `dataspex validate` needs: the interval widths and verdicts of a finished validation, recomputed
from its first r seed replicates for several r (no retraining: the replicates are already in the store).

For each validated pair, ``dataspex.validate.analyse`` is run again with ``replicates=r`` (it takes the first r
replicates of each training set), so the numbers at the run's own seed count equal its ``validation.csv``.
Printed per run: for each r, the range of the interaction intervals' half widths (nats), the predicted
interactions' range, and how many pairs are confirmed.

    python benchmarks/seed_widths.py --run /tmp/runs/w256u_m1024 --run /tmp/runs/f256u_m1024 --seeds 4 8 16

Results: a Markdown table on stdout and, with ``--out FILE``, the per-pair rows as JSON.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from dataspex.core.files import write_json
from dataspex.fit.artifacts import load_fitted
from dataspex.store import RunStore
from dataspex.validate import analyse, load_validation


def widths(run_dir: str, seeds: list[int]) -> list[dict]:
    """One row per (pair, r): the pair, r, the interval's half width, the predicted and realised interaction and
    the verdict, recomputed from the first r replicates of the run's validation."""
    store = RunStore(run_dir)
    table, meta = load_validation(store)
    if table is None:
        raise SystemExit(f"error: {run_dir} has no validation (run `dataspex validate run_dir={run_dir}` first)")
    have = int(meta["seeds"])
    if max(seeds) > have:
        raise SystemExit(f"error: {run_dir} was validated with {have} seeds; --seeds asks for {max(seeds)}")
    design = store.load_design()
    results = store.load_results(design)
    fitted, _ = load_fitted(store)
    # the pairs as `dataspex validate` handed them to analyse (its table names their score and estimand apart)
    pairs = table.rename(columns={"ranking_score": "score", "ranking_estimand": "estimand"})[
        ["kind", "rank", "i", "j", "test", "pattern", "score", "estimand"]]
    rows = []
    for r in seeds:
        again = analyse(pairs, design, results, fitted, meta["estimator"], design.n_units, r, float(meta["level"]),
                        meta.get("output", "loss"))
        for v in again.itertuples():
            rows.append({"run": run_dir, "seeds": r, "kind": v.kind, "i": int(v.i), "j": int(v.j),
                         "test": int(v.test), "predicted": float(v.predicted), "realised": float(v.realised),
                         "half_width": float((v.ci_high - v.ci_low) / 2), "verdict": v.verdict})
    return rows


def summary_table(rows: list[dict]) -> list[str]:
    """Markdown: one line per (run, r)."""
    out = ["| run | seeds | interval half width (min - max, nats) | median | |predicted| (min - max) | confirmed |",
           "|---|---:|---|---:|---|---:|"]
    keys = sorted({(row["run"], row["seeds"]) for row in rows})
    for run, r in keys:
        part = [row for row in rows if row["run"] == run and row["seeds"] == r]
        half = np.array([row["half_width"] for row in part])
        pred = np.abs([row["predicted"] for row in part])
        confirmed = sum(row["verdict"] == "confirmed" for row in part)
        out.append(f"| {run} | {r} | {half.min():.2f} - {half.max():.2f} | {np.median(half):.2f} | "
                   f"{pred.min():.2f} - {pred.max():.2f} | {confirmed} of {len(part)} |")
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", action="append", required=True, help="a validated run directory (repeatable)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[4, 8, 16])
    parser.add_argument("--out", default=None, help="JSON file for the per-pair rows")
    args = parser.parse_args(argv)
    if min(args.seeds) < 2:
        raise SystemExit("error: an interval needs at least 2 seeds")
    rows = [row for run in args.run for row in widths(run, sorted(set(args.seeds)))]
    print("\n".join(summary_table(rows)))
    if args.out:
        write_json(args.out, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
