"""Does a drill-down over examples measure what `validate` measures? Its estimates beside the full-set retrains.

`dataspex drill` on a run over examples estimates each drilled pair's second difference at the full training set
from random retrains of the pairs' members (dataspex/validate/fullset.py). `dataspex validate` measures the same
second difference directly: the full set, minus i, minus j and minus both, over fresh seeds. This script reads
both from a run's store, retraining nothing: for every drilled pair whose four training sets have at least two
validation seeds, the drill-down's estimate two ways, over the retrains that keep the pair's neighbours (what
`drill` reports) and over every retrain (each member kept at random), beside the realised value, with
z = (estimate - realised) / sqrt(se^2 + se_realised^2). With no bias, |z| has a median about 0.67.

    python benchmarks/fullset_agreement.py /tmp/exp10/wx /tmp/exp10/fx /tmp/exp10/f3
"""

from __future__ import annotations

import argparse

import numpy as np


def realised(design, results, i: int, j: int, t: int) -> dict | None:
    """The validation retrains' second difference of test example t for pair (i, j): {"value", "se", "seeds"}
    from the first r replicates of each of the four training sets (r: the fewest any has), or None under 2."""
    from dataspex.design.validation import VARIANTS, replicate_ids, variant_masks
    from dataspex.validate.analysis import t_interval

    ids = replicate_ids(design)
    row_of = {int(m): r for r, m in enumerate(results.mask_ids)}
    got = {v: [row_of[m] for m in ids.get(mask.tobytes(), []) if m in row_of]
           for v, mask in variant_masks(design.n_units, i, j).items()}
    r = min(len(v) for v in got.values())
    if r < 2:
        return None
    y = {v: results.losses[got[v][:r], t] for v in VARIANTS}
    mean, se, _, _ = t_interval(y["minus_both"] - y["minus_i"] - y["minus_j"] + y["full"], 0.9)
    return {"value": mean, "se": se, "seeds": r}


def compare(run_dir: str) -> list[dict]:
    """One row per drilled pair of ``run_dir`` with a validation: the pair, its estimate with its neighbours kept
    and over every retrain (each with se), and the realised value."""
    from dataspex.report.drill import DRILL_DIR
    from dataspex.store import RunStore
    from dataspex.validate.fullset import load_fullset, pair_at_full_set

    store = RunStore(run_dir)
    design = store.load_design()
    results = store.load_results(design)
    child = RunStore(store.path(DRILL_DIR))
    table, meta = load_fullset(child.run_dir)
    if table is None:
        raise SystemExit(f"error: {run_dir} has no drill-down over examples (run `dataspex drill` first)")
    cdesign = child.load_design()
    cres = child.load_results(cdesign)
    use = np.logical_or.reduce([cres.keep(cdesign, role) for role in ("fit", "heldout", "replicate")])
    masks, losses = cres.masks[use], cres.losses[use]
    column = {int(x): k for k, x in enumerate(meta["members"])}
    rows = []
    for p in table.itertuples():
        real = realised(design, results, int(p.i), int(p.j), int(p.test))
        if real is None:
            continue
        a, b = column[int(p.i)], column[int(p.j)]
        every = pair_at_full_set(masks, losses[:, p.test], a, b)
        rows.append({"run": run_dir, "kind": p.kind, "i": int(p.i), "j": int(p.j), "test": int(p.test),
                     "neighbours": list(p.neighbours), "kept": (p.estimate, p.se), "every": every[:2],
                     "holds": bool(p.holds), "realised": real})
    return rows


def z_value(estimate: tuple, real: dict) -> float:
    return float((estimate[0] - real["value"]) / np.hypot(estimate[1], real["se"]))


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", help="runs with `dataspex drill` and `dataspex validate` done")
    opts = parser.parse_args(argv)
    rows = [r for run in opts.runs for r in compare(run)]
    print("| run | kind | pair (test) | neighbours kept | neighbours kept: estimate | every retrain | `validate` "
          "(seeds) | holds |")
    print("|---|---|---|---|---:|---:|---:|---|")
    for r in rows:
        print(f"| {r['run']} | {r['kind']} | ({r['i']}, {r['j']}) ({r['test']}) | {r['neighbours'] or '-'} | "
              f"{r['kept'][0]:+.3f} +- {r['kept'][1]:.3f} | {r['every'][0]:+.3f} +- {r['every'][1]:.3f} | "
              f"{r['realised']['value']:+.3f} +- {r['realised']['se']:.3f} ({r['realised']['seeds']}) | "
              f"{'holds' if r['holds'] else '-'} |")
    for mode in ("kept", "every"):
        z = np.abs([z_value(r[mode], r["realised"]) for r in rows if np.isfinite(r[mode][0])])
        print(f"{mode}: {len(z)} pairs, median |z| {np.median(z):.2f}, |z| > 2 in {int((z > 2).sum())}")
    return rows


if __name__ == "__main__":
    main()
