"""QuadraticProxy: sparse regression on main effects plus screened pairwise products.

Features are Fourier characters: s_i = (-1)^{x_i} for every example and s_i s_j for screened
pairs, so the fitted coefficients are directly Fourier coefficients of degree <= 2.
All n^2/2 pairs are rarely affordable, so pairs are screened first:

* ``screen="main"``: a first-pass L1 fit on main effects; pairs among each output's ``n_top``
  strongest examples (hierarchical interactions: a pair matters where its parts do);
* ``screen="residual"``: additionally scores every pair by |mean(s_i s_j r)| against the
  first-pass residual r of each output (finds pure interactions without main effects;
  costs m n^2 per output).

The union of screened pairs over outputs (capped at ``max_pairs``) forms one shared design,
fitted for all outputs at once by the batched cross-validated lasso.
"""

from __future__ import annotations

import numpy as np

from dataspex.fit.estimators.base import BaseInteractionEstimator, DataspexInputError, small_blas
from dataspex.fit.solvers.lasso import lasso_cv_batched
from dataspex.fit.estimators.result import InteractionResult
from dataspex.fit.estimators.transforms import ParityEncoder

__all__ = ["QuadraticProxy"]


def _top_pairs_per_output(weights: np.ndarray, n_top: int) -> dict[tuple[int, int], float]:
    """Pairs among each output's n_top largest |weights[:, t]|, scored by max_t |w_i w_j|."""
    scores: dict[tuple[int, int], float] = {}
    norm = np.maximum(np.abs(weights).max(axis=0), 1e-300)
    rel = np.abs(weights) / norm  # comparable across outputs of different scales
    for t in range(weights.shape[1]):
        col = rel[:, t]
        top = np.argsort(-col, kind="stable")[:n_top]
        top = np.sort(top[col[top] > 0])
        for a in range(len(top)):
            for b in range(a + 1, len(top)):
                i, j = int(top[a]), int(top[b])
                s = float(col[i] * col[j])
                if s > scores.get((i, j), -1.0):
                    scores[(i, j)] = s
    return scores


def _residual_pairs(S: np.ndarray, R: np.ndarray, n_top_pairs: int) -> dict[tuple[int, int], float]:
    """Per output, the n_top_pairs pairs with largest |mean(s_i s_j r)| (relative score)."""
    m, n = S.shape
    iu = np.triu_indices(n, k=1)
    scores: dict[tuple[int, int], float] = {}
    with small_blas(2.0 * m * n * n):
        for t in range(R.shape[1]):
            C = np.abs((S * R[:, t : t + 1]).T @ S)[iu] / m
            if C.max() <= 0:
                continue
            best = np.argsort(-C, kind="stable")[:n_top_pairs]
            for b in best:
                key = (int(iu[0][b]), int(iu[1][b]))
                scores[key] = max(scores.get(key, 0.0), float(C[b] / C[best[0]]))
    return scores


class QuadraticProxy(BaseInteractionEstimator):
    """Degree-2 sparse Fourier model per output with pair screening.

    Parameters
    ----------
    n_top : int
        Examples per output whose pairs are candidates (``screen="main"``).
    max_pairs : int
        Cap on the shared pair design (highest screening scores kept).
    screen : {"main", "residual"}
        Screening rule (see module docstring).
    alpha, cv, n_alphas, eps, tol, max_iter, random_state :
        Passed to the batched lasso (alpha=None: per-output CV).

    Fitted: ``pairs_`` (P, 2) screened pairs, ``result_``.
    """

    def __init__(
        self,
        n_top: int = 20,
        max_pairs: int = 2000,
        screen: str = "main",
        alpha=None,
        cv: int = 5,
        n_alphas: int = 30,
        eps: float = 1e-3,
        tol: float = 1e-5,
        max_iter: int = 3000,
        random_state: int | None = 0,
    ) -> None:
        self.n_top = n_top
        self.max_pairs = max_pairs
        self.screen = screen
        self.alpha = alpha
        self.cv = cv
        self.n_alphas = n_alphas
        self.eps = eps
        self.tol = tol
        self.max_iter = max_iter
        self.random_state = random_state

    def _lasso(self, X: np.ndarray, Y: np.ndarray, alpha):
        return lasso_cv_batched(
            X,
            Y,
            alpha=alpha,
            cv=self.cv,
            n_alphas=self.n_alphas,
            eps=self.eps,
            tol=self.tol,
            max_iter=self.max_iter,
            random_state=self.random_state,
        )

    def _screen(self, S: np.ndarray, Y: np.ndarray) -> np.ndarray:
        if self.screen not in ("main", "residual"):
            raise DataspexInputError(f"screen must be 'main' or 'residual', got {self.screen!r}")
        coef, intercept, _ = self._lasso(S, Y, None)
        scores = _top_pairs_per_output(coef, int(self.n_top))
        if self.screen == "residual":
            resid = Y - (S @ coef + intercept)
            n_res = max(1, int(self.n_top) * (int(self.n_top) - 1) // 2)
            for key, val in _residual_pairs(S, resid, n_res).items():
                scores[key] = max(scores.get(key, 0.0), val)
        ranked = sorted(scores, key=lambda k: (-scores[k], k))[: int(self.max_pairs)]
        return np.array(sorted(ranked), dtype=np.int64).reshape(-1, 2)

    def _fit(self, masks: np.ndarray, Y: np.ndarray) -> InteractionResult:
        n = masks.shape[1]
        S = 1.0 - 2.0 * masks  # Fourier characters of single examples
        pairs = self._screen(S, Y)
        self.pairs_ = pairs
        keys = [(i,) for i in range(n)] + [tuple(map(int, p)) for p in pairs]
        Phi = np.hstack([S, ParityEncoder(masks).features([tuple(p) for p in pairs.tolist()])])
        coef, intercept, alpha = self._lasso(Phi, Y, self.alpha)
        self.alpha_ = alpha
        used = np.flatnonzero(np.any(coef != 0, axis=1))
        return InteractionResult(
            n,
            [()] + [keys[u] for u in used],
            np.vstack([intercept[None, :], coef[used]]),
            estimator="QuadraticProxy",
        )
