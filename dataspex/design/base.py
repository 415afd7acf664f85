"""The design: masks over the training examples (or over units of them), each with a stable id and a role.

A design is a list of masks (bit 1 = training example kept; with ``design.units``, bit 1 = every member of the
unit kept, :mod:`dataspex.design.units`), each with a stable integer id and a role:
``fit`` masks train the estimators, ``heldout`` masks are only for scoring them, ``spex``/``pairwise``
masks come from structured designs, ``validate`` masks from targeted retrains, ``replicate`` masks retrain
held-out masks under other seeds (the noise ceiling). Ids never change once
written, so results can be matched to masks across resumed, sharded and repeated runs.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from dataspex.design.units import Units

# Roles of rows that later stages append to an existing design (pairwise masks, validation retrains, seed
# replicates of held-out masks).
EXTENSION_ROLES = ("pairwise", "validate", "replicate")
# Roles no estimator fits on and whose retrains a fit does not wait for: appending them never makes a fit stale.
UNFITTED_ROLES = ("validate", "replicate")


@dataclass
class Design:
    masks: np.ndarray  # (m, n_units) uint8: over the units (the training examples unless design.units says else)
    mask_ids: np.ndarray  # (m,) int64, unique
    roles: np.ndarray  # (m,) str
    meta: dict = field(default_factory=dict)
    units: Units | None = None  # None: every training example is its own unit

    def __post_init__(self):
        self.masks = np.ascontiguousarray(self.masks, dtype=np.uint8)
        self.mask_ids = np.asarray(self.mask_ids, dtype=np.int64)
        self.roles = np.asarray(self.roles, dtype=str)
        if self.masks.ndim != 2 or len(self.mask_ids) != len(self.masks) or len(self.roles) != len(self.masks):
            raise ValueError("masks (m, n), mask_ids (m,) and roles (m,) must agree in m")
        if len(np.unique(self.mask_ids)) != len(self.mask_ids):
            raise ValueError("mask ids must be unique")
        if self.units is not None and self.units.n_units != self.masks.shape[1]:
            raise ValueError(f"masks have {self.masks.shape[1]} columns, the units are {self.units.n_units}")

    @property
    def n_units(self) -> int:
        """Columns of the masks: what estimators fit over and pairs name."""
        return self.masks.shape[1]

    @property
    def n_train(self) -> int:
        """Training examples the masks expand to (:meth:`example_masks`)."""
        return self.n_units if self.units is None else self.units.n_train

    @property
    def by_unit(self) -> bool:
        """True when the masks are over groups of examples, not over the examples themselves."""
        return self.units is not None and not self.units.is_examples

    def over_units(self, units: Units | None) -> "Design":
        """This design with its masks read as masks over ``units`` (None or one unit per example: unchanged); the
        units' record (spec, count, digest, names) goes into the metadata, so that a design over another grouping
        never compares equal."""
        if units is None or units.is_examples:
            return self
        return Design(self.masks, self.mask_ids, self.roles, dict(self.meta, units=units.record()), units)

    def example_masks(self, rows) -> np.ndarray:
        """The masks of design rows ``rows`` over the training examples (len(rows), n_train) uint8: what training
        uses (a unit's members are kept or dropped with it)."""
        masks = self.masks[rows]
        return masks if self.units is None else self.units.expand(masks)

    def __len__(self) -> int:
        return len(self.masks)

    @property
    def fit_role(self) -> str:
        """The role of the rows estimators fit on: a SPEX design's structured masks, else the random ``fit``."""
        return "spex" if self.meta.get("kind") == "spex" else "fit"

    def rows(self, role: str) -> np.ndarray:
        """Indices (ascending) of the rows of ``role``; ``"fit"`` means :attr:`fit_role`. The one way to pick
        the rows a stage fits on, scores on or retrains."""
        role = self.fit_role if role == "fit" else role
        return np.flatnonzero(self.roles == role)

    def ids(self, role: str) -> np.ndarray:
        """Mask ids of the rows of ``role`` (as :meth:`rows`)."""
        return self.mask_ids[self.rows(role)]

    def select(self, role: str) -> "Design":
        keep = self.roles == role
        return Design(self.masks[keep], self.mask_ids[keep], self.roles[keep], self.meta, self.units)

    def without_extensions(self) -> "Design":
        """The design as the design stage made it: without rows (and metadata) later stages appended."""
        base = ~np.isin(self.roles, EXTENSION_ROLES)
        return Design(self.masks[base], self.mask_ids[base], self.roles[base],
                      {k: v for k, v in self.meta.items() if k not in EXTENSION_ROLES}, self.units)

    def extend(self, masks: np.ndarray, role: str, meta_key: str | None = None, meta=None) -> "Design":
        """A new design with ``masks`` appended under fresh ids (existing ids are untouched)."""
        start = int(self.mask_ids.max()) + 1 if len(self) else 0
        new_meta = dict(self.meta)
        if meta_key is not None:
            new_meta[meta_key] = meta
        return Design(np.vstack([self.masks, masks]), np.concatenate([self.mask_ids, start + np.arange(len(masks))]),
                      np.concatenate([self.roles, np.full(len(masks), role)]), new_meta, self.units)
