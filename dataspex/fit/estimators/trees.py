"""Exact Fourier transform of LightGBM ensembles on {0,1}^n (step 3 of ProxySPEX, :mod:`.proxyspex`).

Every reachable leaf is a product of indicator functions [x_f = b] = (1 + (-1)^b (-1)^{x_f}) / 2, expanded over
the subsets of its path, computed for all leaves at once with integer-coded keys. A booster is read into a
*leaf table* ({path length d: (features, bits, values, tree ids)}), from LightGBM's model text (fast,
vectorised) or its ``dump_model()`` walk; the energy cut of the resulting spectrum is here too.
"""

from __future__ import annotations

import itertools

import numpy as np

from dataspex.fit.estimators.base import DataspexInputError

__all__ = ["booster_to_fourier"]

_MAX_PATH = 20  # a leaf with a longer path would expand into more than 2^20 coefficients


# ------------------------------------------------------------------------------------------
# Exact tree -> Fourier extraction
# ------------------------------------------------------------------------------------------


def _goes_left(node: dict) -> tuple[bool, bool]:
    """Whether x_f = 0 and x_f = 1 go to the left child, following LightGBM's decision rules."""
    decision = node.get("decision_type", "<=")
    if decision == "==":  # categorical split: threshold lists the categories sent left
        cats = {int(float(c)) for c in str(node["threshold"]).split("||") if c != ""}
        return 0 in cats, 1 in cats
    if decision != "<=":
        raise DataspexInputError(f"unsupported LightGBM decision_type {decision!r}")
    thr = float(node["threshold"])
    left = [0.0 <= thr, 1.0 <= thr]
    if node.get("missing_type", "None") == "Zero":  # zeros are "missing": default direction
        left[0] = bool(node.get("default_left", True))
    return left[0], left[1]


def _tree_leaves(root: dict) -> list[tuple[tuple[int, ...], tuple[int, ...], float]]:
    """Reachable leaves of one dumped tree as (features sorted, required bits, value).

    A feature tested twice on a path keeps one condition (x^2 = x); contradictory tests make
    the leaf unreachable on {0,1}^n, and splits that send both values one way add no condition.
    """
    leaves = []
    stack: list[tuple[dict, dict[int, int]]] = [(root, {})]
    while stack:
        node, cond = stack.pop()
        if "leaf_value" in node:
            feats = tuple(sorted(cond))
            leaves.append((feats, tuple(cond[f] for f in feats), float(node["leaf_value"])))
            continue
        f = int(node["split_feature"])
        l0, l1 = _goes_left(node)
        for child, sent in ((node["left_child"], (l0, l1)), (node["right_child"], (not l0, not l1))):
            values = [v for v in (0, 1) if sent[v]]
            if not values:
                continue
            if len(values) == 2:  # no restriction on x_f along this branch
                stack.append((child, cond))
                continue
            b = values[0]
            if f in cond:
                if cond[f] == b:
                    stack.append((child, cond))
                continue  # contradiction: unreachable
            stack.append((child, {**cond, f: b}))
    return leaves


class _KeyCoder:
    """Consistent int64 codes for sorted feature tuples: digits (f + 1) in base n + 1."""

    def __init__(self, n_features: int, max_degree: int) -> None:
        self.base = n_features + 1
        if max_degree * np.log2(self.base) >= 62:
            raise DataspexInputError(
                f"keys of degree {max_degree} over {n_features} features overflow the key code; "
                f"use a smaller max_depth"
            )

    def encode_columns(self, cols: list[np.ndarray], length: int) -> np.ndarray:
        code = np.zeros(length, dtype=np.int64)
        for q, c in enumerate(cols):
            code += (c.astype(np.int64) + 1) * (self.base**q)
        return code

    def decode(self, codes: np.ndarray) -> list[tuple[int, ...]]:
        out = []
        for c in codes.tolist():
            key = []
            while c:
                c, digit = divmod(c, self.base)
                key.append(digit - 1)
            out.append(tuple(key))
        return out


def _leaf_table_from_list(leaves, tree_ids=None) -> dict:
    """Leaf table by path length d: {d: (F (N, d) int64 sorted rows, B (N, d) uint8, values, tree ids)}."""
    by_depth: dict[int, list] = {}
    for r, (feats, bits, val) in enumerate(leaves):
        by_depth.setdefault(len(feats), []).append((feats, bits, val, 0 if tree_ids is None else tree_ids[r]))
    table = {}
    for d, g in by_depth.items():
        table[d] = (
            np.array([x[0] for x in g], dtype=np.int64).reshape(len(g), d),
            np.array([x[1] for x in g], dtype=np.uint8).reshape(len(g), d),
            np.array([x[2] for x in g], dtype=np.float64),
            np.array([x[3] for x in g], dtype=np.int64),
        )
    return table


def _prefix(table: dict, n_trees: int) -> dict:
    """The leaf table of the first n_trees trees."""
    out = {}
    for d, (F, B, v, tr) in table.items():
        keep = tr < n_trees
        out[d] = (F[keep], B[keep], v[keep], tr[keep])
    return out


def _leaf_terms(leaves, coder: _KeyCoder, n_patterns_cap: int = 2**_MAX_PATH, feature_map=None):
    """Expand leaves into (codes, coefs): sum over leaves and subsets k of each path.

    ``leaves``: a list of (features, bits, value) or a leaf table (see ``_leaf_table_from_list``).
    ``feature_map`` (increasing int array) maps a booster's feature index to the code index.
    """
    table = leaves if isinstance(leaves, dict) else _leaf_table_from_list(leaves)
    codes, coefs = [], []
    for d, (F, B, v, _) in table.items():
        if len(v) == 0:
            continue
        if 2**d > n_patterns_cap:
            raise DataspexInputError(f"tree path of length {d} is too deep to expand")
        vals = v * 0.5**d
        if d == 0:
            codes.append(np.zeros(len(v), dtype=np.int64))
            coefs.append(vals)
            continue
        if feature_map is not None:
            F = feature_map[F]  # increasing map: rows stay sorted
        S = 1.0 - 2.0 * B.astype(np.float64)  # (-1)^b
        for r in range(d + 1):
            for cols in itertools.combinations(range(d), r):
                cols = list(cols)
                codes.append(coder.encode_columns([F[:, c] for c in cols], len(v)))
                coefs.append(vals * np.prod(S[:, cols], axis=1) if cols else vals)
    if not codes:
        return np.zeros(0, dtype=np.int64), np.zeros(0)
    codes_all, coefs_all = np.concatenate(codes), np.concatenate(coefs)
    uniq, inv = np.unique(codes_all, return_inverse=True)
    return uniq, np.bincount(inv, weights=coefs_all, minlength=len(uniq))


def _parse_model_text(text: str):
    """Per-tree arrays from LightGBM's model text, or None if a tree is not a plain numerical tree.

    Much faster than ``dump_model()`` (JSON) plus a Python walk of every node.
    """
    trees = []
    for block in text.split("\nTree=")[1:]:
        fields = {}
        for line in block.split("\n"):
            if line.startswith("end of trees"):
                break
            key, sep, val = line.partition("=")
            if sep:
                fields[key] = val
        if fields.get("is_linear", "0") != "0" or int(fields.get("num_cat", "0")) != 0:
            return None
        n_leaves = int(fields["num_leaves"])
        leaf_value = np.array(fields["leaf_value"].split(), dtype=np.float64)
        if n_leaves == 1:
            trees.append((None, None, None, None, None, leaf_value))
            continue
        dtype = np.array(fields["decision_type"].split(), dtype=np.int64)
        if np.any(dtype & 1) or np.any(((dtype >> 2) & 3) == 1):  # categorical or zero-as-missing
            return None
        trees.append(
            (
                np.array(fields["split_feature"].split(), dtype=np.int64),
                np.array(fields["threshold"].split(), dtype=np.float64),
                np.array(fields["left_child"].split(), dtype=np.int64),
                np.array(fields["right_child"].split(), dtype=np.int64),
                dtype,
                leaf_value,
            )
        )
    return trees


def _leaf_table_from_text(text: str, max_depth: int = _MAX_PATH):
    """Leaf table of a LightGBM model text (vectorised over all leaves), or None (fallback)."""
    trees = _parse_model_text(text)
    if trees is None:
        return None
    stump_vals, stump_ids = [], []
    # Global arrays of internal nodes and, per leaf, its parent node and side.
    n_feat, n_thr, n_parent, n_side = [], [], [], []
    leaf_parent, leaf_side, leaf_val, leaf_tree = [], [], [], []
    offset = 0
    for t, (sf, thr, lc, rc, _, lv) in enumerate(trees):
        if sf is None:
            stump_vals.append(lv[0])
            stump_ids.append(t)
            continue
        k = len(sf)
        parent = np.full(k, -1, dtype=np.int64)
        side = np.zeros(k, dtype=np.int64)
        lparent = np.zeros(len(lv), dtype=np.int64)
        lside = np.zeros(len(lv), dtype=np.int64)
        for children, sd in ((lc, 0), (rc, 1)):
            inner = children >= 0
            parent[children[inner]] = np.flatnonzero(inner) + offset
            side[children[inner]] = sd
            leaf = ~inner
            lparent[-children[leaf] - 1] = np.flatnonzero(leaf) + offset
            lside[-children[leaf] - 1] = sd
        n_feat.append(sf)
        n_thr.append(thr)
        n_parent.append(np.where(parent >= 0, parent, -1))
        n_side.append(side)
        leaf_parent.append(lparent)
        leaf_side.append(lside)
        leaf_val.append(lv)
        leaf_tree.append(np.full(len(lv), t, dtype=np.int64))
        offset += k
    table: dict = {}
    if stump_vals:
        table[0] = (np.zeros((len(stump_vals), 0), np.int64), np.zeros((len(stump_vals), 0), np.uint8),
                     np.array(stump_vals), np.array(stump_ids, dtype=np.int64))
    if not leaf_val:
        return table
    nf, nt_, npar, nsd = (np.concatenate(x) for x in (n_feat, n_thr, n_parent, n_side))
    node, sd = np.concatenate(leaf_parent), np.concatenate(leaf_side)
    val, tree = np.concatenate(leaf_val), np.concatenate(leaf_tree)
    L = len(val)
    # Walk up: at each level, the condition x_f in {values sent to this side}.
    # For x in {0, 1}: left gets x <= thr, i.e. {0} if 0 <= thr < 1, both if thr >= 1, none if thr < 0.
    F = np.full((L, max_depth + 1), -1, dtype=np.int64)
    Bv = np.zeros((L, max_depth + 1), dtype=np.int64)  # required value, or -1: no condition
    alive = np.ones(L, dtype=bool)
    level = 0
    cur, cur_side = node.copy(), sd.copy()
    active = np.ones(L, dtype=bool)
    while active.any():
        if level > max_depth:
            raise DataspexInputError("tree path too deep to expand")
        idx = np.flatnonzero(active)
        c, s_ = cur[idx], cur_side[idx]
        thr = nt_[c]
        zero_left, one_left = thr >= 0.0, thr >= 1.0
        sent0 = np.where(s_ == 0, zero_left, ~zero_left)
        sent1 = np.where(s_ == 0, one_left, ~one_left)
        alive[idx[~sent0 & ~sent1]] = False
        one_value = sent0 ^ sent1
        F[idx[one_value], level] = nf[c[one_value]]
        Bv[idx[one_value], level] = sent1[one_value].astype(np.int64)
        up = npar[c]
        cur_side[idx] = nsd[c]
        cur[idx] = up
        active[idx[up < 0]] = False
        level += 1
    F, Bv = F[:, :level], Bv[:, :level]
    # Merge repeated features on a path (x^2 = x); disagreeing requirements: unreachable leaf.
    order = np.argsort(np.where(F < 0, np.iinfo(np.int64).max, F), axis=1, kind="stable")
    F = np.take_along_axis(F, order, axis=1)
    Bv = np.take_along_axis(Bv, order, axis=1)
    dup = np.zeros_like(F, dtype=bool)
    dup[:, 1:] = (F[:, 1:] == F[:, :-1]) & (F[:, 1:] >= 0)
    clash = dup.copy()
    clash[:, 1:] &= Bv[:, 1:] != Bv[:, :-1]
    alive &= ~clash.any(axis=1)
    F = np.where(dup, -1, F)
    order = np.argsort(np.where(F < 0, np.iinfo(np.int64).max, F), axis=1, kind="stable")
    F = np.take_along_axis(F, order, axis=1)
    Bv = np.take_along_axis(Bv, order, axis=1)
    depth = (F >= 0).sum(axis=1)
    for d in np.unique(depth[alive]):
        rows = np.flatnonzero(alive & (depth == d))
        d = int(d)
        G = (F[rows, :d], Bv[rows, :d].astype(np.uint8), val[rows], tree[rows])
        if d in table:
            table[d] = tuple(np.concatenate([a, b]) for a, b in zip(table[d], G))
        else:
            table[d] = G
    return table


def _leaf_table(booster) -> dict:
    """Leaf table of a trained booster: fast text parse, else the dump_model() walk."""
    table = _leaf_table_from_text(booster.model_to_string())
    if table is not None:
        return table
    dump = booster.dump_model()
    _ensemble_leaves(dump)  # validation
    leaves, ids = [], []
    for t, tree in enumerate(dump["tree_info"]):
        lv = _tree_leaves(tree["tree_structure"])
        leaves.extend(lv)
        ids.extend([t] * len(lv))
    return _leaf_table_from_list(leaves, ids)


def _dump(model) -> dict:
    if isinstance(model, dict):
        return model
    booster = getattr(model, "booster_", model)
    return booster.dump_model()


def _ensemble_leaves(dump: dict) -> list:
    if dump.get("num_tree_per_iteration", 1) != 1:
        raise DataspexInputError("only single-output (regression) LightGBM models are supported")
    leaves = []
    for tree in dump["tree_info"]:
        if tree.get("is_linear", False):
            raise DataspexInputError("linear-tree LightGBM models are not supported")
        leaves.extend(_tree_leaves(tree["tree_structure"]))
    return leaves


def _compact_terms(leaves, bound: int, cols=None):
    """Exact spectrum of leaves as (keys as tuples of mask columns, coef), plus the code arrays.

    Features are re-coded compactly (only those the ensemble splits on), so the int64 key code
    never overflows for realistic ensembles whatever n is; ``cols`` maps booster feature
    indices to mask columns (screened boosters).  Returns (codes, coefs, decode) with
    ``decode(codes)`` -> list of key tuples in mask columns; code 0 is the empty key.
    """
    table = leaves if isinstance(leaves, dict) else _leaf_table_from_list(leaves)
    parts = [F.ravel() for F, _, _, _ in table.values()]
    used = np.unique(np.concatenate(parts)) if parts else np.zeros(0, dtype=np.int64)
    remap = np.zeros(int(used[-1]) + 1 if used.size else 1, dtype=np.int64)
    remap[used] = np.arange(used.size)
    depth = max((d for d, g in table.items() if len(g[2])), default=1)  # the actual longest path
    coder = _KeyCoder(max(int(used.size), 1), max(depth, 1))  # bound: kept for callers
    codes, coefs = _leaf_terms(table, coder, feature_map=remap)
    glob = used if cols is None else np.asarray(cols, dtype=np.int64)[used]

    def decode(c: np.ndarray) -> list[tuple[int, ...]]:
        return [tuple(int(glob[i]) for i in key) for key in coder.decode(c)]

    return codes, coefs, decode


def _cut_spectrum(leaves, bound: int, cols, energy, max_keys):
    """Keys (tuples), coefficients and constant of the energy-cut spectrum of one ensemble."""
    codes, coefs, decode = _compact_terms(leaves, bound, cols)
    const = float(coefs[codes == 0].sum())
    codes, coefs = codes[codes != 0], coefs[codes != 0]
    keep = np.sort(_energy_cut(coefs, energy, max_keys))
    return decode(codes[keep]), coefs[keep], const


def booster_to_fourier(model, n_features: int | None = None) -> tuple[list[tuple[int, ...]], np.ndarray]:
    """Exact Fourier transform of a LightGBM model on {0,1}^n.

    ``model``: a ``lightgbm.Booster``, an ``LGBMRegressor`` or a ``dump_model()`` dict.
    Returns (keys, coef (n_keys,)) with ``sum_k coef[k] (-1)^{|k & x|}`` equal to the model's
    raw prediction for every 0/1 mask x (all trees, shrinkage and initial score included).
    """
    dump = _dump(model)
    del n_features  # keys are mask columns whatever n is (kept for API compatibility)
    leaves = _ensemble_leaves(dump)
    depth = max((len(f) for f, _, _ in leaves), default=0)
    codes, coefs, decode = _compact_terms(leaves, max(depth, 1))
    return decode(codes), coefs


# ------------------------------------------------------------------------------------------
# Energy cut of a spectrum
# ------------------------------------------------------------------------------------------


def _energy_cut(coefs: np.ndarray, energy: float | None, max_keys: int | None) -> np.ndarray:
    """Indices of the largest coefficients holding ``energy`` of the total energy."""
    order = np.argsort(-(coefs**2), kind="stable")
    keep = len(coefs)
    total = float((coefs**2).sum())
    if total == 0:
        return order[:0]
    if energy is not None and energy < 1.0:
        cum = np.cumsum(coefs[order] ** 2) / total
        keep = int(np.searchsorted(cum, energy * (1 - 1e-12))) + 1
    if max_keys is not None:
        keep = min(keep, int(max_keys))
    return order[:keep]
