"""Exhaustive pairwise design at the full data set (the guide's estimand).

For K screened candidates, retrain on: the full set, every single removal and every pair
removal (1 + K + K(K-1)/2 masks).  With non-candidates fixed at 1, the restriction of f to the
candidates is, on these masks, exactly the degree-2 polynomial in removal indicators
r_i = 1 - x_i:

    g(r) = f(1) + sum_i c_i r_i + sum_{i<j} D_ij r_i r_j,
    c_i = f(1 - e_i) - f(1),   D_ij = f(1-e_i-e_j) - f(1-e_i) - f(1-e_j) + f(1).

Rewritten in x (r = 1 - x) this is a Moebius expansion, stored in an InteractionResult whose
``pair_scores(estimand="full")`` returns the measured D_ij and ``main_effects("full")`` the
measured f(1) - f(1 - e_i).  The model is only valid near the full context (non-candidates
kept); its "uniform" numbers are extrapolations of the degree-2 fit.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from dataspex.design.pairwise import exhaustive_pair_masks, screen_candidates, warn_over_budget
from dataspex.fit.estimators.base import BaseInteractionEstimator, DataspexInputError
from dataspex.fit.estimators.result import InteractionResult

__all__ = ["Pairwise", "screen_candidates"]


class Pairwise(BaseInteractionEstimator):
    """Exact second differences at the full data set from the exhaustive pair design.

    ``fit(masks, Y)`` accepts the rows of :meth:`design` in any order (replicated rows are
    averaged); rows must be the full set or remove one or two examples.

    Fitted: ``candidates_`` (K,), ``second_differences_`` DataFrame (i, j, output, score,
    computed directly from the measured outputs), ``result_``.
    """

    design_role = "pairwise"  # the rows of design=pairwise
    heldout_scored = False  # its model holds near the full set only (estimand "full")

    def __init__(self, budget: int | None = None) -> None:
        self.budget = budget

    def fit_summary(self) -> dict:
        return {"estimand": "full", "candidates": [int(i) for i in self.candidates_]}

    # The masks this estimator reads: the full set, each single removal, each pair removal.
    design = staticmethod(exhaustive_pair_masks)

    def _fit(self, masks: np.ndarray, Y: np.ndarray) -> InteractionResult:
        m, n = masks.shape
        removed = [tuple(np.flatnonzero(row == 0).tolist()) for row in masks]
        bad = [r for r, z in enumerate(removed) if len(z) > 2]
        if bad:
            raise DataspexInputError(
                f"Pairwise needs masks that remove at most 2 examples; rows {bad[:10]} remove more"
            )
        values: dict[tuple[int, ...], list[np.ndarray]] = {}
        for z, y in zip(removed, Y):
            values.setdefault(z, []).append(y)
        mean = {z: np.mean(v, axis=0) for z, v in values.items()}
        if () not in mean:
            raise DataspexInputError("Pairwise needs the full-data mask (all ones) among the rows")
        f1 = mean[()]
        singles = sorted(z[0] for z in mean if len(z) == 1)
        cand = np.array(singles, dtype=np.int64)
        warn_over_budget(len(cand), self.budget)
        c = {i: mean[(i,)] - f1 for i in singles}
        pairs, D = [], []
        for z in sorted(z for z in mean if len(z) == 2):
            i, j = z
            if i not in c or j not in c:
                raise DataspexInputError(f"pair {z} is measured but a single removal of {i} or {j} is not")
            pairs.append(z)
            D.append(mean[z] - mean[(i,)] - mean[(j,)] + f1)
        T = Y.shape[1]
        D = np.array(D).reshape(len(pairs), T)
        self.candidates_ = cand
        self.second_differences_ = pd.DataFrame(
            {
                "i": np.repeat([p[0] for p in pairs], T).astype(np.int64),
                "j": np.repeat([p[1] for p in pairs], T).astype(np.int64),
                "output": np.tile(np.arange(T), len(pairs)),
                "score": D.ravel(),
            }
        )
        return InteractionResult.from_moebius(
            n, *self._moebius(f1, c, pairs, D), estimator="Pairwise"
        )

    @staticmethod
    def _moebius(f1, c, pairs, D):
        """Moebius form of g = f(1) + sum c_i (1-x_i) + sum D_ij (1-x_i)(1-x_j)."""
        const = f1 + sum(c.values()) + D.sum(axis=0)
        singles = {i: -ci for i, ci in c.items()}
        for (i, j), d in zip(pairs, D):
            singles[i] = singles[i] - d
            singles[j] = singles[j] - d
        keys = [()] + [(i,) for i in sorted(singles)] + list(pairs)
        coef = np.vstack([const[None, :]] + [singles[i][None, :] for i in sorted(singles)] + [D])
        return keys, coef
