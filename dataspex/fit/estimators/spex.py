"""SPEX: sparse Fourier interactions from a structured (aliasing) mask design.

Our implementation of Kang et al. 2025 (arXiv 2502.13870), batched over the T outputs.

The design (:class:`dataspex.design.spex.SpexDesign`: C subsampling groups, P + 1 BCH delays, offsets) and its
row order are described in :mod:`dataspex.design.spex`.

Decoder (:class:`SPEX`)
-----------------------
For group c and delay p, the WHT over l of the ``2^b`` outputs gives, in bin j::

    U[c, p, j] = sum over k with M_c^T k = j of  F[k] (-1)^{<k, r_c>} (-1)^{<k, d_p>}.

A bin holding one k (a singleton) has ``|U[c, p, j]|`` constant over p and signs whose pattern
against p = 0 is the BCH syndrome of k.  We decode it (Berlekamp-Massey, Chien search), accept it
if k hashes to bin j and the fit residual is at the noise level, subtract k from its bin in every
group (peeling), and repeat.  Under noise, bins whose hard decision fails are retried with the
least reliable signs (smallest ``|U|``) flipped (Chase decoding), keeping the candidate with the
smallest residual.  Finally the values on each output's recovered support are refit by ridge
regression on all queried masks.
"""

from __future__ import annotations

import numpy as np
from scipy.stats import chi2

from dataspex.design.spex import SpexDesign
from dataspex.fit.solvers.lasso import lasso_cv_batched
from dataspex.fit.estimators.base import BaseInteractionEstimator, DataspexInputError
from dataspex.fit.estimators.result import InteractionResult
from dataspex.fit.estimators.transforms import ParityEncoder, fwht

__all__ = ["SPEX", "SpexDesign"]

# ---------------------------------------------------------------------------------------------
# The decoder
# ---------------------------------------------------------------------------------------------


class _Peeler:
    """Peeling decoder state for all outputs at once.

    ``U`` has shape ``(C, J, T, Q)``: group, bin, output, delay (Q = P + 1).  Recovered terms
    are appended to ``found_t`` (output), ``found_keys`` ((R, t) padded with -1) and
    ``found_vals`` (F in the dataspex convention).
    """

    def __init__(
        self, design: SpexDesign, U: np.ndarray, soft: bool, chase_bits: int, false_alarm: float
    ):
        self.design = design
        self.code = design.code
        self.U = U
        self.C, self.J, self.T, self.Q = U.shape
        self.soft = soft
        self.chase_bits = max(0, min(int(chase_bits), self.Q))
        self.bins = design.bin_codes()  # (C, n + 1)
        # Delay parity of example i (column n = padding, parity 0): (n + 1, Q).
        self.delay_cols = np.concatenate([design.delays.T, np.zeros((1, self.Q), np.uint8)])
        self.offset_cols = np.concatenate([design.offsets.T, np.zeros((1, self.C), np.uint8)])
        self.thr_active = chi2.ppf(1 - false_alarm, self.Q)
        self.thr_resid = chi2.ppf(1 - false_alarm, self.Q - 1)
        self.resid_median = chi2.ppf(0.5, self.Q - 1)
        # Round-off floor so that exact (noise-free) data never looks noisy.
        self.floor = 1e-16 * self.Q * np.maximum((U**2).max(axis=(0, 1, 3)), 1e-300)
        self.noise_var = self._initial_noise()
        self.found_t: list[np.ndarray] = []
        self.found_keys: list[np.ndarray] = []
        self.found_vals: list[np.ndarray] = []
        self.seen: set[tuple[int, ...]] = set()

    def _initial_noise(self) -> np.ndarray:
        """Per-output noise variance of one bin value, from the quietest quarter of the bins.

        Sparse spectra leave most bins empty, so a low quantile of the bin energies is noise.
        """
        energy = (self.U**2).sum(axis=3).reshape(-1, self.T)  # (C*J, T)
        return np.quantile(energy, 0.25, axis=0) / chi2.ppf(0.25, self.Q)

    # -- per-key quantities -----------------------------------------------------------------
    def _key_signs(self, keys: np.ndarray) -> np.ndarray:
        """``(-1)^{<k, d_p>}`` for padded key rows: (R, Q) float."""
        idx = np.where(keys < 0, self.design.n, keys)
        par = np.bitwise_xor.reduce(self.delay_cols[idx], axis=1)
        return 1.0 - 2.0 * par

    def _key_bins(self, keys: np.ndarray, groups: np.ndarray) -> np.ndarray:
        """Bin ``M_c^T k`` of each key in the given group(s) (broadcast)."""
        idx = np.where(keys < 0, self.design.n, keys)
        return np.bitwise_xor.reduce(self.bins[groups[:, None], idx], axis=1)

    def _offset_signs(self, keys: np.ndarray, groups: np.ndarray) -> np.ndarray:
        """``(-1)^{<k, r_c>}`` for each key and its group."""
        idx = np.where(keys < 0, self.design.n, keys)
        par = np.bitwise_xor.reduce(self.offset_cols[idx, groups[:, None]], axis=1)
        return 1.0 - 2.0 * par

    def _fit_candidates(self, obs, keys, ok, groups, bins):
        """Value (in bin sign convention) and residual energy of each candidate singleton.

        Candidates whose decode failed or that hash to another bin get residual +inf.
        """
        signs = self._key_signs(keys)
        val = (obs * signs).mean(axis=1)
        resid = ((obs - val[:, None] * signs) ** 2).sum(axis=1)  # direct: no cancellation
        consistent = ok & (self._key_bins(keys, groups) == bins)
        return val, np.where(consistent, resid, np.inf)

    # -- one round ----------------------------------------------------------------------------
    def round(self, multi: float | None = None) -> int:
        """Detect singletons in all bins of all outputs and peel them.

        ``multi``: also accept a hash-consistent decoded key whose fit leaves at most this
        fraction of its bin's energy (a dominant term of a multiton: when one term outweighs
        the rest of its bin, the signs are its syndrome); its value is corrected by later
        re-detections and by the final refit.  Returns the number of (output, key) pairs not
        recovered in earlier rounds.
        """
        energy = (self.U**2).sum(axis=3)  # (C, J, T)
        active = energy > self.noise_var * self.thr_active + self.floor
        c, j, t = np.nonzero(active)
        if c.size == 0:
            return 0
        obs = self.U[c, j, t]  # (B, Q)
        keys, ok = self._decode_signs(obs < 0)
        val, resid = self._fit_candidates(obs, keys, ok, c, j)
        self._update_noise(resid, t)
        limit = self.noise_var[t] * self.thr_resid + self.floor[t]
        accept = resid <= limit
        if self.soft:
            # Sign flips cannot fix a bin whose magnitudes already disagree: for any key,
            # sum_p (|obs_p| - a)^2 <= sum_p (obs_p - a sigma_p)^2, so this gate loses nothing.
            mags = np.abs(obs)
            spread = ((mags - mags.mean(axis=1, keepdims=True)) ** 2).sum(axis=1)
            retry = np.flatnonzero(~accept & (spread <= limit))
            if retry.size:
                k2, v2, r2 = self._chase(obs[retry], c[retry], j[retry])
                better = r2 < resid[retry]
                keys[retry[better]], val[retry[better]] = k2[better], v2[better]
                resid[retry[better]] = r2[better]
                accept = resid <= limit
        if multi is not None:
            accept |= resid <= float(multi) * (obs**2).sum(axis=1)
        if not accept.any():
            return 0
        a = np.flatnonzero(accept)
        value = val[a] * self._offset_signs(keys[a], c[a])
        return self._peel(t[a], keys[a], value)

    def _decode_signs(self, negative: np.ndarray):
        """Hard decision: syndrome bit p = sign of delay p differs from the undelayed sign."""
        syndromes = negative[:, 1:] ^ negative[:, :1]
        return self.code.decode(syndromes)

    def _update_noise(self, resid: np.ndarray, t: np.ndarray, min_bins: int = 5) -> None:
        """Re-estimate each output's noise from the residuals of hash-consistent singletons.

        Their residual is chi2 with Q - 1 degrees of freedom times the noise variance; the
        median is robust to the few multitons that happen to decode consistently.
        """
        good = np.isfinite(resid)
        if not good.any():
            return
        tt, rr = t[good], resid[good]
        order = np.lexsort((rr, tt))
        tt, rr = tt[order], rr[order]
        counts = np.bincount(tt, minlength=self.T)
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        has = counts >= min_bins
        lo = starts + (counts - 1) // 2
        hi = starts + counts // 2
        med = 0.5 * (rr[np.minimum(lo, rr.size - 1)] + rr[np.minimum(hi, rr.size - 1)])
        self.noise_var = np.where(has, med / self.resid_median, self.noise_var)

    def _chase(self, obs: np.ndarray, c: np.ndarray, j: np.ndarray):
        """Soft decoding: flip every subset of the least reliable signs, keep the best fit.

        Returns the best key, value and residual per bin (residual inf if nothing decoded).
        """
        B, L = obs.shape[0], self.chase_bits
        if L == 0:
            return (np.full((B, self.code.t), -1), np.zeros(B), np.full(B, np.inf))
        weakest = np.argsort(np.abs(obs), axis=1)[:, :L]  # (B, L)
        patterns = ((np.arange(1, 1 << L)[:, None] >> np.arange(L)) & 1).astype(bool)  # (F, L)
        flips = np.zeros((patterns.shape[0], B, self.Q), dtype=bool)
        rows = np.arange(B)[:, None]
        for f, pat in enumerate(patterns):
            flips[f][rows, weakest[:, pat]] = True
        negative = (obs < 0)[None] ^ flips  # (F, B, Q)
        keys, ok = self._decode_signs(negative.reshape(-1, self.Q))
        n_cand = patterns.shape[0]  # candidates are stored candidate-major: row f * B + bin
        val, resid = self._fit_candidates(
            np.tile(obs, (n_cand, 1)), keys, ok, np.tile(c, n_cand), np.tile(j, n_cand)
        )
        resid = resid.reshape(-1, B)
        best = np.argmin(resid, axis=0)
        pick = best * B + np.arange(B)
        return keys[pick], val[pick], resid[best, np.arange(B)]

    def _peel(self, t: np.ndarray, keys: np.ndarray, value: np.ndarray) -> int:
        """Merge detections of the same (output, key), record them, subtract from every group.

        Returns how many of the (output, key) pairs are new.
        """
        rows = np.column_stack([t, keys])
        uniq, inverse = np.unique(rows, axis=0, return_inverse=True)
        inverse = inverse.ravel()
        value = np.bincount(inverse, weights=value) / np.bincount(inverse)
        t, keys = uniq[:, 0], uniq[:, 1:]
        self.found_t.append(t)
        self.found_keys.append(keys)
        self.found_vals.append(value)
        before = len(self.seen)
        self.seen.update(map(tuple, uniq.tolist()))
        signs = self._key_signs(keys)  # (R, Q)
        flat = self.U.reshape(-1, self.Q)
        for g in range(self.C):
            group = np.full(len(t), g)
            bins = self._key_bins(keys, group)
            amp = value * self._offset_signs(keys, group)
            np.add.at(flat, (g * self.J + bins) * self.T + t, -amp[:, None] * signs)
        # Re-detections only correct earlier values; progress means new (output, key) pairs.
        return len(self.seen) - before

    def recovered(self):
        """All recovered terms, duplicates summed: (t (R,), keys (R, t), values (R,))."""
        if not self.found_t:
            return (np.zeros(0, np.int64), np.zeros((0, self.code.t), np.int64), np.zeros(0))
        rows = np.column_stack([np.concatenate(self.found_t), np.concatenate(self.found_keys)])
        uniq, inverse = np.unique(rows, axis=0, return_inverse=True)
        vals = np.bincount(inverse.ravel(), weights=np.concatenate(self.found_vals))
        return uniq[:, 0], uniq[:, 1:], vals


def _subsampled_transforms(design: SpexDesign, Y: np.ndarray) -> np.ndarray:
    """WHT of every group's and delay's 2^b outputs, all T outputs in one pass.

    Args:
        Y: ``(n_masks, T)`` in design order.

    Returns:
        ``(C, J, T, Q)`` bin values ``U[c, j, t, p] = 2^-b sum_l y[c, p, l, t] (-1)^{<j, l>}``.
    """
    C, Q, J, T = design.n_groups, design.n_delays, design.n_bins, Y.shape[1]
    blocks = Y.reshape(C, Q, J, T).transpose(2, 0, 3, 1)  # (J, C, T, Q)
    U = fwht(blocks.reshape(J, -1)) / J
    return np.ascontiguousarray(U.reshape(J, C, T, Q).transpose(1, 0, 2, 3))


def _keys_to_tuples(keys: np.ndarray) -> list[tuple[int, ...]]:
    return [tuple(int(i) for i in row if i >= 0) for row in keys]


def _refit(
    peeler: _Peeler, U0: np.ndarray, t: np.ndarray, keys: np.ndarray, alpha: float, block: int = 256
):
    """Ridge refit of each output's own support (plus the constant) on ALL design masks.

    For the design's masks the normal equations reduce to bin lookups, so no (m, n_keys)
    feature matrix is built.  With ``x = M_c l + d_p + r_c``, ``sigma_p(k) = (-1)^{<k, d_p>}``,
    ``o_c(k) = (-1)^{<k, r_c>}`` and ``h_c(k) = M_c^T k``::

        Phi^T y [k]    = J sum_c o_c(k) sum_p sigma_p(k) U0[c, h_c(k), t, p]
        Phi^T Phi[k,k'] = J sum_c o_c(k) o_c(k') [h_c(k) = h_c(k')] sum_p sigma_p(k) sigma_p(k')

    Args:
        U0: ``(C, J, T, Q)`` bin values before peeling.
        t, keys: recovered outputs ``(R,)`` and padded keys ``(R, t_max)``.

    Returns:
        ``(t, keys, coef)`` with the constant term (an all ``-1`` key row) of every output added.
    """
    C, J, T, Q = U0.shape
    m = C * J * Q
    nonempty = (keys >= 0).any(axis=1)  # the constant is added once per output below
    t, keys = t[nonempty], keys[nonempty]
    t = np.concatenate([np.arange(T), t])
    keys = np.concatenate([np.full((T, keys.shape[1]), -1, dtype=np.int64), keys])
    order = np.argsort(t, kind="stable")
    t, keys = t[order], keys[order]
    counts = np.bincount(t, minlength=T)
    rank = np.arange(len(t)) - (np.cumsum(counts) - counts)[t]
    width = int(counts.max())
    groups = np.arange(C)
    signs = peeler._key_signs(keys)  # (R, Q)
    bins = np.stack([peeler._key_bins(keys, np.full(len(t), g)) for g in groups], axis=1)
    osign = np.stack([peeler._offset_signs(keys, np.full(len(t), g)) for g in groups], axis=1)
    seen = U0[groups[None, :], bins, t[:, None]]  # (R, C, Q)
    rhs_rows = J * np.einsum("rc,rcq,rq->r", osign, seen, signs)
    coef_rows = np.zeros(len(t))
    for start in range(0, T, block):  # bounds the (outputs, width, width, C) comparison
        sel = np.flatnonzero((t >= start) & (t < start + block))
        tb, rb = t[sel] - start, rank[sel]
        nb = min(block, T - start)
        S = np.zeros((nb, width, Q))
        O = np.zeros((nb, width, C))
        H = np.full((nb, width, C), -1, dtype=np.int64)
        rhs = np.zeros((nb, width))
        S[tb, rb], O[tb, rb], H[tb, rb], rhs[tb, rb] = (
            signs[sel],
            osign[sel],
            bins[sel],
            rhs_rows[sel],
        )
        same = H[:, :, None, :] == H[:, None, :, :]
        alias = (same * O[:, :, None, :] * O[:, None, :, :]).sum(axis=3)
        gram = J * alias * np.einsum("tiq,tjq->tij", S, S)
        real = np.zeros((nb, width), dtype=bool)
        real[tb, rb] = True
        gram[:, np.arange(width), np.arange(width)] += np.where(real, alpha * m, 1.0)
        coef = np.linalg.solve(gram, rhs[..., None])[..., 0]
        coef_rows[sel] = coef[tb, rb]
    return t, keys, coef_rows


def _table(t: np.ndarray, keys: np.ndarray, values: np.ndarray, T: int):
    """Per-output terms -> (sorted union of key tuples, (n_keys, T) coefficients)."""
    tuples = _keys_to_tuples(keys)
    union = sorted({()} | set(tuples), key=lambda k: (len(k), k))
    col = {k: i for i, k in enumerate(union)}
    fourier = np.zeros((len(union), T))
    rows = np.fromiter((col[k] for k in tuples), dtype=np.int64, count=len(tuples))
    np.add.at(fourier, (rows, t), values)
    return union, fourier


class SPEX(BaseInteractionEstimator):
    """SPEX estimator: sparse, low-degree Fourier interactions of T outputs from a SPEX design.

    The design is part of the data: build a :class:`SpexDesign`, retrain on ``design.masks()``,
    then ``SPEX(design).fit(design.masks(), Y)`` or ``SPEX().fit(masks, Y, design=design)``
    (``design`` may also be the dict of :meth:`SpexDesign.to_dict`, e.g. loaded from JSON).  A
    design given to ``fit`` overrides the constructor's.  ``fit`` refuses masks that are not
    exactly the design's masks in design order.

    Parameters
    ----------
    design : SpexDesign, dict or None
        The design the masks came from.
    soft : bool
        Chase soft decoding of bins whose hard decision fails (costs a few more decodes).
    chase_bits : int
        How many of the least reliable signs soft decoding flips (2^chase_bits - 1 retries).
    max_rounds : int
        Cap on peeling rounds.
    false_alarm : float
        Tail probability of the chi-square tests that call a bin non-empty and a fit a singleton.
    refit : bool
        Refit each output's recovered values by ridge regression on all design masks (solved
        exactly in the bin domain, no feature matrix; recommended);
        False keeps the peeled estimates.
    alpha : float
        Ridge penalty per mask (the penalty is ``alpha * m``; the features are +-1).
    main_effects : bool
        After peeling, fit every output by cross-validated lasso on all n main effects plus the
        peeled keys (shapiq's final regression; rescues small budgets, costs a lasso over n + keys
        features).  False (default): the exact bin-domain refit of the peeled support only.
    multi_detect : float or None
        When strict singleton detection stalls, run a round that also peels the dominant
        term of multiton bins (fit residual <= this fraction of the bin energy, as
        shapiq/sparse-transform's "multi-detect" with its 0.9); this is what makes small
        budgets (few bins per term) work.  None: strict singletons only.

    Fitted attributes
    -----------------
    result_ : InteractionResult      keys shared by all outputs, fourier (n_keys, T).
    design_ : SpexDesign
    noise_var_ : (T,) float          estimated noise variance of one bin value per output.
    n_rounds_ : int                  peeling rounds run.
    n_peeled_ : int                  (output, key) terms recovered by peeling.
    n_features_in_, n_outputs_ : int
    """

    design_role = "spex"  # the structured masks of design=spex

    def __init__(
        self,
        design=None,
        *,
        soft: bool = True,
        chase_bits: int = 5,
        max_rounds: int = 20,
        false_alarm: float = 1e-3,
        refit: bool = True,
        alpha: float = 1e-10,
        multi_detect: float | None = 0.9,
        main_effects: bool = False,
    ) -> None:
        self.design = design
        self.soft = soft
        self.chase_bits = chase_bits
        self.max_rounds = max_rounds
        self.false_alarm = false_alarm
        self.refit = refit
        self.alpha = alpha
        self.multi_detect = multi_detect
        self.main_effects = main_effects

    def design_inputs(self, design_meta: dict) -> dict:
        """The run's SPEX design (its dict, stored in the design's metadata), which decoding needs."""
        return {"design": design_meta["spex"]}

    def fit(self, masks, Y, *, design=None):
        """Fit on the design's masks ``(n_masks, n)`` and outputs ``Y`` ``(n_masks,)`` or
        ``(n_masks, T)``; returns self."""
        self.design_ = self._resolve_design(self.design if design is None else design)
        return super().fit(masks, Y)

    @staticmethod
    def _resolve_design(design) -> SpexDesign:
        if isinstance(design, SpexDesign):
            return design
        if isinstance(design, dict):
            return SpexDesign.from_dict(design)
        if design is None:
            raise DataspexInputError(
                "SPEX needs the design its masks came from: SPEX(design=...) or "
                "fit(masks, Y, design=...) with a SpexDesign or its to_dict()"
            )
        raise DataspexInputError(f"design must be a SpexDesign or its dict, got {type(design)}")

    def _fit(self, masks: np.ndarray, Y: np.ndarray) -> InteractionResult:
        design = self.design_
        if masks.shape[1] != design.n:
            raise DataspexInputError(
                f"masks have {masks.shape[1]} columns but the SPEX design has n={design.n}"
            )
        design.check_masks(masks)
        if not 0 < self.false_alarm < 1:
            raise DataspexInputError(f"false_alarm must be in (0, 1), got {self.false_alarm}")
        U0 = _subsampled_transforms(design, Y)
        peeler = _Peeler(design, U0.copy(), bool(self.soft), self.chase_bits, self.false_alarm)
        self.n_rounds_ = 0
        for _ in range(int(self.max_rounds)):
            self.n_rounds_ += 1
            if peeler.round() == 0 and (
                self.multi_detect is None or peeler.round(multi=self.multi_detect) == 0
            ):
                break
        self.noise_var_ = peeler.noise_var
        found_t, found_keys, found_vals = peeler.recovered()
        self.n_peeled_ = len(found_t)
        if self.refit:
            found_t, found_keys, found_vals = _refit(
                peeler, U0, found_t, found_keys, float(self.alpha)
            )
        keys, fourier = _table(found_t, found_keys, found_vals, Y.shape[1])
        if self.main_effects:
            keys, fourier = self._lasso_main(masks, Y, keys)
        return InteractionResult(design.n, keys, fourier, estimator="SPEX")

    @staticmethod
    def _lasso_main(masks: np.ndarray, Y: np.ndarray, keys: list) -> tuple[list, np.ndarray]:
        """Cross-validated lasso of every output on all n main effects plus the peeled keys.

        As shapiq/sparse-transform's final regression: at small budgets (few bins per term)
        peeling finds little, but main effects are estimable from the design's masks directly.
        Shares one design over outputs (union of peeled keys) and the batched lasso.
        """
        n = masks.shape[1]
        union = sorted({tuple(k) for k in keys if len(k) >= 2} | {(i,) for i in range(n)}, key=lambda k: (len(k), k))
        Phi = ParityEncoder(masks).features(union, dtype=np.int8)
        coef, intercept, _ = lasso_cv_batched(Phi, Y)
        used = np.flatnonzero(np.any(coef != 0, axis=1))
        return [()] + [union[u] for u in used], np.vstack([intercept[None, :], coef[used]])
