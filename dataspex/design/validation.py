"""Validation designs: the training sets that retrain a pair directly, appended to a run's design.

For a pair (i, j): full (every example), full minus i, full minus j, full minus both; and the full set minus every
example of the harmful pairs (the curated set). In a design over units, i and j are units (``n_units`` is the
number of units, and a unit's members are dropped together). Each is retrained ``validate.seeds`` times: under
``train.seed_policy=per_mask`` a mask's training seed is derived from ``(train.seed, mask id)``, so r replicates of
one training set are r design rows with the same mask bits and different ids. They are appended under role
``validate`` (existing ids never change), so an interrupted ``validate`` resumes where it stopped.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

ROLE = "validate"
VARIANTS = ("full", "minus_i", "minus_j", "minus_both")


def variant_masks(n_units: int, i: int, j: int) -> dict[str, np.ndarray]:
    """The four training sets of a pair: full, minus i, minus j, minus both."""
    out = {}
    for name, drop in zip(VARIANTS, ((), (i,), (j,), (i, j))):
        mask = np.ones(n_units, dtype=np.uint8)
        mask[list(drop)] = 0
        out[name] = mask
    return out


def curated_mask(n_units: int, pairs: pd.DataFrame) -> np.ndarray | None:
    """The full training set minus every example of the harmful pairs (None without harmful pairs)."""
    harmful = pairs[pairs["kind"] == "harmful"] if len(pairs) else pairs
    if not len(harmful):
        return None
    mask = np.ones(n_units, dtype=np.uint8)
    mask[np.unique(np.concatenate([harmful["i"].to_numpy(), harmful["j"].to_numpy()]))] = 0
    return mask if mask.any() else None


def needed_masks(n_units: int, pairs: pd.DataFrame) -> list[np.ndarray]:
    """Every distinct training set the pairs need, in a stable order."""
    return distinct_masks([mask for row in pairs.itertuples()
                           for mask in variant_masks(n_units, int(row.i), int(row.j)).values()])


def replicate_ids(design) -> dict[bytes, list[int]]:
    """{mask bits: ids of its ``validate`` rows, ascending}: replicate s of a training set is its s-th id."""
    rows = design.rows(ROLE)
    out: dict[bytes, list[int]] = {}
    for r in rows:
        out.setdefault(design.masks[r].tobytes(), []).append(int(design.mask_ids[r]))
    return {key: sorted(ids) for key, ids in out.items()}


def distinct_masks(masks: list[np.ndarray]) -> list[np.ndarray]:
    """``masks`` without repeats (equal bits), in first-seen order."""
    seen, out = set(), []
    for mask in masks:
        if mask.tobytes() not in seen:
            seen.add(mask.tobytes())
            out.append(mask)
    return out


def extend_design(design, masks: list[np.ndarray], replicates: int):
    """The design with enough ``validate`` rows for ``replicates`` replicates of every mask (rows that already
    exist are reused, so re-running never duplicates). Returns (design, number of rows added)."""
    have = replicate_ids(design)
    new = []
    for mask in distinct_masks(masks):  # one training set named twice (the curated set can be a pair's minus both)
        missing = replicates - len(have.get(mask.tobytes(), []))  # is trained once per replicate, not twice
        new += [mask] * max(missing, 0)
    if not new:
        return design, 0
    meta = dict(design.meta.get(ROLE) or {})
    meta["note"] = ("validate rows: replicate s of a training set is its s-th id among equal masks; "
                    "the seed differs per id under seed_policy=per_mask")
    return design.extend(np.array(new, dtype=np.uint8), ROLE, meta_key=ROLE, meta=meta), len(new)
