"""Seed replicates: held-out masks retrained once more, so the run measures its own noise ceiling.

Row r of role ``replicate`` repeats the mask of held-out row ``meta["replicate"]["of"][r]`` under a fresh id. Under
``train.seed_policy=per_mask`` (and ``per_block``) a mask's training seed comes from its id, so the replicate
trains the same examples with another LoRA initialisation and data order: what the two retrains share is the
mask's effect, what they do not is seed noise (:func:`dataspex.fit.faithfulness.noise_ceiling`). Appended like
the validation retrains (existing ids never change), so adding them to a finished run resumes and never makes its
fit stale.
"""

from __future__ import annotations

import numpy as np

ROLE = "replicate"


def extend_replicates(design, count: int):
    """The design with seed replicates of its first ``count`` held-out masks (fewer when it has fewer; rows that
    already exist are kept). Returns (design, number of rows added)."""
    heldout = design.rows("heldout")[: max(int(count), 0)]
    meta = dict(design.meta.get(ROLE) or {"of": []})
    have = list(meta["of"])
    new = [int(design.mask_ids[r]) for r in heldout if int(design.mask_ids[r]) not in set(have)]
    if not new:
        return design, 0
    row_of = {int(m): r for r, m in enumerate(design.mask_ids)}
    meta["of"] = have + new
    meta["note"] = "replicate row r retrains the held-out mask of id of[r] under a fresh id (another seed)"
    masks = design.masks[[row_of[m] for m in new]]
    return design.extend(np.asarray(masks, dtype=np.uint8), ROLE, meta_key=ROLE, meta=meta), len(new)


def replicate_pairs(design) -> list[tuple[int, int]]:
    """(held-out id, replicate id) for every replicate row, in the order they were appended."""
    of = (design.meta.get(ROLE) or {}).get("of", [])
    ids = design.mask_ids[design.rows(ROLE)]
    return [(int(a), int(b)) for a, b in zip(of, ids)]


def finished_replicate_rows(design, mask_ids) -> list[tuple[int, int]]:
    """(row of the held-out retrain, row of its replicate) in results whose masks are ``mask_ids`` (the stored
    results' order), for every replicate pair with both retrains finished, in the order they were appended."""
    row_of = {int(m): r for r, m in enumerate(mask_ids)}
    return [(row_of[a], row_of[b]) for a, b in replicate_pairs(design) if a in row_of and b in row_of]
