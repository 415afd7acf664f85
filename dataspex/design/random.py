"""Uniform random masks: each training example kept independently with probability ``design.p``.

A random design grows in place (:func:`grow_random`): a larger ``design.m`` on a run that has a random design
appends fit masks under new ids, so the retrains it has (fit, held-out, seed replicates, validation) are kept and
only the new masks train. Grown masks come from a generator of their own, seeded by ``(design.seed,
GROWTH_STREAM)``, as one sequence: the k-th grown mask is the same whether the design grew once or in steps.
"""

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


GROWTH_STREAM = 1  # second entropy word of the grown masks' generator; the design's own is seeded by design.seed


def grown_masks(n_units: int, first: int, count: int, p: float, seed: int) -> np.ndarray:
    """Masks ``first .. first + count - 1`` (count, n_units) uint8 of a random design's growth sequence."""
    rng = np.random.default_rng([int(seed), GROWTH_STREAM])
    return random_masks(n_units, first + count, p, rng)[first:]


def grow_random(design: Design, m: int, where: str = "this run") -> Design | None:
    """``design`` (a random design, possibly with rows later stages appended) with fit masks added until it has
    ``m`` of them; None when it already has ``m``. Refuses a smaller ``m`` (a design never drops masks whose
    retrains may exist) and any other design kind (their masks are not exchangeable draws of one distribution).

    The metadata's ``m`` becomes the new count and ``grown`` records where growth started (``from``: the ``m``
    the design was made with), so :func:`dataspex.design.settings_differences` compares ``design.m`` with the
    grown count and the design stage can rebuild the whole sequence to check it."""
    meta = design.meta
    if meta.get("kind") != "random":
        raise DataspexError(f"{where} has a {meta.get('kind')} design: only a random design grows by a larger "
                            "design.m (use a new run_dir for a larger design of another kind)")
    have, m = int(meta["m"]), int(m)
    if m < have:
        raise DataspexError(f"{where} has {have} fit masks, design.m={m} would drop some: a design never shrinks "
                            "(use a new run_dir for a smaller design)")
    if m == have:
        return None
    start = int((meta.get("grown") or {}).get("from", have))
    masks = grown_masks(design.n_units, have - start, m - have, float(meta["p"]), int(meta["seed"]))
    grown = {"from": start, "note": f"fit masks past the first {start} were added later, drawn from the "
                                    f"generator seeded by (design.seed, {GROWTH_STREAM})"}
    out = design.extend(masks, "fit", meta_key="grown", meta=grown)
    out.meta["m"] = m
    return out


def random_design(cfg, n_train: int, rng: np.random.Generator, screen=None) -> Design:
    """``design=random``: ``design.m`` fit masks, then ``design.heldout`` held-out masks."""
    fit = random_masks(n_train, cfg.m, cfg.p, rng)
    heldout = random_masks(n_train, cfg.heldout, cfg.p, rng)
    masks = np.vstack([fit, heldout])
    roles = np.array(["fit"] * cfg.m + ["heldout"] * cfg.heldout)
    meta = {"kind": "random", "m": cfg.m, "heldout": cfg.heldout, "p": cfg.p, "seed": cfg.seed}
    return Design(masks, np.arange(len(masks)), roles, meta)
