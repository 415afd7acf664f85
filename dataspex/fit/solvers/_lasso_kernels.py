"""Compiled kernels of the batched lasso (numba, a dependency of galois; optional).

``HAVE_NUMBA`` is False when numba cannot be imported; linear.py then uses its numpy code.

The solver kernel reads the standardised Gram of a problem straight from raw moment matrices:

    G[i, j] = ((R1[i, j] + sgn2 * R2[i, j]) / count - mu[i] mu[j]) / (scale[i] scale[j])

(R2 is used when ``has2``: the training rows of a fold are "all rows minus the fold"), so no
per-problem Gram and no per-output sub-Gram is ever materialised outside a thread's scratch.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np

from dataspex.fit.solvers.blas import usable_cores

try:  # pragma: no cover - exercised implicitly wherever numba is installed
    import numba as nb

    HAVE_NUMBA = True
except Exception:  # noqa: BLE001 - any import failure means "use numpy"
    nb = None
    HAVE_NUMBA = False

__all__ = ["HAVE_NUMBA", "cd_solve", "gram_times", "quad_form", "csr_columns"]


if HAVE_NUMBA:

    @nb.njit(cache=True, nogil=True)
    def _sweep(G, q, b, x, thr, inv_d, coords, n_coords):  # pragma: no cover - compiled
        """One cyclic pass over coords[:n_coords]; returns the largest |change|."""
        w = x.shape[0]
        big = 0.0
        for e in range(n_coords):
            r = coords[e]
            z = x[r] - (q[r] - b[r]) * inv_d[r]
            if z > thr[r]:
                new = z - thr[r]
            elif z < -thr[r]:
                new = z + thr[r]
            else:
                new = 0.0
            delta = new - x[r]
            if delta != 0.0:
                for k in range(w):
                    q[k] += G[r, k] * delta
                x[r] = new
                if abs(delta) > big:
                    big = abs(delta)
        return big

    @nb.njit(cache=True, nogil=True)
    def _cd_solve(
        R1, R2, sgn2, has2, count, mu, scale, indptr, indices, b, alpha, x0, tol, max_sweeps, out,
        t_lo, t_hi,
    ):  # pragma: no cover - compiled
        """Lasso of every output t on its working set indices[indptr[t]:indptr[t+1]].

        Minimises 0.5 x'G_S x - b'x + alpha_t |x|_1 by cyclic coordinate descent in covariance
        form with active-set cycling (glmnet): sweeps over the non-zero coordinates until they
        settle, then one full sweep, until a full sweep moves no coefficient by more than
        tol * max|x|.  Warm start x0, result in out (both aligned with indices).
        """
        for t in range(t_lo, t_hi):
            lo = indptr[t]
            hi = indptr[t + 1]
            w = hi - lo
            if w == 0:
                continue
            G = np.empty((w, w))
            for a in range(w):
                ia = indices[lo + a]
                for c in range(w):
                    ic = indices[lo + c]
                    r = np.float64(R1[ia, ic])
                    if has2:
                        r += sgn2 * np.float64(R2[ia, ic])
                    G[a, c] = (r / count - mu[ia] * mu[ic]) / (scale[ia] * scale[ic])
            x = x0[lo:hi].copy()
            bb = b[lo:hi]
            q = np.zeros(w)
            for a in range(w):
                if x[a] != 0.0:
                    for k in range(w):
                        q[k] += G[a, k] * x[a]
            inv_d = np.empty(w)
            thr = np.empty(w)
            for a in range(w):
                d = max(G[a, a], 1e-12)
                inv_d[a] = 1.0 / d
                thr[a] = alpha[t] / d
            all_coords = np.arange(w)
            active = np.empty(w, dtype=np.int64)
            sweeps = 0
            while sweeps < max_sweeps:
                big = _sweep(G, q, bb, x, thr, inv_d, all_coords, w)
                sweeps += 1
                scale_x = max(np.max(np.abs(x)), 1e-12)
                if big <= tol * scale_x:
                    break
                n_act = 0
                for a in range(w):
                    if x[a] != 0.0:
                        active[n_act] = a
                        n_act += 1
                while sweeps < max_sweeps:
                    big = _sweep(G, q, bb, x, thr, inv_d, active, n_act)
                    sweeps += 1
                    if big <= tol * max(np.max(np.abs(x)), 1e-12):
                        break
            out[lo:hi] = x

    @nb.njit(cache=True, nogil=True)
    def _gram_times(R1, R2, sgn2, has2, indptr, indices, vals, out, t_lo, t_hi):  # pragma: no cover
        """out[t, :] = sum over e in t's range of vals[e] * (R1 + sgn2 R2)[indices[e], :]."""
        p = out.shape[1]
        for t in range(t_lo, t_hi):
            for e in range(indptr[t], indptr[t + 1]):
                j = indices[e]
                v = vals[e]
                for k in range(p):
                    out[t, k] += v * R1[j, k]
                if has2:
                    v2 = sgn2 * v
                    for k in range(p):
                        out[t, k] += v2 * R2[j, k]

    @nb.njit(cache=True, nogil=True)
    def _quad_form(R, indptr, indices, vals, out, t_lo, t_hi):  # pragma: no cover - compiled
        """out[t] = v_t' R v_t with v_t the sparse column (indices, vals) of output t."""
        for t in range(t_lo, t_hi):
            acc = 0.0
            for a in range(indptr[t], indptr[t + 1]):
                ia = indices[a]
                row = 0.0
                for c in range(indptr[t], indptr[t + 1]):
                    row += np.float64(R[ia, indices[c]]) * vals[c]
                acc += vals[a] * row
            out[t] = acc


def _run_split(kernel, args, indptr: np.ndarray, cost: np.ndarray, min_work: float = 2e6) -> None:
    """Run ``kernel(*args, t_lo, t_hi)`` over all outputs, split across threads when big.

    The kernels release the GIL; plain threads avoid OpenMP's barrier cost (~20 ms per
    parallel region measured on a busy 2-core machine, which dominated small problems).
    """
    T = len(indptr) - 1
    total = float(cost.sum())
    n = min(usable_cores(), T)
    if n <= 1 or total < min_work:
        kernel(*args, 0, T)
        return
    cum = np.cumsum(cost)
    bounds = [0] + [int(np.searchsorted(cum, total * k / n)) + 1 for k in range(1, n)] + [T]
    bounds = sorted(set(min(max(b, 0), T) for b in bounds))
    with ThreadPoolExecutor(max_workers=len(bounds) - 1) as pool:
        list(pool.map(lambda lo_hi: kernel(*args, *lo_hi), zip(bounds[:-1], bounds[1:])))


def cd_solve(R1, R2, sgn2, has2, count, mu, scale, indptr, indices, b, alpha, x0, tol, max_sweeps, out):
    """Batched working-set lasso (see ``_cd_solve``); threads over outputs when worthwhile."""
    sizes = np.diff(indptr).astype(np.float64)
    args = (R1, R2, sgn2, has2, count, mu, scale, indptr, indices, b, alpha, x0, tol, max_sweeps, out)
    _run_split(_cd_solve, args, indptr, 10.0 * sizes**2)


def gram_times(R1, R2, sgn2, has2, indptr, indices, vals, out):
    """``out[t] = sum_e vals[e] R[indices[e], :]`` per output (nnz x p work, memory bound)."""
    cost = np.diff(indptr).astype(np.float64) * out.shape[1] * (2.0 if has2 else 1.0)
    _run_split(_gram_times, (R1, R2, sgn2, has2, indptr, indices, vals, out), indptr, cost)


def quad_form(R, indptr, indices, vals, out):
    """``out[t] = v_t' R v_t`` for sparse columns v_t; threads over outputs when big."""
    cost = np.diff(indptr).astype(np.float64) ** 2
    _run_split(_quad_form, (R, indptr, indices, vals, out), indptr, cost)


def csr_columns(S: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(indptr (T+1,), indices) of the True entries of each column of S (p, T), rows ascending."""
    t, r = np.nonzero(S.T)
    indptr = np.zeros(S.shape[1] + 1, dtype=np.int64)
    np.cumsum(np.bincount(t, minlength=S.shape[1]), out=indptr[1:])
    return indptr, r.astype(np.int64)
