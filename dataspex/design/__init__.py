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
           "make_design", "random_masks", "screen_candidates", "settings_differences"]

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


# Settings a design records in its metadata as given (design.<key> == meta[key] for the design that used it).
_RECORDED = ("m", "heldout", "p", "seed")


def settings_differences(cfg, stored: Design) -> list[str]:
    """How the design ``cfg`` describes differs from ``stored`` (its base rows, without the rows later stages
    appended): one ``"design.<key>: stored X, now Y"`` per setting; empty when they agree."""
    meta = stored.without_extensions().meta
    if meta.get("kind") != cfg.kind:
        return [f"design.kind: stored {meta.get('kind')!r}, now {cfg.kind!r}"]
    units_now, units_then = str(cfg.get("units") or "example"), (meta.get("units") or {}).get("spec", "example")
    if units_now != units_then:
        return [f"design.units: stored {units_then!r}, now {units_now!r}"]
    out = [f"design.{key}: stored {meta[key]!r}, now {cfg[key]!r}" for key in _RECORDED
           if key in meta and key in cfg and meta[key] != cfg[key]]
    if cfg.kind == "spex" and not out:  # the budget is not recorded: compare the design it makes
        spex = meta["spex"]
        if cfg.max_degree != spex["max_degree"]:
            out.append(f"design.max_degree: stored {spex['max_degree']!r}, now {cfg.max_degree!r}")
        else:
            now = SpexDesign(stored.n_units, budget=cfg.m, max_degree=cfg.max_degree, random_state=cfg.seed)
            if now.n_masks != spex["n_masks"]:
                out.append(f"design.m: the stored SPEX design has {spex['n_masks']} masks, design.m={cfg.m} makes "
                           f"{now.n_masks}")
    return out
