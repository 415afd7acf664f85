"""The exhaustive pairwise design at the full data set, over screened candidates.

For K candidates (the examples with the largest first-order scores) the design retrains on the full set, every
single removal and every pair removal (1 + K + K(K-1)/2 masks); the Pairwise estimator
(:class:`dataspex.fit.estimators.Pairwise`) reads the exact second differences off them. The first-order scores
come from the caller (the design stage screens with TRAK or a linear datamodel), so this module needs nothing
downstream of the design.
"""

from __future__ import annotations

import logging
import warnings

import numpy as np

from dataspex.core.errors import DataspexError, DataspexInputError
from dataspex.design.base import Design
from dataspex.design.random import heldout_masks

__all__ = ["exhaustive_pair_masks", "extend_pairwise", "pairwise_design", "screen_candidates", "warn_over_budget"]

log = logging.getLogger("dataspex")


def warn_over_budget(K: int, budget: int | None) -> None:
    """Warn (Python warning) when the K(K-1)/2 pair retrains of K candidates exceed ``budget``."""
    n_pairs = K * (K - 1) // 2
    if budget is not None and n_pairs > budget:
        warnings.warn(
            f"{K} candidates need {n_pairs} pair retrains (plus {1 + K}), over the budget of "
            f"{budget}; screen fewer candidates or use a sparse estimator (ProxySPEX, SPEX)",
            stacklevel=3,
        )


def screen_candidates(scores, K: int, budget: int | None = None) -> np.ndarray:
    """Top-K examples by |first-order score|, sorted by index.

    scores: (n,) or (n, T) first-order attributions (linear datamodel coefficients, TRAK
    scores, leave-one-out effects); with T outputs an example's strength is its largest
    |score| relative to each output's largest.  Warns when K(K-1)/2 exceeds ``budget``.
    """
    s = np.abs(np.asarray(scores, dtype=np.float64))
    if s.ndim == 1:
        s = s[:, None]
    if s.ndim != 2 or not np.isfinite(s).all():
        raise DataspexInputError("scores must be a finite (n,) or (n, T) array")
    K = int(K)
    if not 1 <= K <= s.shape[0]:
        raise DataspexInputError(f"K must be in [1, n={s.shape[0]}], got {K}")
    strength = (s / np.maximum(s.max(axis=0), 1e-300)).max(axis=1)
    chosen = np.sort(np.argsort(-strength, kind="stable")[:K])
    warn_over_budget(K, budget)
    return chosen


def exhaustive_pair_masks(n: int, candidates, budget: int | None = None) -> np.ndarray:
    """Masks (1 + K + K(K-1)/2, n) uint8: full set, each single removal, each pair removal."""
    cand = np.unique(np.asarray(candidates, dtype=np.int64))
    if cand.size and (cand[0] < 0 or cand[-1] >= n):
        raise DataspexInputError(f"candidates must lie in [0, {n})")
    K = cand.size
    warn_over_budget(K, budget)
    ii, jj = np.triu_indices(K, k=1)
    masks = np.ones((1 + K + len(ii), n), dtype=np.uint8)
    masks[1 + np.arange(K), cand] = 0
    rows = 1 + K + np.arange(len(ii))
    masks[rows, cand[ii]] = 0
    masks[rows, cand[jj]] = 0
    return masks


def pairwise_masks(cfg, n_train: int, screen) -> tuple[np.ndarray, dict]:
    """The exhaustive pairwise masks over the top ``design.candidates`` screened examples, with a description
    for the design's meta. ``screen()`` returns the first-order scores (n_train, T) and where they came from.
    Warns (log) when the K(K-1)/2 pair retrains exceed the budget ``design.m``."""
    K = int(cfg.candidates)
    if not 2 <= K <= n_train:
        raise DataspexError(f"design.candidates={K} must be in [2, n_train={n_train}]")
    if screen is None:
        raise DataspexError("design=pairwise screens candidates with a run's TRAK scores or retraining results: "
                            "give it a run directory")
    scores, source = screen()
    candidates = screen_candidates(scores, K)
    n_pairs = K * (K - 1) // 2
    budget = cfg.m
    if budget is not None and n_pairs > int(budget):
        log.warning("design: %d candidates need %d pair retrains (plus %d), over the budget design.m=%d: lower "
                    "design.candidates, or use a sparse estimator (ProxySPEX, SPEX)", K, n_pairs, 1 + K, int(budget))
    masks = exhaustive_pair_masks(n_train, candidates)
    return masks, {"candidates": candidates.tolist(), "K": K, "screen": source, "n_masks": len(masks)}


def pairwise_design(cfg, n_train: int, rng: np.random.Generator, screen=None) -> Design:
    """``design=pairwise`` on a fresh run: the pairwise masks, then ``design.heldout`` random held-out masks."""
    structured, info = pairwise_masks(cfg, n_train, screen)
    n_heldout = int(cfg.heldout)
    heldout = heldout_masks(n_train, n_heldout, 0.5, rng)
    masks = np.vstack([structured, heldout])
    roles = np.array(["pairwise"] * len(structured) + ["heldout"] * n_heldout)
    meta = {"kind": "pairwise", "pairwise": info, "heldout": n_heldout, "seed": cfg.seed}
    return Design(masks, np.arange(len(masks)), roles, meta)


def extend_pairwise(existing: Design, cfg, screen) -> Design | None:
    """``existing`` plus the pairwise masks it lacks, under role ``pairwise`` (fresh ids; existing rows and ids
    untouched); None when it already has them all. ``meta["pairwise"]`` describes the latest screen, with
    ``all_candidates`` the union over every extension."""
    masks, info = pairwise_masks(cfg, existing.n_units, screen)
    have = {row.tobytes() for row in existing.masks[existing.rows("pairwise")]}
    new = np.array([row for row in masks if row.tobytes() not in have], dtype=np.uint8).reshape(-1, existing.n_units)
    if not len(new):
        return None
    previous = (existing.meta.get("pairwise") or {}).get("all_candidates", [])
    info["all_candidates"] = sorted(set(previous) | set(info["candidates"]))
    return existing.extend(new, "pairwise", meta_key="pairwise", meta=info)
