"""How many retrains a target faithfulness needs: a learning curve through the faithfulness-vs-budget points.

On real text the held-out R^2 of every estimator rose by about the same amount per doubling of the retrains,
over the whole range measured (m = 16 to 1,024 at n = 256: +0.05 to +0.13 per doubling, fortunes with and without
planted pairs; benchmarks/README, "Trust threshold"). So the curve is ``r2(m) = intercept + per_doubling *
log2(m)``, fitted by least squares through a run's points (``fit/faithfulness_curve.json``: the estimator
refitted on growing prefixes of its fit masks). Fitted on a pilot's points up to m = 128 it predicted R^2 at
m = 1,024 within 0.04 for the linear datamodel (0.415 vs 0.414 and 0.430 vs 0.442) and within 0.12 for the
quadratic model; ``limit - slope / m``, the textbook curve of least squares, underpredicted all four by 0.17 to
0.27 (it assumes more samples than features, and a pilot has fewer). The curve has no limit of its own: the
noise ceiling is the limit (no model of the mask beats it), and a target at or above it is out of reach. The
answer is an extrapolation; ``doublings`` says how far beyond the largest measured budget it lies.
"""

from __future__ import annotations

import numpy as np

__all__ = ["CEILING_SHARE", "estimator_curve", "learning_curve", "needed_retrains"]

CEILING_SHARE = 0.8  # the default target: issue 15's "80% of the replicate noise ceiling"


def learning_curve(n_masks, r2) -> dict | None:
    """Fit ``r2 = intercept + per_doubling * log2(m)`` to the points (``n_masks`` (k,), ``r2`` (k,); non-finite
    ones dropped). Returns {"intercept", "per_doubling", "points", "largest"} or None with fewer than two
    distinct budgets."""
    m = np.asarray(n_masks, dtype=np.float64)
    y = np.asarray(r2, dtype=np.float64)
    ok = np.isfinite(m) & np.isfinite(y) & (m > 0)
    m, y = m[ok], y[ok]
    if len(np.unique(m)) < 2:
        return None
    design = np.column_stack([np.ones_like(m), np.log2(m)])
    (intercept, per_doubling), *_ = np.linalg.lstsq(design, y, rcond=None)
    return {"intercept": float(intercept), "per_doubling": float(per_doubling), "points": int(len(m)),
            "largest": int(m.max())}


def estimator_curve(curve, name: str) -> tuple[list[list[float]], dict | None]:
    """One estimator's points of a faithfulness-vs-budget table (:func:`dataspex.fit.faithfulness.load_curve`:
    columns estimator, n_masks, r2_pooled, ...) as [[m, pooled R^2], ...], and the learning curve through them."""
    part = curve[(curve["estimator"] == name) & curve["r2_pooled"].notna()]
    points = [[int(m), float(r)] for m, r in zip(part["n_masks"], part["r2_pooled"])]
    return points, learning_curve(part["n_masks"], part["r2_pooled"])


# Beyond 2^6 = 64x the largest measured budget the straight line in log2(m) is a guess, not a measurement: the
# runs behind it spanned 6 doublings (m = 16 to 1,024).
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
    if step <= 0:
        return {"n_masks": None, "doublings": None,
                "why": f"R^2 does not rise with the retrains ({step:+.3f} per doubling)"}
    log2_m = (target - curve["intercept"]) / step
    beyond = log2_m - float(np.log2(curve["largest"]))
    if beyond > MAX_DOUBLINGS:
        return {"n_masks": None, "doublings": beyond,
                "why": (f"at {step:+.3f} per doubling it needs {beyond:.1f} doublings beyond the largest measured "
                        f"budget ({curve['largest']}): more than {2 ** MAX_DOUBLINGS}x, beyond what the curve can say")}
    n = max(int(np.ceil(2.0 ** log2_m - 1e-9)), 1)  # the tolerance keeps an exact 300.0000001 at 300
    return {"n_masks": n, "why": "", "doublings": max(0.0, float(np.log2(n / curve["largest"])))}
