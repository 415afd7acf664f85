"""Ablation designs: which subsets of the training set to retrain on.

A design is a list of masks (bit 1 = training example kept), each with a stable integer id and a role:
``fit`` masks train the estimators, ``heldout`` masks are only for scoring them, ``spex``/``pairwise``
masks come from structured designs, ``validate`` masks from targeted retrains. Ids never change once
written, so results can be matched to masks across resumed, sharded and repeated runs.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from dataspex.errors import DataspexError


@dataclass
class Design:
    masks: np.ndarray  # (m, n_train) uint8
    mask_ids: np.ndarray  # (m,) int64, unique
    roles: np.ndarray  # (m,) str
    meta: dict = field(default_factory=dict)

    def __post_init__(self):
        self.masks = np.ascontiguousarray(self.masks, dtype=np.uint8)
        self.mask_ids = np.asarray(self.mask_ids, dtype=np.int64)
        self.roles = np.asarray(self.roles, dtype=str)
        if self.masks.ndim != 2 or len(self.mask_ids) != len(self.masks) or len(self.roles) != len(self.masks):
            raise ValueError("masks (m, n), mask_ids (m,) and roles (m,) must agree in m")
        if len(np.unique(self.mask_ids)) != len(self.mask_ids):
            raise ValueError("mask ids must be unique")

    @property
    def n_train(self) -> int:
        return self.masks.shape[1]

    def __len__(self) -> int:
        return len(self.masks)

    def select(self, role: str) -> "Design":
        keep = self.roles == role
        return Design(self.masks[keep], self.mask_ids[keep], self.roles[keep], self.meta)

    def extend(self, masks: np.ndarray, role: str, meta_key: str | None = None, meta=None) -> "Design":
        """A new design with ``masks`` appended under fresh ids (existing ids are untouched)."""
        start = int(self.mask_ids.max()) + 1 if len(self) else 0
        new_meta = dict(self.meta)
        if meta_key is not None:
            new_meta[meta_key] = meta
        return Design(np.vstack([self.masks, masks]), np.concatenate([self.mask_ids, start + np.arange(len(masks))]),
                      np.concatenate([self.roles, np.full(len(masks), role)]), new_meta)


def random_masks(n_train: int, m: int, p: float, rng: np.random.Generator) -> np.ndarray:
    """``m`` masks with each example kept independently with probability ``p``; never an empty mask."""
    if not 0.0 < p <= 1.0:
        raise DataspexError(f"design.p={p} must be in (0, 1]")
    masks = (rng.random((m, n_train)) < p).astype(np.uint8)
    for row in np.flatnonzero(masks.sum(axis=1) == 0):  # vanishingly rare for useful n; redraw rather than drop
        while not masks[row].any():
            masks[row] = rng.random(n_train) < p
    return masks


def make_design(cfg, n_train: int) -> Design:
    """Build the design named by ``conf/design/*.yaml`` for ``n_train`` examples."""
    if n_train < 2:
        raise DataspexError(f"need at least 2 training examples to study pairs, got {n_train}")
    rng = np.random.default_rng(cfg.seed)
    if cfg.kind == "random":
        fit = random_masks(n_train, cfg.m, cfg.p, rng)
        heldout = random_masks(n_train, cfg.heldout, cfg.p, rng)
        masks = np.vstack([fit, heldout])
        roles = np.array(["fit"] * cfg.m + ["heldout"] * cfg.heldout)
        meta = {"kind": "random", "m": cfg.m, "heldout": cfg.heldout, "p": cfg.p, "seed": cfg.seed}
        return Design(masks, np.arange(len(masks)), roles, meta)
    if cfg.kind == "spex":
        from dataspex.estimators.spex import SpexDesign

        spex = SpexDesign(n_train, budget=cfg.m, max_degree=cfg.max_degree, random_state=cfg.seed)
        structured = spex.masks()
        heldout = random_masks(n_train, cfg.heldout, 0.5, rng)
        masks = np.vstack([structured, heldout])
        roles = np.array(["spex"] * len(structured) + ["heldout"] * cfg.heldout)
        meta = {"kind": "spex", "spex": spex.to_dict(), "heldout": cfg.heldout, "seed": cfg.seed}
        return Design(masks, np.arange(len(masks)), roles, meta)
    raise DataspexError(f"design.kind={cfg.kind!r} is not one of: random, spex")
