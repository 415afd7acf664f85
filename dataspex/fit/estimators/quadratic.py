"""QuadraticProxy: sparse regression on main effects plus screened pairwise products.

Features are Fourier characters: s_i = (-1)^{x_i} for every example and s_i s_j for screened
pairs, so the fitted coefficients are directly Fourier coefficients of degree <= 2.
All n^2/2 pairs are rarely affordable, so pairs are screened first, from a first-pass L1 fit on
main effects (hierarchical interactions: a pair matters where its parts do):

* ``screen="local"`` (the default): each output may use only the pairs among its own ``n_top``
  strongest examples. On real text a test example's loss moves with a few training examples of
  its own, and another output's candidate pairs are noise features for it: on planted fortunes
  (n = 256, m = 1,024 fit masks) the shared union below did worse than the linear datamodel on
  most test examples without a planted pair, and restricting each output to its own pairs raised
  the pooled held-out R^2 from 0.534 to 0.593 (WordNet: 0.674 to 0.699; benchmarks/README.md,
  "Local pairs").
* ``screen="main"``: pairs among each output's ``n_top`` strongest examples, their union shared
  by every output;
* ``screen="residual"``: ``main``, plus every pair scored by |mean(s_i s_j r)| against the
  first-pass residual r of each output (finds pure interactions without main effects;
  costs m n^2 per output).

The screened pairs form one design fitted for all outputs at once by the batched
cross-validated lasso (``local``: each output restricted to its own columns, outputs taken in
groups whose union of pairs stays within ``max_pairs``; ``main``/``residual``: the union capped
at ``max_pairs``).
"""

from __future__ import annotations

from itertools import combinations

import numpy as np

from dataspex.fit.estimators.base import BaseInteractionEstimator, DataspexInputError, small_blas
from dataspex.fit.solvers.lasso import lasso_cv_batched
from dataspex.fit.estimators.result import InteractionResult
from dataspex.fit.estimators.transforms import ParityEncoder

__all__ = ["QuadraticProxy"]


def _strongest(col: np.ndarray, n_top: int) -> np.ndarray:
    """Indices of the n_top largest entries of col (>= 0) that are non-zero, ascending (ties: lower index)."""
    top = np.argsort(-col, kind="stable")[:n_top]
    return np.sort(top[col[top] > 0])


def _top_pairs_per_output(weights: np.ndarray, n_top: int) -> dict[tuple[int, int], float]:
    """Pairs among each output's n_top largest |weights[:, t]|, scored by max_t |w_i w_j|."""
    scores: dict[tuple[int, int], float] = {}
    norm = np.maximum(np.abs(weights).max(axis=0), 1e-300)
    rel = np.abs(weights) / norm  # comparable across outputs of different scales
    for t in range(weights.shape[1]):
        col = rel[:, t]
        top = _strongest(col, n_top)
        for a in range(len(top)):
            for b in range(a + 1, len(top)):
                i, j = int(top[a]), int(top[b])
                s = float(col[i] * col[j])
                if s > scores.get((i, j), -1.0):
                    scores[(i, j)] = s
    return scores


def _own_pairs(weights: np.ndarray, n_top: int) -> list[list[tuple[int, int]]]:
    """Per output t, the pairs (i < j) among its n_top largest non-zero |weights[:, t]| (ties: lower index)."""
    out = []
    for t in range(weights.shape[1]):
        top = _strongest(np.abs(weights[:, t]), n_top)
        out.append([(int(i), int(j)) for i, j in combinations(top.tolist(), 2)])
    return out


def _output_groups(own: list[list[tuple[int, int]]], max_pairs: int) -> list[np.ndarray]:
    """Consecutive outputs grouped so that each group's union of own pairs holds at most max_pairs (an output
    with more pairs than that alone is a group of its own)."""
    groups, current, union = [], [], set()
    for t, pairs in enumerate(own):
        grown = union | set(pairs)
        if current and len(grown) > max_pairs:
            groups.append(np.array(current))
            current, grown = [], set(pairs)
        current.append(t)
        union = grown
    if current:
        groups.append(np.array(current))
    return groups


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
        Examples per output whose pairs are candidates. For ``local`` 8 measured best on real text (planted
        fortunes / WordNet, m = 1,024: pooled held-out R^2 0.587 / 0.593 / 0.590 / 0.583 and 0.692 / 0.699 /
        0.701 / 0.697 for 4 / 8 / 12 / 20).
    max_pairs : int
        Cap on the pair columns of one design (``main``/``residual``: highest screening scores kept;
        ``local``: outputs are fitted in groups within the cap, nothing is dropped).
    screen : {"local", "main", "residual"}
        Screening rule (see module docstring).
    alpha, cv, n_alphas, eps, tol, max_iter, random_state :
        Passed to the batched lasso (alpha=None: per-output CV).

    Fitted: ``pairs_`` (P, 2) screened pairs, ``candidates_`` (P, T) bool (which outputs may use each pair:
    their own under ``local``, every output otherwise), ``alpha_`` (T,), ``result_``.
    """

    def __init__(
        self,
        n_top: int = 8,
        max_pairs: int = 2000,
        screen: str = "local",
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

    def _lasso(self, X: np.ndarray, Y: np.ndarray, alpha, allowed=None):
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
            allowed=allowed,
        )

    def _screen(self, S: np.ndarray, Y: np.ndarray, coef: np.ndarray, intercept: np.ndarray) -> np.ndarray:
        scores = _top_pairs_per_output(coef, int(self.n_top))
        if self.screen == "residual":
            S = S.astype(np.float64)
            resid = Y - (S @ coef + intercept)
            n_res = max(1, int(self.n_top) * (int(self.n_top) - 1) // 2)
            for key, val in _residual_pairs(S, resid, n_res).items():
                scores[key] = max(scores.get(key, 0.0), val)
        ranked = sorted(scores, key=lambda k: (-scores[k], k))[: int(self.max_pairs)]
        return np.array(sorted(ranked), dtype=np.int64).reshape(-1, 2)

    def _fit_local(self, masks: np.ndarray, S: np.ndarray, Y: np.ndarray, first: np.ndarray):
        """Each output on its main effects and its own pairs; returns (pairs (P, 2), candidates (P, T), coef
        (n + P, T), intercept (T,), alpha (T,)) with the union of pairs as columns and zeros where an output may
        not use a pair."""
        n, T = S.shape[1], Y.shape[1]
        own = _own_pairs(first, int(self.n_top))
        pairs = sorted(set().union(*own))
        column = {p: n + c for c, p in enumerate(pairs)}
        candidates = np.zeros((len(pairs), T), dtype=bool)
        for t, mine in enumerate(own):
            candidates[[column[p] - n for p in mine], t] = True
        coef = np.zeros((n + len(pairs), T))
        intercept, alpha = np.zeros(T), np.zeros(T)
        encoder = ParityEncoder(masks)
        alphas = np.broadcast_to(np.asarray(self.alpha, dtype=np.float64), (T,)) if self.alpha is not None else None
        for group in _output_groups(own, int(self.max_pairs)):
            union = sorted(set().union(*(own[t] for t in group)))
            local = {p: n + c for c, p in enumerate(union)}
            allowed = np.zeros((n + len(union), len(group)), dtype=bool)
            allowed[:n] = True
            for g, t in enumerate(group):
                allowed[[local[p] for p in own[t]], g] = True
            Phi = np.hstack([S, encoder.features(union, dtype=np.int8)]) if union else S
            c, b, a = self._lasso(Phi, Y[:, group], None if alphas is None else alphas[group], allowed)
            coef[np.ix_(np.r_[np.arange(n), [column[p] for p in union]].astype(np.int64), group)] = c
            intercept[group], alpha[group] = b, a
        return np.array(pairs, dtype=np.int64).reshape(-1, 2), candidates, coef, intercept, alpha

    def fit_summary(self) -> dict:
        """The screened pairs and the outputs that may use each (``screen``: {"pairs": [[i, j], ...], "outputs":
        [[t, ...], ...], or None where every output may use every pair, as under ``main`` and ``residual``}), so
        that `dataspex plan` can measure how much of the retrains they can hold at most
        (:func:`dataspex.fit.faithfulness.pair_energy`)."""
        shared = bool(self.candidates_.all())
        return {"screen": {"pairs": self.pairs_.tolist(), "outputs": None if shared else
                           [np.flatnonzero(row).tolist() for row in self.candidates_]}}

    def _fit(self, masks: np.ndarray, Y: np.ndarray) -> InteractionResult:
        if self.screen not in ("local", "main", "residual"):
            raise DataspexInputError(f"screen must be 'local', 'main' or 'residual', got {self.screen!r}")
        n = masks.shape[1]
        # Fourier characters of single examples, +-1 as int8: the lasso reads integer designs in row blocks (its
        # Grams in exact float32), so no (m, n + pairs) float array is made; at n = 10,000 and m = 20,000 a
        # float64 copy would take 1.6 GB before any pair column.
        S = (1 - 2 * masks.astype(np.int8)).astype(np.int8)
        first, first_intercept, _ = self._lasso(S, Y, None)
        if self.screen == "local":
            pairs, candidates, coef, intercept, alpha = self._fit_local(masks, S, Y, first)
        else:
            pairs = self._screen(S, Y, first, first_intercept)
            candidates = np.ones((len(pairs), Y.shape[1]), dtype=bool)
            Phi = np.hstack([S, ParityEncoder(masks).features([tuple(p) for p in pairs.tolist()], dtype=np.int8)])
            coef, intercept, alpha = self._lasso(Phi, Y, self.alpha)
        self.pairs_, self.candidates_, self.alpha_ = pairs, candidates, alpha
        keys = [(i,) for i in range(n)] + [tuple(map(int, p)) for p in pairs]
        used = np.flatnonzero(np.any(coef != 0, axis=1))
        return InteractionResult(
            n,
            [()] + [keys[u] for u in used],
            np.vstack([intercept[None, :], coef[used]]),
            estimator="QuadraticProxy",
        )
