"""Uniform random masks: each training example kept independently with probability ``design.p``."""

from __future__ import annotations

import numpy as np

from dataspex.core.errors import DataspexError
from dataspex.design.base import Design


def random_masks(n_train: int, m: int, p: float, rng: np.random.Generator) -> np.ndarray:
    """``m`` masks with each example kept independently with probability ``p``; never an empty mask."""
    if not 0.0 < p <= 1.0:
        raise DataspexError(f"design.p={p} must be in (0, 1]")
    masks = (rng.random((m, n_train)) < p).astype(np.uint8)
    for row in np.flatnonzero(masks.sum(axis=1) == 0):  # vanishingly rare for useful n; redraw rather than drop
        while not masks[row].any():
            masks[row] = rng.random(n_train) < p
    return masks


def heldout_masks(n_train: int, n_heldout: int, p: float, rng: np.random.Generator) -> np.ndarray:
    """The random held-out masks a structured design adds for scoring (none when ``n_heldout`` is 0)."""
    if not n_heldout:
        return np.zeros((0, n_train), np.uint8)
    return random_masks(n_train, n_heldout, p, rng)


def random_design(cfg, n_train: int, rng: np.random.Generator, screen=None) -> Design:
    """``design=random``: ``design.m`` fit masks, then ``design.heldout`` held-out masks."""
    fit = random_masks(n_train, cfg.m, cfg.p, rng)
    heldout = random_masks(n_train, cfg.heldout, cfg.p, rng)
    masks = np.vstack([fit, heldout])
    roles = np.array(["fit"] * cfg.m + ["heldout"] * cfg.heldout)
    meta = {"kind": "random", "m": cfg.m, "heldout": cfg.heldout, "p": cfg.p, "seed": cfg.seed}
    return Design(masks, np.arange(len(masks)), roles, meta)
