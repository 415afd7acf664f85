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

import warnings

import numpy as np
import pandas as pd

from dataspex.estimators.base import BaseInteractionEstimator, DataspexInputError
from dataspex.estimators.result import InteractionResult

__all__ = ["Pairwise", "screen_candidates"]


def _budget_warning(K: int, budget: int | None) -> None:
    n_pairs = K * (K - 1) // 2
    if budget is not None and n_pairs > budget:
        warnings.warn(
            f"{K} candidates need {n_pairs} pair retrains (plus {1 + K}), over the budget of "
            f"{budget}; screen fewer candidates or use a sparse estimator (ProxySPEX, SPEX)",
            stacklevel=3,
        )


def screen_candidates(scores, K: int, budget: int | None = None) -> np.ndarray:
    """Top-K examples by |first-order score|, sorted by index.

    scores: (n,) or (n, T) first-order attributions (linear datamodel coefficients, TRAK
    scores, leave-one-out effects); with T outputs an example's strength is its largest
    |score| relative to each output's largest.  Warns when K(K-1)/2 exceeds ``budget``.
    """
    s = np.abs(np.asarray(scores, dtype=np.float64))
    if s.ndim == 1:
        s = s[:, None]
    if s.ndim != 2 or not np.isfinite(s).all():
        raise DataspexInputError("scores must be a finite (n,) or (n, T) array")
    K = int(K)
    if not 1 <= K <= s.shape[0]:
        raise DataspexInputError(f"K must be in [1, n={s.shape[0]}], got {K}")
    strength = (s / np.maximum(s.max(axis=0), 1e-300)).max(axis=1)
    chosen = np.sort(np.argsort(-strength, kind="stable")[:K])
    _budget_warning(K, budget)
    return chosen


class Pairwise(BaseInteractionEstimator):
    """Exact second differences at the full data set from the exhaustive pair design.

    ``fit(masks, Y)`` accepts the rows of :meth:`design` in any order (replicated rows are
    averaged); rows must be the full set or remove one or two examples.

    Fitted: ``candidates_`` (K,), ``second_differences_`` DataFrame (i, j, output, score,
    computed directly from the measured outputs), ``result_``.
    """

    def __init__(self, budget: int | None = None) -> None:
        self.budget = budget

    @staticmethod
    def design(n: int, candidates, budget: int | None = None) -> np.ndarray:
        """Masks (1 + K + K(K-1)/2, n) uint8: full set, each single removal, each pair removal."""
        cand = np.unique(np.asarray(candidates, dtype=np.int64))
        if cand.size and (cand[0] < 0 or cand[-1] >= n):
            raise DataspexInputError(f"candidates must lie in [0, {n})")
        K = cand.size
        _budget_warning(K, budget)
        ii, jj = np.triu_indices(K, k=1)
        masks = np.ones((1 + K + len(ii), n), dtype=np.uint8)
        masks[1 + np.arange(K), cand] = 0
        rows = 1 + K + np.arange(len(ii))
        masks[rows, cand[ii]] = 0
        masks[rows, cand[jj]] = 0
        return masks

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
        _budget_warning(len(cand), self.budget)
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
        lin = {i: -ci for i, ci in c.items()}
        for (i, j), d in zip(pairs, D):
            lin[i] = lin[i] - d
            lin[j] = lin[j] - d
        keys = [()] + [(i,) for i in sorted(lin)] + list(pairs)
        coef = np.vstack([const[None, :]] + [lin[i][None, :] for i in sorted(lin)] + [D])
        return keys, coef
