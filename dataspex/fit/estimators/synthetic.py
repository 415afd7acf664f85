"""Synthetic sparse low-degree set functions with known spectra (benchmarks and tests).

Every output t is an independent sparse Fourier function over n training examples:

    f_t(x) = c_t + sum_i a_i s_i + sum_{i<j} b_ij s_i s_j + sum_{i<j<l} g_ijl s_i s_j s_l,
    s_i = (-1)^{x_i},

with ``n_main`` main effects, ``n_pairs`` pairs and ``n_triples`` triples per output.  By default
3 of every 4 pairs (and every triple) lie among the output's main-effect examples (hierarchical
interactions: a pair matters where its parts do, as in retraining data) and the rest are drawn
uniformly (pure interactions).  Magnitudes are uniform in [0.5, 1.5] with random signs (triples
[0.3, 1.0]).  Observations add Gaussian noise at a stated SNR = Var(f_t) / Var(noise), where
Var(f_t) over uniform masks is the sum of the squared non-constant coefficients.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dataspex.fit.estimators.transforms import ParityEncoder

__all__ = ["SparseFunctions", "sparse_functions", "random_masks"]

Key = tuple[int, ...]


def random_masks(m: int, n: int, rng: np.random.Generator, p: float = 0.5) -> np.ndarray:
    """(m, n) uint8 masks, each bit 1 with probability p (built in row blocks, never float64)."""
    out = np.empty((m, n), dtype=np.uint8)
    for start in range(0, m, 4096):
        stop = min(m, start + 4096)
        out[start:stop] = rng.random((stop - start, n), dtype=np.float32) < p
    return out


@dataclass
class SparseFunctions:
    """T sparse Fourier functions sharing the key list ``keys`` (union of the supports)."""

    n: int
    keys: list[Key]
    fourier: np.ndarray  # (n_keys, T)
    noise_sd: np.ndarray  # (T,)

    @property
    def n_outputs(self) -> int:
        return self.fourier.shape[1]

    def evaluate(self, masks: np.ndarray, block: int = 2048) -> np.ndarray:
        """Noise-free values (m, T) on masks (m, n) 0/1."""
        enc = ParityEncoder(np.asarray(masks, dtype=np.uint8))
        out = np.zeros((enc.n_masks, self.n_outputs))
        for start in range(0, len(self.keys), block):
            phi = enc.features(self.keys[start : start + block], dtype=np.float32)
            out += phi @ self.fourier[start : start + block].astype(np.float32)
        return out

    def observe(self, masks: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Noisy values (m, T): evaluate + N(0, noise_sd_t^2)."""
        clean = self.evaluate(masks)
        return clean + rng.standard_normal(clean.shape) * self.noise_sd[None, :]

    def pairs(self, output: int) -> list[tuple[int, int]]:
        """Planted pairs (degree-2 keys) of one output."""
        col = self.fourier[:, output]
        return [k for k, v in zip(self.keys, col) if len(k) == 2 and v != 0]


def sparse_functions(
    n: int,
    T: int,
    *,
    n_main: int = 8,
    n_pairs: int = 4,
    n_triples: int = 2,
    hierarchical: float = 0.75,
    snr: float = 10.0,
    random_state: int | np.random.Generator | None = 0,
) -> SparseFunctions:
    """Draw T independent sparse functions over n examples (see the module docstring)."""
    rng = np.random.default_rng(random_state)
    n_main = min(n_main, n)
    index: dict[Key, int] = {(): 0}
    rows: list[int] = []
    cols: list[int] = []
    vals: list[float] = []

    def add(key: Key, t: int, lo: float, hi: float) -> None:
        rows.append(index.setdefault(key, len(index)))
        cols.append(t)
        vals.append(float(rng.choice([-1.0, 1.0]) * rng.uniform(lo, hi)))

    for t in range(T):
        rows.append(0)
        cols.append(t)
        vals.append(float(rng.normal()))
        main = rng.choice(n, n_main, replace=False)
        for i in main:
            add((int(i),), t, 0.5, 1.5)
        used: set[Key] = set()
        for r in range(n_pairs):
            pool = main if (r < round(hierarchical * n_pairs) and n_main >= 2) else np.arange(n)
            while True:
                key = tuple(sorted(int(i) for i in rng.choice(pool, 2, replace=False)))
                if key not in used:
                    break
            used.add(key)
            add(key, t, 0.5, 1.5)
        for _ in range(n_triples):
            pool = main if n_main >= 3 else np.arange(n)
            while True:
                key = tuple(sorted(int(i) for i in rng.choice(pool, 3, replace=False)))
                if key not in used:
                    break
            used.add(key)
            add(key, t, 0.3, 1.0)
    F = np.zeros((len(index), T))
    np.add.at(F, (np.asarray(rows), np.asarray(cols)), np.asarray(vals))
    var = (F[1:] ** 2).sum(axis=0)
    noise_sd = np.sqrt(var / snr) if snr and np.isfinite(snr) else np.zeros(T)
    return SparseFunctions(n=n, keys=list(index), fourier=F, noise_sd=noise_sd)
