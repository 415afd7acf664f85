"""Linear datamodels: one sparse (L1) linear model per output, all outputs solved together.

The solver works on sufficient statistics (Gram matrix G = Z'Z/m and B = Z'Y/m of the
standardised design Z), which are shared by every output, and runs accelerated proximal
gradient (FISTA) on all T outputs at once: each iteration is one (p x p) @ (p x T) matrix
product restricted to the rows that are non-zero for some output.  Each output gets its own
penalty, chosen by K-fold cross-validation along its own regularisation path (alpha grid
relative to that output's alpha_max), as LassoCV would, but without T separate solver runs.
"""

from __future__ import annotations

import numpy as np
import scipy.linalg
import scipy.sparse as sp
from sklearn.model_selection import KFold

from dataspex.estimators.base import BaseInteractionEstimator, DataspexInputError, small_blas
from dataspex.estimators.result import InteractionResult

__all__ = ["LinearDatamodel", "lasso_cv_batched"]


def _soft(a: np.ndarray, thr: np.ndarray) -> np.ndarray:
    return np.sign(a) * np.maximum(np.abs(a) - thr, 0.0)


def _lipschitz(G: np.ndarray) -> float:
    """Largest eigenvalue of the PSD Gram matrix (step size 1/L for proximal gradient)."""
    p = G.shape[0]
    if p == 0:
        return 1.0
    top = scipy.linalg.eigvalsh(G, subset_by_index=[p - 1, p - 1])[0]
    return float(max(top, 1e-12)) * 1.0001


def _gram_times(G: np.ndarray, Z: np.ndarray) -> np.ndarray:
    """G @ Z for symmetric G, exploiting that lasso iterates are sparse."""
    nz = Z != 0
    if np.count_nonzero(nz) < 0.1 * Z.size:
        # nnz * p work instead of p * p * T: sparse(Z^T) @ G = (G Z)^T since G = G^T.
        return np.asarray(sp.csr_matrix(Z.T) @ G).T
    rows = np.flatnonzero(nz.any(axis=1))
    return G[:, rows] @ Z[rows] if rows.size else np.zeros_like(Z)


def _fista(
    G: np.ndarray,
    B: np.ndarray,
    alpha: np.ndarray,
    W0: np.ndarray,
    L: float,
    tol: float,
    max_iter: int,
) -> np.ndarray:
    """Minimise 0.5 w'Gw - b'w + alpha_t |w|_1 for every column t of B (p, T) at once.

    Columns that have converged are frozen so late iterations only touch the slow ones;
    momentum restarts when it points uphill (O'Donoghue & Candes) for robustness.
    """
    W = W0.copy()
    active = np.arange(B.shape[1])
    Z = W.copy()
    t = np.ones(B.shape[1])
    for _ in range(max_iter):
        if active.size == 0:
            break
        Za = Z[:, active]
        grad = _gram_times(G, Za) - B[:, active]
        W_new = _soft(Za - grad / L, alpha[active] / L)
        W_old = W[:, active]
        step = W_new - W_old
        uphill = np.sum((Za - W_new) * step, axis=0) > 0
        ta = np.where(uphill, 1.0, t[active])
        t_new = 0.5 * (1.0 + np.sqrt(1.0 + 4.0 * ta**2))
        Z[:, active] = W_new + ((ta - 1.0) / t_new) * step
        W[:, active] = W_new
        t[active] = t_new
        scale = np.maximum(np.abs(W_new).max(axis=0), 1e-12)
        done = np.abs(step).max(axis=0) <= tol * scale
        Z[:, active[done]] = W[:, active[done]]
        active = active[~done]
    return W


def _alpha_grid(B: np.ndarray, n_alphas: int, eps: float) -> np.ndarray:
    """(n_alphas, T) geometric grids from each output's alpha_max = max_j |B[j, t]| down."""
    amax = np.maximum(np.abs(B).max(axis=0), 1e-12)
    return np.logspace(0.0, np.log10(eps), n_alphas)[:, None] * amax[None, :]


class _Stats:
    """Centered, scaled sufficient statistics of (Phi, Y) on a subset of rows."""

    def __init__(self, XtX, XtY, xsum, ysum, count, scale):
        mu, ybar = xsum / count, ysum / count
        self.mu, self.ybar, self.scale = mu, ybar, scale
        self.G = (XtX / count - np.outer(mu, mu)) / np.outer(scale, scale)
        self.B = (XtY / count - np.outer(mu, ybar)) / scale[:, None]
        self.L = _lipschitz(self.G)

    def predict(self, X: np.ndarray, W: np.ndarray, cols=slice(None)) -> np.ndarray:
        """Predictions (m_X, T_cols) for coefficient columns W of outputs ``cols``."""
        Wu = W / self.scale[:, None]  # back to X units: Z W = X Wu - mu Wu
        if np.count_nonzero(Wu) < 0.1 * Wu.size:
            XW = np.asarray(sp.csr_matrix(Wu.T) @ X.T).T
        else:
            XW = X @ Wu
        return XW - self.mu @ Wu + self.ybar[cols]


def lasso_cv_batched(X: np.ndarray, Y: np.ndarray, **kwargs) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """L1 regression of every column of Y (m, T) on X (m, p) with intercept.

    Objective per output: (1/2m) |y - c - Zw|^2 + alpha |w|_1 with Z the standardised X.
    Keywords: alpha (None: per-output alpha by ``cv``-fold CV (mean squared error) on a grid of
    ``n_alphas`` values from alpha_max down to eps * alpha_max; a float or (T,) array fixes it),
    cv, n_alphas, eps, tol, max_iter, random_state, patience (CV path early stop).
    Returns (coef (p, T) in X's units, intercept (T,), alpha (T,)).
    """
    p, T = np.shape(X)[1], np.shape(Y)[1]
    with small_blas(2.0 * p * p * T):
        return _lasso_cv(X, Y, **kwargs)


def _lasso_cv(
    X: np.ndarray,
    Y: np.ndarray,
    alpha=None,
    cv: int = 5,
    n_alphas: int = 30,
    eps: float = 1e-3,
    tol: float = 1e-5,
    max_iter: int = 3000,
    random_state: int | None = 0,
    patience: int = 5,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    X = np.asarray(X, dtype=np.float64)
    m, p = X.shape
    T = Y.shape[1]
    XtX, XtY = X.T @ X, X.T @ Y
    xsum, ysum = X.sum(axis=0), Y.sum(axis=0)
    scale = X.std(axis=0)
    scale[scale == 0] = 1.0  # constant columns get coefficient 0 anyway (zero Gram row)
    full = _Stats(XtX, XtY, xsum, ysum, m, scale)
    grid = _alpha_grid(full.B, n_alphas, eps)
    if alpha is None:
        n_splits = min(int(cv), m)
        if n_splits < 2:
            raise DataspexInputError(f"cross-validation needs cv >= 2 and m >= 2 (m={m}, cv={cv})")
        folds = []
        for tr, va in KFold(n_splits, shuffle=True, random_state=random_state).split(X):
            Xv, Yv = X[va], Y[va]
            st = _Stats(
                XtX - Xv.T @ Xv, XtY - Xv.T @ Yv, xsum - Xv.sum(0), ysum - Yv.sum(0), len(tr), scale
            )
            folds.append((st, Xv, Yv, np.zeros((p, T))))
        err = np.full((n_alphas, T), np.inf)
        live = np.arange(T)  # outputs whose CV error may still improve down the path
        for k in range(n_alphas):
            err[k, live] = 0.0
            for st, Xv, Yv, W in folds:
                W[:, live] = _fista(st.G, st.B[:, live], grid[k, live], W[:, live], st.L, tol, max_iter)
                err[k, live] += ((st.predict(Xv, W[:, live], live) - Yv[:, live]) ** 2).sum(axis=0)
            # Stop an output's path once its CV error has not improved for `patience` steps:
            # the small-alpha end is the most expensive part of the path and rarely chosen.
            since_best = k - np.argmin(err[: k + 1, live], axis=0)
            live = live[since_best < patience]
            if live.size == 0:
                break
        best = np.argmin(err, axis=0)  # first minimum = largest penalty among ties
        chosen = grid[best, np.arange(T)]
        steps, path_len = grid, best + 1
    else:
        chosen = np.broadcast_to(np.asarray(alpha, dtype=np.float64), (T,)).copy()
        if np.any(chosen < 0):
            raise DataspexInputError("alpha must be >= 0")
        # Warm-start down the grid (clipped at each output's alpha), then solve at alpha.
        steps = np.vstack([np.maximum(grid, chosen), chosen[None, :]])
        path_len = np.full(T, steps.shape[0])
    W = np.zeros((p, T))
    for k in range(int(path_len.max())):
        todo = np.flatnonzero(k < path_len)  # outputs whose path is not finished yet
        W[:, todo] = _fista(full.G, full.B[:, todo], steps[k, todo], W[:, todo], full.L, tol, max_iter)
    W_out = W
    coef = W_out / scale[:, None]
    intercept = full.ybar - full.mu @ coef
    return coef, intercept, chosen


class LinearDatamodel(BaseInteractionEstimator):
    """Sparse linear datamodel per output: f_t(x) ~ c_t + sum_i w_{i,t} x_i (L1, CV'd alpha).

    Parameters
    ----------
    alpha : float, array (T,) or None
        L1 penalty on the standardised design; None picks one per output by CV.
    cv : int
        Folds for choosing alpha.
    n_alphas, eps : path length and depth (alpha_min = eps * alpha_max per output).
    tol, max_iter : solver convergence (relative coefficient change) and iteration cap.
    random_state : fold shuffling seed.
    patience : stop an output's CV path after this many steps without improvement.

    Fitted: ``coef_`` (n, T) in mask units (the datamodel weights), ``intercept_`` (T,),
    ``alpha_`` (T,), ``result_`` (degree <= 1: F[()] = c + sum w/2, F[{i}] = -w_i/2).
    """

    def __init__(
        self,
        alpha=None,
        cv: int = 5,
        n_alphas: int = 30,
        eps: float = 1e-3,
        tol: float = 1e-5,
        max_iter: int = 3000,
        random_state: int | None = 0,
        patience: int = 5,
    ) -> None:
        self.alpha = alpha
        self.cv = cv
        self.n_alphas = n_alphas
        self.eps = eps
        self.tol = tol
        self.max_iter = max_iter
        self.random_state = random_state
        self.patience = patience

    def _fit(self, masks: np.ndarray, Y: np.ndarray) -> InteractionResult:
        coef, intercept, alpha = lasso_cv_batched(
            masks.astype(np.float64),
            Y,
            alpha=self.alpha,
            cv=self.cv,
            n_alphas=self.n_alphas,
            eps=self.eps,
            tol=self.tol,
            max_iter=self.max_iter,
            random_state=self.random_state,
            patience=self.patience,
        )
        self.coef_, self.intercept_, self.alpha_ = coef, intercept, alpha
        # x_i = (1 - (-1)^{x_i}) / 2 turns c + w.x into Fourier form.
        used = np.flatnonzero(np.any(coef != 0, axis=1))
        keys = [()] + [(int(i),) for i in used]
        fourier = np.vstack([intercept + coef.sum(axis=0) / 2.0, -coef[used] / 2.0])
        return InteractionResult(masks.shape[1], keys, fourier, estimator="LinearDatamodel")
