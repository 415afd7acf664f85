"""How many retrains a target faithfulness needs: learning curves through the faithfulness-vs-budget points.

Two curves, fitted by least squares through a run's points (``fit/faithfulness_curve.json``: the estimator refitted
on growing prefixes of its fit masks):

* the **log2 line**, ``r2(m) = intercept + per_doubling * log2(m)``, which has no limit of its own (the report's
  and `dataspex plan`'s first answer);
* with a noise ceiling C (the run has seed replicates; no model of the mask beats it), the **power law to the
  ceiling**, ``r2(m) = C - exp(a + b log2(m))``: the gap to the ceiling shrinks by the same factor per doubling.

Measured (``benchmarks/plan_curves.py``; benchmarks/README "`dataspex plan`: which learning curve extrapolates"),
fitted on a pilot's four points (m = 32 to 128) of five real-text runs: asked for R^2 at 2 to 32 times the pilot,
the log2 line was off by 0.117 on average, optimistic at every larger budget of the planted sets (0.742 at
m = 1,024 where 0.593 was measured), the power law by 0.049, pessimistic on the unplanted ones (0.408 at m = 1,635
where 0.486 was). In retrains, over the 27 targets the measured curves crossed beyond the pilot, the log2 line
asked 0.20 to 1.31 times what was needed (median 0.90, fewer in 19), the power law 0.67 to 4.84 times (median
1.30, fewer in 4). Since a random design grows in place without losing a retrain
(:func:`dataspex.design.random.grow_random`), `dataspex plan` grows to the log2 line's figure and plans again, and
gives the power law's figure beside it. Either is an extrapolation; ``doublings`` says how far beyond the largest
measured budget it lies.
"""

from __future__ import annotations

import numpy as np

__all__ = ["CEILING_SHARE", "MAX_DOUBLINGS", "curve_r2", "describe", "estimator_curve", "learning_curve",
           "needed_retrains"]

CEILING_SHARE = 0.8  # the default target: issue 15's "80% of the replicate noise ceiling"


def learning_curve(n_masks, r2, ceiling: float | None = None) -> dict | None:
    """The learning curve through the points (``n_masks`` (k,), ``r2`` (k,); non-finite ones dropped): the power law
    to ``ceiling`` when one is given and every point lies below it, else the log2 line (module docstring). Returns
    {"kind": "power" or "log2", "intercept", "per_doubling" (the line's coefficients on log2(m); for "power" those
    of log(ceiling - r2)), "ceiling" (None for "log2"), "points", "largest"}, or None with fewer than two distinct
    budgets."""
    m = np.asarray(n_masks, dtype=np.float64)
    y = np.asarray(r2, dtype=np.float64)
    ok = np.isfinite(m) & np.isfinite(y) & (m > 0)
    m, y = m[ok], y[ok]
    if len(np.unique(m)) < 2:
        return None
    power = ceiling is not None and bool(np.all(y < ceiling))
    design = np.column_stack([np.ones_like(m), np.log2(m)])
    (intercept, per_doubling), *_ = np.linalg.lstsq(design, np.log(ceiling - y) if power else y, rcond=None)
    return {"kind": "power" if power else "log2", "intercept": float(intercept), "per_doubling": float(per_doubling),
            "ceiling": float(ceiling) if power else None, "points": int(len(m)), "largest": int(m.max())}


def curve_r2(curve: dict, n_masks) -> np.ndarray:
    """The curve's R^2 at ``n_masks`` fit retrains."""
    at = curve["intercept"] + curve["per_doubling"] * np.log2(np.asarray(n_masks, dtype=np.float64))
    return curve["ceiling"] - np.exp(at) if curve["kind"] == "power" else at


def describe(curve: dict | None) -> str:
    """The curve's kind and shape in a few words, for logs and reports."""
    if curve is None:
        return "n/a"
    if curve["kind"] == "power":
        gap = np.exp(curve["per_doubling"])
        return f"power law to the ceiling {curve['ceiling']:.3f} (gap x{gap:.2f} per doubling)"
    return f"log2 line ({curve['per_doubling']:+.3f} per doubling)"


def estimator_curve(curve, name: str, ceiling: float | None = None) -> tuple[list[list[float]], dict | None]:
    """One estimator's points of a faithfulness-vs-budget table (:func:`dataspex.fit.faithfulness.load_curve`:
    columns estimator, n_masks, r2_pooled, ...) as [[m, pooled R^2], ...], and the learning curve through them:
    the log2 line, or with ``ceiling`` (the run's pooled noise ceiling) the power law to it."""
    part = curve[(curve["estimator"] == name) & curve["r2_pooled"].notna()]
    points = [[int(m), float(r)] for m, r in zip(part["n_masks"], part["r2_pooled"])]
    return points, learning_curve(part["n_masks"], part["r2_pooled"], ceiling)


# Beyond 2^6 = 64x the largest measured budget either curve is a guess, not a measurement: the runs behind them
# spanned 6 to 7 doublings (m = 16 to 1,024, 32 to 4,096).
MAX_DOUBLINGS = 6


def needed_retrains(curve: dict | None, target: float, ceiling: float | None = None) -> dict:
    """Retrains (fit masks) for held-out R^2 ``target`` on ``curve``: {"n_masks": int or None, "why": str,
    "doublings": doublings beyond the largest measured budget (0 when it already reaches the target)}. None when
    there is no curve, when R^2 does not rise with m, when the target is at or above the noise ``ceiling``, or
    when it lies more than ``MAX_DOUBLINGS`` doublings beyond the largest measured budget."""
    if curve is None:
        return {"n_masks": None, "why": "fewer than two budgets on the faithfulness curve", "doublings": None}
    if ceiling is not None and target >= ceiling:
        return {"n_masks": None, "doublings": None,
                "why": f"the target {target:.3f} is at or above the noise ceiling {ceiling:.3f}: no model reaches it"}
    step = curve["per_doubling"]
    if curve["kind"] == "power":
        if target >= curve["ceiling"]:
            return {"n_masks": None, "doublings": None,
                    "why": f"the target {target:.3f} is at or above the noise ceiling {curve['ceiling']:.3f}"}
        if step >= 0:
            return {"n_masks": None, "doublings": None,
                    "why": f"the gap to the noise ceiling does not shrink with the retrains (x{np.exp(step):.2f} "
                           "per doubling)"}
        log2_m = (np.log(curve["ceiling"] - target) - curve["intercept"]) / step
        pace = f"with the gap to the ceiling x{np.exp(step):.2f} per doubling"
    else:
        if step <= 0:
            return {"n_masks": None, "doublings": None,
                    "why": f"R^2 does not rise with the retrains ({step:+.3f} per doubling)"}
        log2_m = (target - curve["intercept"]) / step
        pace = f"at {step:+.3f} per doubling"
    beyond = log2_m - float(np.log2(curve["largest"]))
    if beyond > MAX_DOUBLINGS:
        return {"n_masks": None, "doublings": beyond,
                "why": (f"{pace} it needs {beyond:.1f} doublings beyond the largest measured budget "
                        f"({curve['largest']}): more than {2 ** MAX_DOUBLINGS}x, beyond what the curve can say")}
    n = max(int(np.ceil(2.0 ** log2_m - 1e-9)), 1)  # the tolerance keeps an exact 300.0000001 at 300
    return {"n_masks": n, "why": "", "doublings": max(0.0, float(np.log2(n / curve["largest"])))}
