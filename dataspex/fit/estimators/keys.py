"""Interaction keys (sorted tuples of training-example indices) and the sparse linear maps between bases that
:class:`dataspex.fit.estimators.result.InteractionResult` applies to its coefficients."""

from __future__ import annotations

from itertools import combinations

import numpy as np
import scipy.sparse as sp

from dataspex.core.errors import DataspexInputError

__all__ = ["Key", "canonical_key", "drop_zero_rows", "merge_keys", "pair_transform", "subset_transform"]

Key = tuple[int, ...]


def canonical_key(key, n_features: int) -> Key:
    k = tuple(sorted(int(i) for i in key))
    if len(set(k)) != len(k):
        raise DataspexInputError(f"key {tuple(key)} repeats a feature index")
    if k and (k[0] < 0 or k[-1] >= n_features):
        raise DataspexInputError(f"key {k} has a feature outside [0, {n_features})")
    return k


def merge_keys(keys: list[Key], coef: np.ndarray) -> tuple[list[Key], np.ndarray]:
    """Sum rows with equal keys (keeps first-seen order)."""
    index: dict[Key, int] = {}
    rows = np.empty(len(keys), dtype=np.int64)
    for r, k in enumerate(keys):
        rows[r] = index.setdefault(k, len(index))
    if len(index) == len(keys):
        return keys, coef
    merged = np.zeros((len(index), coef.shape[1]))
    np.add.at(merged, rows, coef)
    return list(index), merged


def subset_transform(keys: list[Key], weight) -> tuple[list[Key], sp.csr_matrix]:
    """Sparse map from coefficients on ``keys`` to coefficients on all their subsets.

    Returns (sub_keys, M) with ``M[s, c] = weight(|sub_keys[s]|, |keys[c]|)`` whenever
    ``sub_keys[s]`` is a subset of ``keys[c]``; sub_keys sorted by (order, key).
    """
    index: dict[Key, int] = {}
    rows: list[int] = []
    cols: list[int] = []
    vals: list[float] = []
    for c, k in enumerate(keys):
        d = len(k)
        for r in range(d + 1):
            w = weight(r, d)
            for sub in combinations(k, r):
                rows.append(index.setdefault(sub, len(index)))
                cols.append(c)
                vals.append(w)
    sub_keys = sorted(index, key=lambda s: (len(s), s))
    perm = np.empty(len(index), dtype=np.int64)
    for new, s in enumerate(sub_keys):
        perm[index[s]] = new
    M = sp.csr_matrix(
        (np.asarray(vals, dtype=np.float64), (perm[np.asarray(rows, dtype=np.int64)], cols)),
        shape=(len(sub_keys), len(keys)),
    )
    return sub_keys, M


def drop_zero_rows(keys: list[Key], coef: np.ndarray) -> tuple[list[Key], np.ndarray]:
    keep = np.flatnonzero(np.any(coef != 0, axis=1))
    return [keys[r] for r in keep], coef[keep]


def pair_transform(keys: list[Key], weight, min_degree: int = 2, max_degree: int | None = None):
    """Sparse map from coefficients on keys to pair scores: (pairs (P, 2), M (P, n_keys))."""
    index: dict[tuple[int, int], int] = {}
    rows: list[int] = []
    cols: list[int] = []
    vals: list[float] = []
    for c, k in enumerate(keys):
        d = len(k)
        if d < min_degree or (max_degree is not None and d > max_degree):
            continue
        w = weight(d)
        for pair in combinations(k, 2):
            rows.append(index.setdefault(pair, len(index)))
            cols.append(c)
            vals.append(w)
    pairs = np.array(list(index), dtype=np.int64).reshape(-1, 2)
    M = sp.csr_matrix((vals, (rows, cols)), shape=(len(index), len(keys)))
    return pairs, M
