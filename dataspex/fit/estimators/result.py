"""``InteractionResult``: the one result type every dataspex estimator returns.

A sparse Fourier representation of T set functions over n training examples, sharing one
support (the union over outputs):

    f_t(x) = sum_k fourier[k, t] * (-1)^{|keys[k] & x|},   x in {0,1}^n (1 = example kept).

Everything else (Moebius form, pair scores, joint effects, Shapley/Banzhaf indices, rankings)
is derived exactly from these coefficients.

Pair-score estimands (f is e.g. a test loss, higher is worse):

* ``"uniform"``: 4 F[{i,j}], the second difference averaged over uniformly random half-datasets
  (this equals the Banzhaf interaction index of the pair).
* ``"full"``: f(1-e_i-e_j) - f(1-e_i) - f(1-e_j) + f(1), the second difference at the full
  data set = 4 * sum_{k >= {i,j}} (-1)^{|k|} F[k] (higher-order terms included).
* ``"banzhaf"`` / ``"shapley"``: Banzhaf / Shapley interaction indices from the Moebius form.
"""

from __future__ import annotations

import io
import json
import os
from typing import Literal

import numpy as np
import pandas as pd
import scipy.sparse as sp

from dataspex.core.errors import DataspexError
from dataspex.core.files import atomic_write_bytes
from dataspex.fit.estimators.base import DataspexInputError, check_masks
from dataspex.fit.estimators.keys import Key, canonical_key, drop_zero_rows, merge_keys, pair_transform, subset_transform
from dataspex.fit.estimators.transforms import fourier_predict
from dataspex.fit.estimators.vocabulary import PAIR_KINDS, pair_pattern

__all__ = ["InteractionResult"]

_FORMAT = "dataspex.InteractionResult"
_FORMAT_VERSION = 1
_PAIR_ESTIMANDS = ("uniform", "full", "banzhaf", "shapley")
_EFFECT_ESTIMANDS = ("uniform", "full")


class InteractionResult:
    """Sparse Fourier model of T outputs over n training examples.

    Parameters
    ----------
    n_features : int
        Number of training examples n (mask length).
    keys : list of tuple of int
        Support shared by all outputs; each key is a set of feature indices (stored sorted),
        ``()`` is the constant term.  Duplicate keys are summed.
    fourier : array (n_keys, T) or (n_keys,)
        ``fourier[k, t]`` = F_t[keys[k]].
    output_names : list of str, optional
        One name per output (e.g. test-example ids).
    estimator : str
        Name of the estimator that produced the result (provenance for reports).
    """

    def __init__(
        self,
        n_features: int,
        keys: list[tuple[int, ...]],
        fourier: np.ndarray,
        output_names: list[str] | None = None,
        estimator: str = "",
    ) -> None:
        self.n_features = int(n_features)
        if self.n_features < 0:
            raise DataspexInputError(f"n_features must be >= 0, got {n_features}")
        coef = np.array(fourier, dtype=np.float64)
        if coef.ndim == 1:
            coef = coef[:, None]
        if coef.ndim != 2 or coef.shape[0] != len(keys):
            raise DataspexInputError(
                f"fourier must have shape (n_keys={len(keys)}, T), got {np.shape(fourier)}"
            )
        if not np.isfinite(coef).all():
            raise DataspexInputError("fourier coefficients must be finite")
        canon = [canonical_key(k, self.n_features) for k in keys]
        self.keys, self.fourier = merge_keys(canon, coef)
        self.fourier.setflags(write=False)
        if output_names is not None:
            output_names = [str(s) for s in output_names]
            if len(output_names) != self.fourier.shape[1]:
                raise DataspexInputError(
                    f"{len(output_names)} output_names for {self.fourier.shape[1]} outputs"
                )
        self.output_names = output_names
        self.estimator = str(estimator)
        self._key_index = {k: r for r, k in enumerate(self.keys)}
        self._cache: dict = {}

    # ------------------------------------------------------------------ basics
    @property
    def n_outputs(self) -> int:
        """Number of outputs T."""
        return self.fourier.shape[1]

    @property
    def n_keys(self) -> int:
        return len(self.keys)

    @property
    def degree(self) -> int:
        """Largest order among keys with a non-zero coefficient (0 for a constant model)."""
        nz = np.any(self.fourier != 0, axis=1)
        return max((len(k) for k, z in zip(self.keys, nz) if z), default=0)

    def __repr__(self) -> str:
        return (
            f"InteractionResult(n_features={self.n_features}, n_keys={self.n_keys}, "
            f"n_outputs={self.n_outputs}, degree={self.degree}, estimator={self.estimator!r})"
        )

    def coefficient(self, key, output: int | str = "mean") -> float:
        """Fourier coefficient F[key] of one output (or averaged over outputs); 0 if absent."""
        r = self._key_index.get(tuple(sorted(int(i) for i in key)))
        if r is None:
            return 0.0
        return float(self._select(self.fourier[r : r + 1], output)[0])

    def _output_column(self, output) -> int:
        if isinstance(output, (int, np.integer)) and not isinstance(output, bool):
            t = int(output)
            if not -self.n_outputs <= t < self.n_outputs:
                raise DataspexInputError(f"output {t} out of range for {self.n_outputs} outputs")
            return t % self.n_outputs
        if isinstance(output, str) and self.output_names and output in self.output_names:
            return self.output_names.index(output)
        raise DataspexInputError(
            f"output must be 'mean', an output index or an output name, got {output!r}"
        )

    def _select(self, values: np.ndarray, output) -> np.ndarray:
        """Reduce per-output values (P, T) to (P,) for one output or the mean over outputs."""
        if isinstance(output, str) and output == "mean":
            return values.mean(axis=1)
        return values[:, self._output_column(output)]

    def _output_label(self, t: int):
        return self.output_names[t] if self.output_names else int(t)

    # ------------------------------------------------------------------ conversions
    @classmethod
    def from_moebius(
        cls,
        n_features: int,
        keys: list[tuple[int, ...]],
        moebius: np.ndarray,
        output_names: list[str] | None = None,
        estimator: str = "",
    ) -> InteractionResult:
        """Build from Moebius coefficients a[S] (n_keys, T): f(x) = sum_{S subset x} a[S].

        Exact: F[k] = (-1)^{|k|} sum_{S >= k} a[S] / 2^{|S|}.
        """
        a = np.asarray(moebius, dtype=np.float64)
        a = a[:, None] if a.ndim == 1 else a
        canon = [canonical_key(k, int(n_features)) for k in keys]
        canon, a = merge_keys(canon, a)
        sub_keys, M = subset_transform(canon, lambda r, d: (-1.0) ** r * 0.5**d)
        fkeys, F = drop_zero_rows(sub_keys, np.asarray(M @ a))
        return cls(n_features, fkeys, F.reshape(len(fkeys), a.shape[1]), output_names, estimator)

    def moebius(self) -> tuple[list[Key], np.ndarray]:
        """Moebius form (keys, coef (n_keys_m, T)): a[S] = (-2)^{|S|} sum_{k >= S} F[k]."""
        if "moebius" not in self._cache:
            sub_keys, M = subset_transform(self.keys, lambda r, d: (-2.0) ** r)
            keys, a = drop_zero_rows(sub_keys, np.asarray(M @ self.fourier))
            a = a.reshape(len(keys), self.n_outputs)
            a.setflags(write=False)
            self._cache["moebius"] = (keys, a)
        keys, a = self._cache["moebius"]
        return list(keys), a

    # ------------------------------------------------------------------ prediction
    def predict(self, masks) -> np.ndarray:
        """Model outputs for masks (m, n) of 0/1: shape (m, T)."""
        masks = check_masks(masks, n_features=self.n_features)
        return fourier_predict(masks, self.keys, self.fourier)

    # ------------------------------------------------------------------ pairs
    def _pair_table(self, estimand: str) -> tuple[np.ndarray, np.ndarray]:
        """(pairs (P, 2) with i < j, scores (P, T)) for every pair with a non-zero weight."""
        if estimand not in _PAIR_ESTIMANDS:
            raise DataspexInputError(
                f"estimand must be one of {_PAIR_ESTIMANDS}, got {estimand!r}"
            )
        cache_key = ("pairs", estimand)
        if cache_key not in self._cache:
            if estimand == "uniform":
                pairs, M = pair_transform(self.keys, lambda d: 4.0, max_degree=2)
                coef = self.fourier
            elif estimand == "full":
                pairs, M = pair_transform(self.keys, lambda d: 4.0 * (-1.0) ** d)
                coef = self.fourier
            else:
                mkeys, coef = self.moebius()
                if estimand == "banzhaf":  # sum_{T >= S} a[T] / 2^{|T|-2}
                    pairs, M = pair_transform(mkeys, lambda d: 0.5 ** (d - 2))
                else:  # shapley: sum_{T >= S} a[T] / (|T| - 1)
                    pairs, M = pair_transform(mkeys, lambda d: 1.0 / (d - 1))
            values = np.asarray(M @ coef).reshape(len(pairs), self.n_outputs)
            self._cache[cache_key] = (pairs, values)
        return self._cache[cache_key]

    def main_effects(self, estimand: str = "uniform", output: int | str = "mean") -> np.ndarray:
        """Effect of keeping example i (vs removing it), shape (n,).

        uniform: average over random half-datasets = -2 F[{i}];
        full: f(1) - f(1 - e_i) = 2 sum_{k contains i} (-1)^{|k|} F[k].
        """
        return self._select(self._main_table(estimand), output)

    def _main_table(self, estimand: str) -> np.ndarray:
        if estimand not in _EFFECT_ESTIMANDS:
            raise DataspexInputError(f"estimand must be one of {_EFFECT_ESTIMANDS}, got {estimand!r}")
        cache_key = ("main", estimand)
        if cache_key not in self._cache:
            rows, cols, vals = [], [], []
            for c, k in enumerate(self.keys):
                if estimand == "uniform" and len(k) != 1:
                    continue
                w = -2.0 if estimand == "uniform" else 2.0 * (-1.0) ** len(k)
                for i in k:
                    rows.append(i)
                    cols.append(c)
                    vals.append(w)
            M = sp.csr_matrix((vals, (rows, cols)), shape=(self.n_features, self.n_keys))
            self._cache[cache_key] = np.asarray(M @ self.fourier).reshape(
                self.n_features, self.n_outputs
            )
        return self._cache[cache_key]

    def pair_scores(self, estimand: str = "uniform", output: int | str = "mean") -> np.ndarray:
        """Symmetric (n, n) matrix of pairwise interaction scores (zero diagonal).

        estimand: "uniform" (4 F[{i,j}]), "full" (second difference at the full data set),
        "banzhaf" or "shapley" (interaction indices); output: index, name or "mean".
        """
        pairs, values = self._pair_table(estimand)
        return self._dense(pairs, self._select(values, output))

    def interaction_index(self, index: str = "shapley", output: int | str = "mean") -> np.ndarray:
        """Pairwise Shapley ("shapley") or Banzhaf ("banzhaf") interaction index, (n, n)."""
        if index not in ("shapley", "banzhaf"):
            raise DataspexInputError(f"index must be 'shapley' or 'banzhaf', got {index!r}")
        return self.pair_scores(estimand=index, output=output)

    def pair_effects(self, estimand: str = "uniform", output: int | str = "mean") -> np.ndarray:
        """Joint inclusion effect of keeping both i and j versus neither, (n, n), zero diagonal.

        uniform: average over random contexts of f(.., 1_i, 1_j) - f(.., 0_i, 0_j)
                 = -2 (F[{i}] + F[{j}]) (the pair term cancels);
        full: f(1) - f(1 - e_i - e_j) = g_i + g_j - D_ij with g the "full" main effects and D the
              "full" pair score.
        """
        main = self.main_effects(estimand, output)
        eff = main[:, None] + main[None, :]
        if estimand == "full":
            eff = eff - self.pair_scores("full", output)
        np.fill_diagonal(eff, 0.0)
        return eff

    def _dense(self, pairs: np.ndarray, vals: np.ndarray) -> np.ndarray:
        out = np.zeros((self.n_features, self.n_features))
        out[pairs[:, 0], pairs[:, 1]] = vals
        out[pairs[:, 1], pairs[:, 0]] = vals
        return out

    def top_pairs(
        self,
        kind: Literal["harmful", "redundant", "complementary", "interaction"] = "harmful",
        k: int = 10,
        estimand: str = "uniform",
        output: int | str = "mean",
    ) -> pd.DataFrame:
        """Ranked pairs as a DataFrame with columns i, j, output, score, joint_effect, pattern, estimand.

        ``score`` is the pair's interaction (second difference of f, see ``pair_scores``) and
        ``joint_effect`` the change in f from keeping both versus neither.  With f a loss, the four
        sign patterns are what a curation team acts on:

        * ``harmful``: joint_effect > 0 (the pair raises the loss), and not additively - either only
          together (pattern "synergistic", score > 0) or each alone already does the damage, so removing
          one does not help (pattern "masking", score < 0).  Ranked by |score|.
        * ``redundant``: joint_effect < 0 and score > 0: near-duplicates, either alone suffices and
          removing both hurts.  Ranked by score.
        * ``complementary``: joint_effect < 0 and score < 0: they help only together.  Ranked by |score|.
        * ``interaction``: every pair, ranked by |score|.

        output="all" ranks every (pair, output) combination.
        """
        if kind not in PAIR_KINDS:
            raise DataspexInputError(f"kind must be one of {tuple(PAIR_KINDS)}, got {kind!r}")
        if estimand not in _EFFECT_ESTIMANDS:
            raise DataspexInputError(
                f"top_pairs estimand must be one of {_EFFECT_ESTIMANDS}, got {estimand!r}"
            )
        pairs, D = self._pair_table(estimand)
        main = self._main_table(estimand)
        E = main[pairs[:, 0]] + main[pairs[:, 1]]
        if estimand == "full":
            E = E - D
        if isinstance(output, str) and output == "all":
            P, T = D.shape
            ii, jj = np.repeat(pairs[:, 0], T), np.repeat(pairs[:, 1], T)
            tt = np.tile(np.arange(T), P)
            labels = [self._output_label(t) for t in range(T)]
            out_col = [labels[t] for t in tt]
            score, joint = D.ravel(), E.ravel()
        else:
            ii, jj = pairs[:, 0], pairs[:, 1]
            score, joint = self._select(D, output), self._select(E, output)
            label = "mean" if output == "mean" else self._output_label(self._output_column(output))
            out_col = [label] * len(ii)
        keep = {
            "harmful": (joint > 0) & (score != 0),
            "redundant": (joint < 0) & (score > 0),
            "complementary": (joint < 0) & (score < 0),
            "interaction": score != 0,
        }[kind]
        idx = np.flatnonzero(keep)
        idx = idx[np.argsort(-np.abs(score[idx]), kind="stable")][: max(int(k), 0)]
        return pd.DataFrame(
            {
                "i": np.asarray(ii)[idx].astype(np.int64),
                "j": np.asarray(jj)[idx].astype(np.int64),
                "output": [out_col[r] for r in idx],
                "score": score[idx],
                "joint_effect": joint[idx],
                "pattern": [pair_pattern(score[r], joint[r]) for r in idx],
                "estimand": [estimand] * len(idx),
            }
        )

    # ------------------------------------------------------------------ export
    def to_frame(self, basis: str = "fourier", key_format: str = "tuple") -> pd.DataFrame:
        """Long table, one row per (output, key): columns output, key, order, <basis>.

        basis: "fourier" or "moebius"; key_format: "tuple" (e.g. (3, 7)) or "str" ("3,7";
        handy for parquet/CSV).  Rows with a zero coefficient are kept for fourier.
        """
        if basis == "fourier":
            keys, coef = self.keys, self.fourier
        elif basis == "moebius":
            keys, coef = self.moebius()
        else:
            raise DataspexInputError(f"basis must be 'fourier' or 'moebius', got {basis!r}")
        if key_format not in ("tuple", "str"):
            raise DataspexInputError(f"key_format must be 'tuple' or 'str', got {key_format!r}")
        T, K = self.n_outputs, len(keys)
        key_col = np.empty(K, dtype=object)  # filled one by one: tuples must stay scalars
        for r, k in enumerate(keys):
            key_col[r] = k if key_format == "tuple" else ",".join(map(str, k))
        labels = np.empty(T, dtype=object)
        for t in range(T):
            labels[t] = self._output_label(t)
        return pd.DataFrame(
            {
                "output": np.repeat(labels, K),
                "key": np.tile(key_col, T),
                "order": np.tile([len(k) for k in keys], T).astype(np.int64),
                basis: coef.T.ravel(),
            }
        )

    def to_shapiq(self, output: int | str = 0, index: str = "Moebius", order: int | None = None):
        """One output as a ``shapiq.InteractionValues``.

        index "Moebius" gives the Moebius coefficients; any index of shapiq's MoebiusConverter
        ("SII", "k-SII", "STII", "FSII", "FBII", "SV", "BV") is computed from them by shapiq, with
        ``order`` defaulting to the model degree.
        """
        from shapiq import InteractionValues
        from shapiq.game_theory.moebius_converter import MoebiusConverter

        keys, a = self.moebius()
        vals = self._select(a, output)
        if () not in keys:  # shapiq expects the empty coalition to be representable
            keys, vals = [(), *keys], np.concatenate([[0.0], vals])
        max_order = max(self.degree, 1)
        iv = InteractionValues(
            values=np.asarray(vals, dtype=np.float64),
            index="Moebius",
            max_order=max_order,
            n_players=self.n_features,
            min_order=0,
            interaction_lookup={k: r for r, k in enumerate(keys)},
            estimated=True,
            baseline_value=float(vals[keys.index(())]),
        )
        if index == "Moebius":
            return iv
        return MoebiusConverter(iv)(index=index, order=order or max_order)

    # ------------------------------------------------------------------ persistence
    def save(self, path) -> None:
        """Write to ``path`` (.npz, no pickle) atomically: temp file, fsync, os.replace."""
        path = os.fspath(path)
        flat = np.array([i for k in self.keys for i in k], dtype=np.int64)
        offsets = np.cumsum([0] + [len(k) for k in self.keys]).astype(np.int64)
        meta = {
            "format": _FORMAT,
            "version": _FORMAT_VERSION,
            "n_features": self.n_features,
            "output_names": self.output_names,
            "estimator": self.estimator,
        }
        buffer = io.BytesIO()
        np.savez_compressed(
            buffer,
            fourier=np.asarray(self.fourier),
            key_features=flat,
            key_offsets=offsets,
            meta=np.array(json.dumps(meta)),
        )
        atomic_write_bytes(path, buffer.getvalue())

    @classmethod
    def load(cls, path) -> InteractionResult:
        """Read a file written by :meth:`save` (never unpickles)."""
        path = os.fspath(path)
        try:
            with np.load(path, allow_pickle=False) as z:
                meta = json.loads(str(z["meta"]))
                fourier = z["fourier"]
                flat, offsets = z["key_features"], z["key_offsets"]
        except FileNotFoundError:
            raise DataspexError(f"no result file at {path}") from None
        except (KeyError, ValueError, OSError) as err:
            raise DataspexError(f"{path} is not a dataspex result file ({err})") from None
        if meta.get("format") != _FORMAT or meta.get("version", 0) > _FORMAT_VERSION:
            raise DataspexError(f"{path} is not a readable dataspex result file (version)")
        keys = [tuple(int(i) for i in flat[a:b]) for a, b in zip(offsets[:-1], offsets[1:])]
        return cls(
            meta["n_features"], keys, fourier, meta.get("output_names"), meta.get("estimator", "")
        )
