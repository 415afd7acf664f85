"""Curation designs: the training sets ``dataspex curate`` retrains to judge a curated training set.

A curated set drops some training examples and relabels others. Relabelling is not a mask over the original
examples, so the curation study trains on an *augmented* training split: the ``n_train`` original rows, then one
copy of each relabelled row carrying its new label. Every arm is then a mask over those ``n_train + r`` rows:

* ``full``: the original rows, no copies (the training set as it is);
* ``curated``: the original rows minus the dropped and the relabelled ones, plus the relabelled copies;
* ``random:<d>``: the original rows minus ``k`` examples drawn at random (draw d), ``k`` = the curated set's
  number of changed examples;
* ``<baseline>``: the original rows minus the ``k`` examples a first-order baseline ranks most harmful.

Each arm is trained ``seeds`` times. Replicate s of every arm uses the same training seed (common random numbers:
one LoRA initialisation and one global data order restricted to the arm's rows), so the arms' differences within
a replicate are paired. Design row ids are ``s * n_arms + arm index``: a study rerun with more seeds keeps the
ids it has and appends the new replicates, so nothing trained is lost or trained twice.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from dataspex.core.data import Split
from dataspex.design.base import Design

__all__ = ["CurationPlan", "arm_masks", "augmented_split", "curation_design", "random_removals"]


@dataclass
class CurationPlan:
    """What a curated training set changes: example indices to drop, and example index -> new label index."""

    n_train: int
    dropped: list[int] = field(default_factory=list)
    relabelled: dict[int, int] = field(default_factory=dict)

    def __post_init__(self):
        self.dropped = sorted(int(i) for i in self.dropped)
        self.relabelled = {int(i): int(y) for i, y in sorted(self.relabelled.items())}
        bad = [i for i in [*self.dropped, *self.relabelled] if not 0 <= i < self.n_train]
        if bad:
            raise ValueError(f"example indices {bad} are outside the training set (n_train={self.n_train})")
        both = sorted(set(self.dropped) & set(self.relabelled))
        if both:
            raise ValueError(f"examples {both} are both dropped and relabelled")

    @property
    def changed(self) -> list[int]:
        """Every example the curated set removes or relabels, ascending."""
        return sorted([*self.dropped, *self.relabelled])

    @property
    def n_changed(self) -> int:
        return len(self.dropped) + len(self.relabelled)


def augmented_split(train: Split, plan: CurationPlan) -> Split:
    """``train`` followed by one copy of each relabelled example (ascending index) with its new label:
    (n_train + r) rows."""
    copies = list(plan.relabelled)
    if not copies:
        return train
    labels = np.concatenate([train.labels, np.array([plan.relabelled[i] for i in copies], dtype=np.int64)])
    return Split([*train.texts, *(train.texts[i] for i in copies)], labels, None)


def random_removals(n_train: int, k: int, draws: int, seed: int) -> list[list[int]]:
    """``draws`` sets of ``k`` distinct examples drawn uniformly from the ``n_train`` (draw d from its own seeded
    stream, so adding draws keeps the earlier ones)."""
    if not 0 <= k <= n_train:
        raise ValueError(f"cannot remove {k} of {n_train} examples")
    return [sorted(int(i) for i in np.random.default_rng([int(seed), 1_000 + d]).choice(n_train, k, replace=False))
            for d in range(draws)]


def arm_masks(plan: CurationPlan, removals: dict[str, list[int]]) -> dict[str, np.ndarray]:
    """{arm: mask over the augmented split (n_train + r,) uint8}: ``full``, ``curated``, then one arm per entry of
    ``removals`` (name -> the original examples it removes: random draws and baselines), in the given order."""
    n, copies = plan.n_train, list(plan.relabelled)
    full = np.concatenate([np.ones(n, dtype=np.uint8), np.zeros(len(copies), dtype=np.uint8)])
    curated = full.copy()
    curated[plan.changed] = 0
    curated[n:] = 1
    arms = {"full": full, "curated": curated}
    for name, removed in removals.items():
        if name in arms:
            raise ValueError(f"arm name {name!r} is taken")
        mask = full.copy()
        mask[list(removed)] = 0
        arms[name] = mask
    return arms


def curation_design(arms: dict[str, np.ndarray], seeds: int) -> Design:
    """Every arm ``seeds`` times, replicate by replicate: role = the arm's name, ``meta["replicate"]`` = each
    row's replicate index, ``meta["arms"]`` = the arm names in order; row id ``s * n_arms + arm index``."""
    if seeds < 1:
        raise ValueError(f"seeds={seeds} must be at least 1")
    names = list(arms)
    masks = np.stack([arms[a] for _ in range(seeds) for a in names])
    roles = [a for _ in range(seeds) for a in names]
    replicate = [s for s in range(seeds) for _ in names]
    return Design(masks, np.arange(len(masks)), roles, {"kind": "curation", "arms": names, "replicate": replicate})
