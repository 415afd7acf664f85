"""How many retrains a target faithfulness needs: a learning curve through the faithfulness-vs-budget points.

Held-out R^2 of a regularised linear model in p features fitted to m noisy samples approaches its limit as
``r2(m) = limit - slope / m`` (the excess risk of least squares is about sigma^2 p / m). The curve is fitted by
least squares in 1/m through a run's points (``fit/faithfulness_curve.json``: the estimator refitted on growing
prefixes of its fit masks); ``limit`` is what more retrains of the same design buy at most, and the retrains a
target R^2 needs are ``slope / (limit - target)`` when the target is below the limit. The fit needs two budgets or
more and is an extrapolation: ``extrapolated`` says when the answer lies beyond twice the largest measured budget.
"""

from __future__ import annotations

import numpy as np

__all__ = ["learning_curve", "needed_retrains"]


def learning_curve(n_masks, r2) -> dict | None:
    """Fit ``r2 = limit - slope / m`` to the points (``n_masks`` (k,), ``r2`` (k,); non-finite ones dropped).
    Returns {"limit", "slope", "points", "largest"} or None with fewer than two distinct budgets."""
    m = np.asarray(n_masks, dtype=np.float64)
    y = np.asarray(r2, dtype=np.float64)
    ok = np.isfinite(m) & np.isfinite(y) & (m > 0)
    m, y = m[ok], y[ok]
    if len(np.unique(m)) < 2:
        return None
    design = np.column_stack([np.ones_like(m), -1.0 / m])
    (limit, slope), *_ = np.linalg.lstsq(design, y, rcond=None)
    return {"limit": float(limit), "slope": float(slope), "points": int(len(m)), "largest": int(m.max())}


def needed_retrains(curve: dict | None, target: float) -> dict:
    """Retrains (fit masks) for held-out R^2 ``target`` on ``curve``: {"n_masks": int or None, "why": str,
    "extrapolated": bool}. None when there is no curve, when the curve does not rise with m (slope <= 0: more
    retrains of this design do not help), or when the target is at or above its limit."""
    if curve is None:
        return {"n_masks": None, "why": "fewer than two budgets on the faithfulness curve", "extrapolated": False}
    limit, slope = curve["limit"], curve["slope"]
    if slope <= 0:
        return {"n_masks": None, "why": f"R^2 does not rise with the retrains (it levels at {limit:.3f})",
                "extrapolated": False}
    if target >= limit:
        return {"n_masks": None, "why": (f"the curve levels off at R^2 {limit:.3f}, below the target {target:.3f}: "
                                         "more retrains of this design will not reach it"), "extrapolated": False}
    n = int(np.ceil(slope / (limit - target) - 1e-9))  # the tolerance keeps an exact 300.0000001 at 300
    return {"n_masks": n, "why": "", "extrapolated": n > 2 * curve["largest"]}
