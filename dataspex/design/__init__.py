"""Ablation designs: which subsets of the training set to retrain on.

``design.kind`` names a builder in :data:`DESIGNS` (random, spex, pairwise); each takes the design config, the
number of training examples, a seeded generator and, for designs that screen candidates, a ``screen()``
callable returning first-order scores. Validation retrains (:mod:`dataspex.design.validation`) are appended to
an existing design by ``dataspex validate``.
"""

from __future__ import annotations

import numpy as np

from dataspex.core.errors import DataspexError
from dataspex.design.base import EXTENSION_ROLES, Design
from dataspex.design.pairwise import exhaustive_pair_masks, extend_pairwise, pairwise_design, screen_candidates
from dataspex.design.random import random_design, random_masks
from dataspex.design.spex import SpexDesign, spex_design

__all__ = ["DESIGNS", "EXTENSION_ROLES", "Design", "SpexDesign", "exhaustive_pair_masks", "extend_pairwise",
           "make_design", "random_masks", "screen_candidates"]

# design.kind -> builder(cfg, n_train, rng, screen) -> Design. A new design kind is one entry here.
DESIGNS = {"random": random_design, "spex": spex_design, "pairwise": pairwise_design}


def make_design(cfg, n_train: int, screen=None) -> Design:
    """Build the design named by ``conf/design/*.yaml`` for ``n_train`` examples.

    ``screen`` (a callable returning (scores (n_train, T), source)) is needed by ``kind: pairwise``, which picks
    its candidates by first-order scores (see :func:`dataspex.design.pairwise.pairwise_masks`)."""
    if n_train < 2:
        raise DataspexError(f"need at least 2 training examples to study pairs, got {n_train}")
    rng = np.random.default_rng(cfg.seed)
    builder = DESIGNS.get(cfg.kind)
    if builder is None:
        raise DataspexError(f"design.kind={cfg.kind!r} is not one of: {', '.join(DESIGNS)}")
    return builder(cfg, n_train, rng, screen)
