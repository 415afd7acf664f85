"""Does a drill-down over examples measure what `validate` measures? Its estimates beside the full-set retrains.

`dataspex drill` on a run over examples estimates each drilled pair's second difference at the full training set
from random retrains of the pairs' members (dataspex/validate/fullset.py). `dataspex validate` measures the same
second difference directly: the full set, minus i, minus j and minus both, over fresh seeds. This script reads
both from a run's store, retraining nothing: for every drilled pair whose four training sets have at least two
validation seeds, the drill-down's estimate two ways, over the retrains that keep the pair's neighbours (what
`drill` reports) and over every retrain (each member kept at random), beside the realised value, with
z = (estimate - realised) / sqrt(se^2 + se_realised^2). With no bias, |z| has a median about 0.67.

It also says how influential the members a drill-down drops around each pair are on that pair's test example:
how many of the other members rank among the top 10% of the training set by the size of their main effect
there (least squares on the run's own fit retrains; by chance a tenth of them would), and their median size
against every example's.

    python benchmarks/fullset_agreement.py /tmp/exp10/wx /tmp/exp10/fx /tmp/exp10/f3
"""

from __future__ import annotations

import argparse

import numpy as np


def compare(run_dir: str) -> list[dict]:
    """One row per drilled pair of ``run_dir`` whose four validation training sets have at least two seeds: the
    pair, its estimate with its neighbours kept and over every retrain (each with se), and the realised value
    (``dataspex.validate.analyse`` on every stored replicate, as `validate` computes it), all on the output the
    drill-down modelled."""
    from dataspex.fit.artifacts import load_fitted
    from dataspex.report.drill import DRILL_DIR
    from dataspex.store import RunStore
    from dataspex.validate import analyse
    from dataspex.validate.fullset import load_fullset, pair_at_full_set, random_retrains

    store = RunStore(run_dir)
    child = RunStore(store.path(DRILL_DIR))
    table, meta = load_fullset(child.run_dir)
    if table is None:
        raise SystemExit(f"error: {run_dir} has no drill-down over examples (run `dataspex drill` first)")
    design = store.load_design()
    fitted, _ = load_fitted(store)
    results = store.load_results(design)
    # every replicate a validation stored (no training set has more than the design has rows)
    realised = analyse(table, design, results, fitted, meta["ranking"], design.n_units, len(design), 0.9,
                       meta["output"])
    effects = np.abs(main_effects(results, design, meta["output"]))
    cdesign = child.load_design()
    masks, Y = random_retrains(cdesign, child.load_results(cdesign), meta["output"])
    column = {int(x): k for k, x in enumerate(meta["members"])}
    rows = []
    for p, v in zip(table.itertuples(), realised.itertuples()):
        if v.seeds < 2:  # not validated (pending), or one seed: no interval
            continue
        every = pair_at_full_set(masks, Y[:, p.test], column[int(p.i)], column[int(p.j)])
        others = [int(x) for x in meta["members"] if int(x) not in (int(p.i), int(p.j))]
        size = effects[:, p.test]
        top = np.argsort(-size)[: max(1, round(0.1 * len(size)))]
        rows.append({"run": run_dir, "kind": p.kind, "i": int(p.i), "j": int(p.j), "test": int(p.test),
                     "neighbours": list(p.neighbours), "kept": (p.estimate, p.se), "every": every[:2],
                     "holds": bool(p.holds), "realised": {"value": v.realised, "se": v.se, "seeds": int(v.seeds)},
                     "confirmed": v.verdict == "confirmed",
                     "others": len(others), "others_in_top": int(np.isin(others, top).sum()),
                     "others_size": float(np.median(size[others]) / np.median(size))})
    return rows


def main_effects(results, design, output: str) -> np.ndarray:
    """(n, T) main effects of ``output`` on every test example by least squares on the run's fit retrains
    (:func:`dataspex.fit.faithfulness.least_squares_main_effects`, its intercept left out): the change of that
    output when an example is kept."""
    from dataspex.fit.faithfulness import least_squares_main_effects

    keep = results.keep(design, "fit")
    return least_squares_main_effects(results.masks[keep], results.outputs(output)[keep])[1:]


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
    from scipy.stats import spearmanr

    measured = {mode: [r for r in rows if np.isfinite(r[mode][0])] for mode in ("kept", "every")}
    z = {mode: np.abs([z_value(r[mode], r["realised"]) for r in mine]) for mode, mine in measured.items()}
    for mode in measured:
        print(f"{mode}: {len(z[mode])} pairs, median |z| {np.median(z[mode]):.2f}, |z| > 2 in "
              f"{int((z[mode] > 2).sum())}")
    for mode, mine in measured.items():
        if len(mine) >= 3:
            rho = spearmanr(z[mode], [r["others_in_top"] for r in mine])
            print(f"{mode}: |z| against the other members in the top 10% by main effect, per pair: Spearman "
                  f"{rho.statistic:+.2f} (p {rho.pvalue:.2f})")
    held = [r for r in rows if r["holds"]]
    print(f"holding pairs with a validation: {len(held)}, confirmed by `validate` (on every seed it stored): "
          f"{sum(r['confirmed'] for r in held)}; the other validated pairs: {len(rows) - len(held)}, confirmed: "
          f"{sum(r['confirmed'] for r in rows if not r['holds'])}")
    for run in opts.runs:
        mine = [r for r in rows if r["run"] == run]
        if mine:
            print(f"{run}: the other members around each pair, among the top 10% by main effect on its test "
                  f"example: {sum(r['others_in_top'] for r in mine)} of {sum(r['others'] for r in mine)} "
                  f"(chance: 10%); their median main effect / every example's: "
                  f"{np.median([r['others_size'] for r in mine]):.2f} (median over {len(mine)} pairs)")
    return rows


if __name__ == "__main__":
    main()
