"""How well does a pilot's learning curve predict the faithfulness of a larger study? (`dataspex plan`'s curve)

`dataspex plan` fits ``r2(m) = a + b log2(m)`` through a pilot's faithfulness curve (its estimator refitted on
1/4, 1/2, 3/4 and all of its fit masks) and inverts it. This script measures that extrapolation on finished runs
with many fit masks: it refits each estimator on the first m fit masks for the pilot's four budgets and for every
larger budget the run holds, scores each on the run's held-out masks (pooled R^2 over the test outputs and their
mean, as `dataspex fit` does), and fits two curves to the pilot's four points only:

* ``log2 line``: ``a + b log2(m)`` (what `dataspex plan` uses);
* ``power law to the ceiling``: ``C - exp(a + b log2(m))``, with C the run's replicate noise ceiling (no model of
  the mask beats it): the gap to the ceiling shrinking by a constant factor per doubling;
* ``power law to the bound``: the same towards the estimator's own bound as `dataspex plan` measures it from the
  pilot (from 4n fit masks: the main-effects limit for the linear datamodel, the limit plus the energy of its
  screened pairs for the quadratic model; :func:`dataspex.fit.faithfulness.estimator_bound`), which no budget of
  that model passes; n/a for a pilot under 4n or a model without a bound. Beside its figure, the figures with the
  bound one of its standard errors higher and lower (:func:`dataspex.fit.planning.bound_range`, the range
  `dataspex plan` prints), and how often the retrains needed fell inside that range.

It prints, per run, estimator and larger budget, the measured R^2 and each curve's prediction, then each curve's
mean signed and absolute error over all of them. Points are cached in ``--out`` (one JSON per run), so a second
invocation only reads them.

    python benchmarks/plan_curves.py --runs /tmp/runs/f256p_4096 /tmp/runs/w256p_4096 /tmp/runs/pilot_grow \\
        --pilot 128 --out /tmp/plan_curves
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
from budget import estimator_config, run_splits  # noqa: E402

FRACTIONS = (0.25, 0.5, 0.75, 1.0)  # the report's curve_fractions and the stored fit: what a pilot's curve holds


def budgets(pilot: int, n_fit: int) -> list[int]:
    """The pilot's four budgets, then every doubling of the pilot the run's fit masks allow, then all of them."""
    out = [round(f * pilot) for f in FRACTIONS]
    m = 2 * pilot
    while m <= n_fit:
        out.append(m)
        m *= 2
    if n_fit > out[-1]:
        out.append(n_fit)
    return out


def log2_line(m: np.ndarray, r2: np.ndarray):
    """``a + b log2 m`` (:func:`dataspex.fit.planning.learning_curve` without a ceiling), as a curve dict."""
    from dataspex.fit.planning import learning_curve

    return learning_curve(m, r2)


def power_to_ceiling(m: np.ndarray, r2: np.ndarray, ceiling: float):
    """``C - exp(a + b log2 m)`` (:func:`dataspex.fit.planning.learning_curve` with the ceiling); None when a point
    is at or above C."""
    from dataspex.fit.planning import learning_curve

    curve = learning_curve(m, r2, ceiling)
    return curve if curve["kind"] == "power" else None


CURVES = {"log2 line": lambda m, r, c, b: log2_line(m, r),
          "power law to the ceiling": lambda m, r, c, b: power_to_ceiling(m, r, c),
          "power law to the bound": lambda m, r, c, b: None if b is None else power_to_ceiling(m, r, b["r2"])}


def pilot_bound(run: dict, name: str, model, pilot: int) -> dict | None:
    """The bound `dataspex plan` would measure for estimator ``name`` (fitted as ``model`` on the first ``pilot``
    fit masks): :func:`dataspex.fit.faithfulness.model_bound` of the pilot's fit masks and the run's held-out
    ones (the main-effects limit for a model of main effects only, plus its screen's energy for a model that
    records one), as {"r2", "r2_se"}; None otherwise, or below 4n fit masks."""
    from dataspex.fit.faithfulness import main_effects_limit, model_bound

    X_fit, Y_fit = run["X_fit"][:pilot], run["Y_fit"][:pilot]
    limit = main_effects_limit(X_fit, Y_fit, run["X_ho"], run["Y_ho"])
    main_effects = bool(getattr(model, "main_effects_only", False))
    screen = None if main_effects or limit["r2"] is None else model.fit_summary().get("screen")
    bound = model_bound(limit, main_effects, screen, np.vstack([X_fit, run["X_ho"]]),
                        np.vstack([Y_fit, run["Y_ho"]]), float(run["design"].meta.get("p", 0.5)))
    return None if bound is None else {"r2": bound["r2"], "r2_se": bound["r2_se"]}


def crossing(m: np.ndarray, r2: np.ndarray, target: float) -> float | None:
    """The fit retrains at which the measured curve first reaches ``target`` (linear in log2 m between the two
    budgets around it); None when it does not within the measured budgets (or already at the first)."""
    for k in range(1, len(m)):
        if r2[k - 1] < target <= r2[k]:
            step = (target - r2[k - 1]) / (r2[k] - r2[k - 1])
            return float(2 ** (np.log2(m[k - 1]) + step * (np.log2(m[k]) - np.log2(m[k - 1]))))
    return None


def asks(measured: dict, pilot: int, targets: list[float]) -> list[dict]:
    """Per estimator and target (80% of the ceiling, then ``targets``): the retrains the measured curve needed
    (``crossing``) and what each curve fitted on the pilot asked (:func:`dataspex.fit.planning.needed_retrains`)."""
    from dataspex.fit.planning import bound_range, needed_retrains

    rows = []
    goals = [0.8 * measured["ceiling"]] + list(targets)
    for name, points in measured["points"].items():
        m = np.array([p[0] for p in points], dtype=np.float64)
        r2 = np.array([p[1] for p in points])
        seen = m <= pilot
        bound = measured.get("bounds", {}).get(name)
        for target in goals:
            row = {"run": os.path.basename(measured["run"]), "estimator": name, "target": target,
                   "needed": crossing(m, r2, target)}
            for curve, make in CURVES.items():
                fitted = make(m[seen], r2[seen], measured["ceiling"], bound)
                row[curve] = needed_retrains(fitted, target, measured["ceiling"])["n_masks"]
                row[curve + " n/a"] = fitted is None
            # the bound's figure with the bound one SE up and down (`dataspex plan` prints it as a range)
            row["bound range"] = None if row["power law to the bound n/a"] else bound_range(m[seen], r2[seen], target,
                                                                                          bound)
            rows.append(row)
    return rows


def within(needed: float, span: list) -> bool:
    """Whether ``needed`` retrains lie in a [fewest, most] range of :func:`dataspex.fit.planning.bound_range`
    (None: no figure that way; as the lower end, none is within; as the upper, it is open)."""
    low, high = span
    return low is not None and low <= needed and (high is None or needed <= high)


def measure(run_dir: str, estimators: list[str], pilot: int, cache: str) -> dict:
    """{"ceiling": pooled ceiling, "points": {estimator: [[m, pooled R^2], ...]}}, from ``cache`` when it holds
    the same budgets."""
    from hydra.utils import instantiate

    from dataspex.core.metrics import pooled_r2
    from dataspex.fit.faithfulness import noise_ceiling

    run = run_splits(run_dir)
    wanted = budgets(pilot, len(run["X_fit"]))

    def fitted(name: str, m: int):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return instantiate(estimator_config(run["cfg"], name)).fit(run["X_fit"][:m], run["Y_fit"][:m])
    cached = None
    if os.path.exists(cache):
        with open(cache) as fh:
            cached = json.load(fh)
        if cached.get("budgets") != wanted or not set(estimators) <= set(cached.get("bounds", {})):
            cached = None
    if cached is not None and all(b is None or isinstance(b, dict) for b in cached["bounds"].values()):
        return cached
    if cached is not None:  # written before the bounds kept their standard error: refit at the pilot only
        out = {**cached, "bounds": {name: pilot_bound(run, name, fitted(name, pilot), pilot)
                                    for name in cached["bounds"]}}
    else:
        out = {"run": run_dir, "budgets": wanted, "points": {name: [] for name in estimators}, "bounds": {},
               "ceiling": noise_ceiling(run["design"], run["results"], "loss")["pooled"]}
    for name in estimators if cached is None else []:
        for m in wanted:
            started = time.perf_counter()
            model = fitted(name, m)
            r2 = pooled_r2(run["Y_ho"], model.predict(run["X_ho"]))
            out["points"][name].append([m, r2])
            if m == pilot:
                out["bounds"][name] = pilot_bound(run, name, model, pilot)
            print(f"  {os.path.basename(run_dir)} {name} m = {m}: {r2:.3f} ({time.perf_counter() - started:.1f} s)",
                  flush=True)
    os.makedirs(os.path.dirname(cache) or ".", exist_ok=True)
    with open(cache + ".tmp", "w") as fh:
        json.dump(out, fh, indent=1)
    os.replace(cache + ".tmp", cache)
    return out


def compare(measured: dict, pilot: int) -> list[dict]:
    """One row per estimator and budget beyond the pilot: measured R^2 and each curve's prediction."""
    from dataspex.fit.planning import curve_r2

    rows = []
    for name, points in measured["points"].items():
        m = np.array([p[0] for p in points], dtype=np.float64)
        r2 = np.array([p[1] for p in points])
        seen = m <= pilot
        bound = measured.get("bounds", {}).get(name)
        fitted = {curve: make(m[seen], r2[seen], measured["ceiling"], bound) for curve, make in CURVES.items()}
        for k in np.flatnonzero(~seen):
            row = {"run": os.path.basename(measured["run"]), "estimator": name, "m": int(m[k]),
                   "doublings": float(np.log2(m[k] / pilot)), "measured": float(r2[k])}
            for curve, c in fitted.items():
                row[curve] = None if c is None else float(curve_r2(c, m[k]))
            rows.append(row)
    return rows


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", nargs="+", required=True)
    parser.add_argument("--estimators", default="linear,quadratic")
    parser.add_argument("--pilot", type=int, default=128, help="the pilot's fit masks (its curve: 1/4 to all)")
    parser.add_argument("--out", required=True, help="folder for the cached points")
    parser.add_argument("--targets", default="", help="pooled R^2 targets besides 80%% of each run's ceiling, "
                        "comma-separated, for the retrains each curve asks")
    opts = parser.parse_args(argv)

    rows, needs = [], []
    targets = [float(t) for t in opts.targets.split(",") if t]
    for run_dir in opts.runs:
        cache = os.path.join(opts.out, f"{os.path.basename(os.path.normpath(run_dir))}_pilot{opts.pilot}.json")
        measured = measure(run_dir, opts.estimators.split(","), opts.pilot, cache)
        print(f"{run_dir}: ceiling {measured['ceiling']:.3f}; pilot points "
              + "; ".join(f"{n} " + ", ".join(f"{m}: {r:.3f}" for m, r in p if m <= opts.pilot)
                          for n, p in measured["points"].items())
              + "; bounds from the pilot "
              + ", ".join(f"{n} " + ("n/a" if b is None else f"{b['r2']:.3f} +- {b['r2_se']:.3f}")
                          for n, b in measured.get("bounds", {}).items()))
        rows += compare(measured, opts.pilot)
        needs += asks(measured, opts.pilot, targets)
    names = list(CURVES)
    print("\n| run | estimator | m (doublings past the pilot) | measured | " + " | ".join(names) + " |")
    print("|---|---|---:|---:|" + "---:|" * len(names))
    for r in rows:
        cells = " | ".join("n/a" if r[c] is None else f"{r[c]:.3f}" for c in names)
        print(f"| {r['run']} | {r['estimator']} | {r['m']} ({r['doublings']:.1f}) | {r['measured']:.3f} | {cells} |")
    print()
    for c in names:
        err = np.array([r[c] - r["measured"] for r in rows if r[c] is not None])
        if not len(err):
            print(f"{c}: n/a at every point")
            continue
        far = np.array([r[c] - r["measured"] for r in rows if r[c] is not None and r["doublings"] >= 2.5])
        print(f"{c}: mean error {err.mean():+.3f}, mean |error| {np.abs(err).mean():.3f} over {len(err)} points; "
              + (f"at 2.5+ doublings {far.mean():+.3f} / {np.abs(far).mean():.3f} over {len(far)}" if len(far)
                 else "none at 2.5+ doublings"))
    print("\nRetrains for a target: where the measured curve crossed it, and what each curve fitted on the pilot "
          "asked (ratio to the measured need)")
    print("| run | estimator | target | needed | " + " | ".join(names) + " | bound +- 1 SE |")
    print("|---|---|---:|---:|" + "---:|" * (len(names) + 1))
    for r in needs:
        if r["needed"] is None:
            continue
        cells = " | ".join("n/a" if r[c + " n/a"] else "none: past 64x or its bound" if r[c] is None
                           else f"{r[c]} ({r[c] / r['needed']:.2f}x)" for c in names)
        span = "n/a" if r["bound range"] is None else " to ".join("none" if x is None else str(x)
                                                                 for x in r["bound range"])
        print(f"| {r['run']} | {r['estimator']} | {r['target']:.3f} | {r['needed']:.0f} | {cells} | {span} |")
    beyond = [r for r in needs if r["needed"] is not None and r["needed"] > opts.pilot]  # true extrapolations
    print(f"\nOver the {len(beyond)} targets the measured curve crossed beyond the pilot:")
    for c in names:
        ratios = np.array([np.inf if r[c] is None else r[c] / r["needed"] for r in beyond if not r[c + " n/a"]])
        if not len(ratios):
            print(f"{c}: n/a on every target")
            continue
        print(f"{c}: asked / needed median {np.median(ratios):.2f}, range {ratios.min():.2f} to {ratios.max():.2f}; "
              f"fewer than needed in {int((ratios < 1).sum())} of {len(ratios)}")
    if len(beyond):
        low, high = names[:2]
        inside = sum(1 for r in beyond if r[low] is not None and r[low] <= r["needed"]
                     and (r[high] is None or r["needed"] <= r[high]))
        print(f"the need lay between the {low} and the {high} in {inside} of {len(beyond)}")
        ranged = [r for r in beyond if r["bound range"] is not None]
        held = sum(1 for r in ranged if within(r["needed"], r["bound range"]))
        print(f"the need lay within the power law to the bound's range (the bound +- one SE) in {held} of "
              f"{len(ranged)}")
    return rows


if __name__ == "__main__":
    main()
