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
    """Every distinct training set the pairs need, in a stable order (:func:`seeds_by_mask` without the counts)."""
    return seeds_by_mask(n_units, pairs, 1)[0]


def replicate_ids(design) -> dict[bytes, list[int]]:
    """{mask bits: ids of its ``validate`` rows, ascending}: replicate s of a training set is its s-th id."""
    rows = design.rows(ROLE)
    out: dict[bytes, list[int]] = {}
    for r in rows:
        out.setdefault(design.masks[r].tobytes(), []).append(int(design.mask_ids[r]))
    return {key: sorted(ids) for key, ids in out.items()}


def most_per_mask(masks: list[np.ndarray], counts) -> tuple[list[np.ndarray], list[int]]:
    """``masks`` without repeats (equal bits), in first-seen order, each with the largest of ``counts`` (one per
    mask, or one for all) that any of its repeats asks for: a training set named twice (the full set of two pairs;
    the curated set when it is a pair's minus-both set) is trained once per replicate, as often as the most
    demanding name needs."""
    counts = np.broadcast_to(np.asarray(counts, dtype=np.int64), (len(masks),))
    most: dict[bytes, int] = {}
    out = []
    for mask, r in zip(masks, counts):
        key = mask.tobytes()
        if key not in most:
            out.append(mask)
        most[key] = max(most.get(key, 0), int(r))
    return out, [most[mask.tobytes()] for mask in out]


def seeds_by_mask(n_units: int, pairs: pd.DataFrame, seeds, curated: np.ndarray | None = None,
                  curated_seeds: int | None = None) -> tuple[list[np.ndarray], list[int]]:
    """The distinct training sets of ``pairs`` (and ``curated``), each with the replicates it needs: the most any
    pair using it needs (``seeds``: per pair row, or one count), so a training set shared by two pairs (the full
    set; minus i when i is in both) serves the one that needs more. ``curated`` gets ``curated_seeds`` (default:
    the most any harmful pair needs)."""
    per_pair = np.broadcast_to(np.asarray(seeds, dtype=np.int64), (len(pairs),))
    named, counts = [], []
    for row, r in zip(pairs.itertuples(), per_pair):
        for mask in variant_masks(n_units, int(row.i), int(row.j)).values():
            named.append(mask)
            counts.append(int(r))
    if curated is not None:
        if curated_seeds is None:
            harmful = (pairs["kind"] == "harmful").to_numpy()
            curated_seeds = int(per_pair[harmful].max()) if harmful.any() else int(per_pair.max())
        named.append(curated)
        counts.append(curated_seeds)
    return most_per_mask(named, counts)


def extend_design(design, masks: list[np.ndarray], replicates):
    """The design with enough ``validate`` rows for ``replicates`` replicates of every mask (one count for all, or
    one per mask; a mask given twice gets the larger count, :func:`most_per_mask`; rows that already exist are
    reused, so re-running never duplicates). Returns (design, number of rows added)."""
    have = replicate_ids(design)
    new = []
    for mask, wanted in zip(*most_per_mask(masks, replicates)):
        missing = wanted - len(have.get(mask.tobytes(), []))
        new += [mask] * max(missing, 0)
    if not new:
        return design, 0
    meta = dict(design.meta.get(ROLE) or {})
    meta["note"] = ("validate rows: replicate s of a training set is its s-th id among equal masks; "
                    "the seed differs per id under seed_policy=per_mask")
    return design.extend(np.array(new, dtype=np.uint8), ROLE, meta_key=ROLE, meta=meta), len(new)
