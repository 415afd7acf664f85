"""Boolean-cube transforms: Walsh-Hadamard, Fourier features, Fourier <-> Moebius.

Conventions used throughout dataspex
-----------------------------------
* A mask is a row ``x in {0,1}^n`` (1 = training example kept).
* Fourier basis: ``f(x) = sum_k F[k] * (-1)^{|k & x|}``.
* Moebius basis: ``f(x) = sum_{S subset of x} a[S]``.
* Dense spectra over all ``2^n`` subsets use the *little-endian* integer code of a subset:
  subset ``k`` <-> integer ``sum_{i in k} 2^i``, and mask row ``r`` of :func:`all_masks` has
  ``x_i = (r >> i) & 1``.  With this order ``values = fwht(F)`` and ``F = fwht(values) / 2^n``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

Key = tuple[int, ...]

__all__ = [
    "all_masks",
    "fwht",
    "fourier_from_values",
    "values_from_fourier",
    "fourier_to_moebius_dense",
    "moebius_to_fourier_dense",
    "subset_index",
    "index_subset",
    "fourier_features",
    "fourier_predict",
    "ParityEncoder",
]


def all_masks(n: int) -> np.ndarray:
    """All ``2^n`` masks, shape ``(2^n, n)`` uint8; row ``r`` has ``x_i = (r >> i) & 1``."""
    if n < 0 or n > 24:
        raise ValueError(f"all_masks needs 0 <= n <= 24, got {n}")
    rows = np.arange(2**n, dtype=np.int64)[:, None]
    return ((rows >> np.arange(n, dtype=np.int64)) & 1).astype(np.uint8)


def subset_index(key: Sequence[int]) -> int:
    """Little-endian integer code of a subset (its row in a dense spectrum)."""
    return int(sum(1 << int(i) for i in key))


def index_subset(code: int, n: int) -> Key:
    """Inverse of :func:`subset_index` for ``n`` features."""
    return tuple(i for i in range(n) if (code >> i) & 1)


def _as_2d(a: np.ndarray) -> tuple[np.ndarray, bool]:
    a = np.asarray(a, dtype=np.float64)
    return (a[:, None], True) if a.ndim == 1 else (a, False)


def _n_from_length(length: int) -> int:
    n = int(length).bit_length() - 1
    if length < 1 or 2**n != length:
        raise ValueError(f"length {length} is not a power of two")
    return n


def fwht(a: np.ndarray) -> np.ndarray:
    """Unnormalised Walsh-Hadamard transform ``H a`` along axis 0.

    ``a`` has shape ``(2^n,)`` or ``(2^n, T)`` (all T columns are transformed at once);
    ``H[r, k] = (-1)^{popcount(r & k)}``.  The transform is its own inverse up to ``2^n``.
    """
    a, squeeze = _as_2d(a)
    n = _n_from_length(a.shape[0])
    T = a.shape[1]
    out = a.copy()
    for h in range(n):
        # Row index = hi * 2^(h+1) + bit_h * 2^h + lo: pair up rows differing only in bit h.
        v = out.reshape(-1, 2, 2**h, T)
        lo, hi = v[:, 0].copy(), v[:, 1]
        v[:, 0] += hi
        v[:, 1] = lo - hi
    return out[:, 0] if squeeze else out


def fourier_from_values(values: np.ndarray) -> np.ndarray:
    """Dense Fourier spectrum ``(2^n[, T])`` from values on :func:`all_masks` rows."""
    values = np.asarray(values, dtype=np.float64)
    return fwht(values) / values.shape[0]


def values_from_fourier(fourier: np.ndarray) -> np.ndarray:
    """Values on :func:`all_masks` rows from a dense Fourier spectrum ``(2^n[, T])``."""
    return fwht(fourier)


def _superset_sum(a: np.ndarray) -> np.ndarray:
    """``out[S] = sum_{K superset of S} a[K]`` over dense spectra ``(2^n, T)``."""
    n = _n_from_length(a.shape[0])
    T = a.shape[1]
    out = a.copy()
    for h in range(n):
        v = out.reshape(-1, 2, 2**h, T)
        v[:, 0] += v[:, 1]
    return out


def _popcounts(n: int) -> np.ndarray:
    return all_masks(n).sum(axis=1).astype(np.int64)


def fourier_to_moebius_dense(fourier: np.ndarray) -> np.ndarray:
    """Dense Moebius ``a[S] = (-2)^{|S|} sum_{k >= S} F[k]``; shape ``(2^n[, T])`` both ways."""
    F, squeeze = _as_2d(fourier)
    n = _n_from_length(F.shape[0])
    a = _superset_sum(F) * ((-2.0) ** _popcounts(n))[:, None]
    return a[:, 0] if squeeze else a


def moebius_to_fourier_dense(moebius: np.ndarray) -> np.ndarray:
    """Dense Fourier ``F[k] = (-1)^{|k|} sum_{S >= k} a[S] / 2^{|S|}``; shape ``(2^n[, T])``.

    Follows from ``x_i = (1 - (-1)^{x_i}) / 2`` expanded inside ``prod_{i in S} x_i``.
    """
    a, squeeze = _as_2d(moebius)
    n = _n_from_length(a.shape[0])
    pc = _popcounts(n)
    F = _superset_sum(a * (0.5**pc)[:, None]) * ((-1.0) ** pc)[:, None]
    return F[:, 0] if squeeze else F


# ---------------------------------------------------------------------------------------------
# Sparse Fourier features (parities of key subsets) without an (m, n) float blow-up.
# ---------------------------------------------------------------------------------------------


def _pack_rows(bits: np.ndarray) -> np.ndarray:
    """Pack a (n_cols, m) 0/1 uint8 array along m into uint64 words: (n_cols, ceil(m/64))."""
    n_cols, m = bits.shape
    n_words = max(1, -(-m // 64))
    packed = np.packbits(bits, axis=1, bitorder="little")  # (n_cols, ceil(m/8))
    buf = np.zeros((n_cols, n_words * 8), dtype=np.uint8)
    buf[:, : packed.shape[1]] = packed
    return buf.view(np.uint64)


class ParityEncoder:
    """Parities ``|k & x| mod 2`` of many key sets over one fixed mask matrix.

    The mask columns are bit-packed once (64 masks per uint64 word, ~n*m/8 bytes), so
    estimators that need features for several supports (one per output) share the packing.
    Each key's parity is then an XOR of packed columns: no (m, n) float array is ever built.
    """

    def __init__(self, masks: np.ndarray) -> None:
        masks = _check_masks(masks)
        self.n_masks, self.n_features = masks.shape
        self._packed = _pack_rows(np.ascontiguousarray(masks.T, dtype=np.uint8))

    def parity_bits(self, keys: Sequence[Key]) -> np.ndarray:
        """(n_keys, m) uint8 array of parities."""
        m, n_keys = self.n_masks, len(keys)
        out = np.zeros((n_keys, m), dtype=np.uint8)
        if n_keys == 0 or m == 0:
            return out
        degrees = np.fromiter((len(k) for k in keys), dtype=np.int64, count=n_keys)
        for d in np.unique(degrees):
            if d == 0:
                continue  # empty key: parity 0 everywhere
            rows = np.flatnonzero(degrees == d)
            idx = np.array([keys[r] for r in rows], dtype=np.int64).reshape(len(rows), int(d))
            if idx.min() < 0 or idx.max() >= self.n_features:
                raise ValueError(f"key feature outside [0, {self.n_features})")
            acc = self._packed[idx[:, 0]].copy()
            for c in range(1, int(d)):
                acc ^= self._packed[idx[:, c]]
            out[rows] = np.unpackbits(acc.view(np.uint8), axis=1, bitorder="little", count=m)
        return out

    def features(self, keys: Sequence[Key], dtype: type = np.float64) -> np.ndarray:
        """Fourier design ``(-1)^{|k & x|}``, shape (m, n_keys)."""
        bits = self.parity_bits(keys)
        phi = np.empty((self.n_masks, len(keys)), dtype=dtype)
        phi[...] = 1 - 2 * bits.T.astype(np.int8)
        return phi


def _parity_bits(masks: np.ndarray, keys: Sequence[Key]) -> np.ndarray:
    """Parities as (n_keys, m) uint8, packing only the columns that occur in some key."""
    used = sorted({i for k in keys for i in k})
    if not used:
        return np.zeros((len(keys), masks.shape[0]), dtype=np.uint8)
    col_of = {f: c for c, f in enumerate(used)}
    enc = ParityEncoder(masks[:, used])
    return enc.parity_bits([tuple(col_of[i] for i in k) for k in keys])


def _check_masks(masks: np.ndarray) -> np.ndarray:
    masks = np.asarray(masks)
    if masks.ndim != 2:
        raise ValueError(f"masks must be 2-D (m, n), got shape {masks.shape}")
    if masks.dtype != np.uint8:
        masks = masks.astype(np.uint8)
    return masks


def fourier_features(
    masks: np.ndarray, keys: Sequence[Key], dtype: type = np.float64
) -> np.ndarray:
    """Fourier design matrix ``Phi[r, c] = (-1)^{|keys[c] & masks[r]|}``, shape ``(m, n_keys)``.

    ``masks`` is (m, n) 0/1 (uint8 or bool).  Works for m ~ 20k, n ~ 10k and thousands of
    keys: the only large array is the returned one (use ``dtype=np.float32`` or
    :func:`fourier_predict` to save memory).
    """
    masks = _check_masks(masks)
    keys = [tuple(int(i) for i in k) for k in keys]
    bits = _parity_bits(masks, keys)  # (n_keys, m)
    phi = np.empty((masks.shape[0], len(keys)), dtype=dtype)
    phi[...] = 1 - 2 * bits.T.astype(np.int8)
    return phi


def fourier_predict(
    masks: np.ndarray, keys: Sequence[Key], coef: np.ndarray, block: int = 2048
) -> np.ndarray:
    """``fourier_features(masks, keys) @ coef`` in key blocks; coef (n_keys, T) -> (m, T)."""
    masks = _check_masks(masks)
    coef = np.asarray(coef, dtype=np.float64)
    squeeze = coef.ndim == 1
    coef = coef[:, None] if squeeze else coef
    keys = [tuple(int(i) for i in k) for k in keys]
    out = np.zeros((masks.shape[0], coef.shape[1]), dtype=np.float64)
    for start in range(0, len(keys), block):
        phi = fourier_features(masks, keys[start : start + block])
        out += phi @ coef[start : start + block]
    return out[:, 0] if squeeze else out
