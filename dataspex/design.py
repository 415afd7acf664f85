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


def make_design(cfg, n_train: int, store=None) -> Design:
    """Build the design named by ``conf/design/*.yaml`` for ``n_train`` examples.

    ``store`` (the run directory) is needed by ``kind: pairwise``, which screens its candidates with what the
    run already holds (see :func:`pairwise_masks`)."""
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
    if cfg.kind == "pairwise":
        structured, info = pairwise_masks(cfg, n_train, store)
        n_heldout = int(cfg.get("heldout", 0) or 0)
        heldout = random_masks(n_train, n_heldout, 0.5, rng) if n_heldout else np.zeros((0, n_train), np.uint8)
        masks = np.vstack([structured, heldout])
        roles = np.array(["pairwise"] * len(structured) + ["heldout"] * n_heldout)
        meta = {"kind": "pairwise", "pairwise": info, "heldout": n_heldout, "seed": cfg.seed}
        return Design(masks, np.arange(len(masks)), roles, meta)
    raise DataspexError(f"design.kind={cfg.kind!r} is not one of: random, spex, pairwise")


# ------------------------------------------------------------------------------ exhaustive pairwise design

def pairwise_screen(cfg, n_train: int, store) -> tuple[np.ndarray, str]:
    """First-order scores (n, T) that pick the pairwise design's candidates, and where they came from.

    ``design.screen``: ``trak`` (``<run_dir>/trak/scores.npz``, from ``dataspex trak``), ``linear`` (a linear
    datamodel fitted to the run's finished ``fit`` masks, on ``design.output``), or ``auto``: TRAK when its
    scores exist, else the linear datamodel; refuses when neither is available."""
    screen = str(cfg.get("screen", "auto") or "auto")
    if screen not in ("auto", "trak", "linear"):
        raise DataspexError(f"design.screen={screen!r} is not one of: auto, trak, linear")
    if store is None:
        raise DataspexError("design=pairwise screens candidates with a run's TRAK scores or retraining results: "
                            "give it a run directory")
    where = f"run_dir={store.run_dir}"
    if screen in ("auto", "trak"):
        from dataspex.trak import load_trak_scores

        scores = load_trak_scores(store)
        if scores is not None:
            if scores.shape[0] != n_train:
                raise DataspexError(f"{store.path('trak', 'scores.npz')} scores {scores.shape[0]} training "
                                    f"examples, the data has {n_train}: re-run `dataspex trak {where}`")
            return scores, "trak"
        if screen == "trak":
            raise DataspexError(f"design.screen=trak but {store.run_dir} has no TRAK scores: run "
                                f"`dataspex trak {where}` first")
    if store.has_design():
        design = store.load_design()
        results = store.load_results(design)
        role = "spex" if design.meta.get("kind") == "spex" else "fit"
        keep = np.isin(results.mask_ids, design.mask_ids[design.roles == role])
        if keep.sum() >= 4:
            from dataspex.estimators import LinearDatamodel

            Y = results.outputs(str(cfg.get("output", "loss") or "loss"))[keep]
            model = LinearDatamodel(cv=min(5, int(keep.sum()))).fit(results.masks[keep], Y)
            return model.coef_, "linear"
    if screen == "linear":
        raise DataspexError(f"design.screen=linear needs finished random masks in {store.run_dir}: run "
                            f"`dataspex design` + `dataspex train` there first (design=random)")
    raise DataspexError(f"design=pairwise needs a first-order screen to pick its {cfg.candidates} candidates, "
                        f"and {store.run_dir} has none: run `dataspex trak {where}` (TRAK scores), or train a "
                        "random design there first (a linear datamodel screens then)")


def pairwise_masks(cfg, n_train: int, store) -> tuple[np.ndarray, dict]:
    """The exhaustive pairwise masks over the top ``design.candidates`` screened examples: the full set, each
    single removal and each pair removal (1 + K + K(K-1)/2 masks), with a description for the design's meta.
    Warns (log) when the K(K-1)/2 pair retrains exceed the budget ``design.m``."""
    import logging

    from dataspex.estimators import Pairwise, screen_candidates

    K = int(cfg.candidates)
    if not 2 <= K <= n_train:
        raise DataspexError(f"design.candidates={K} must be in [2, n_train={n_train}]")
    scores, source = pairwise_screen(cfg, n_train, store)
    candidates = screen_candidates(scores, K)
    n_pairs = K * (K - 1) // 2
    budget = cfg.get("m")
    if budget is not None and n_pairs > int(budget):
        logging.getLogger("dataspex").warning(
            "design: %d candidates need %d pair retrains (plus %d), over the budget design.m=%d: lower "
            "design.candidates, or use a sparse estimator (ProxySPEX, SPEX)", K, n_pairs, 1 + K, int(budget))
    masks = Pairwise.design(n_train, candidates)
    return masks, {"candidates": candidates.tolist(), "K": K, "screen": source, "n_masks": len(masks)}


def extend_pairwise(existing: Design, cfg, store) -> Design | None:
    """``existing`` plus the pairwise masks it lacks, under role ``pairwise`` (fresh ids; existing rows and ids
    untouched); None when it already has them all. ``meta["pairwise"]`` describes the latest screen, with
    ``all_candidates`` the union over every extension."""
    masks, info = pairwise_masks(cfg, existing.n_train, store)
    have = {row.tobytes() for row in existing.masks[existing.roles == "pairwise"]}
    new = np.array([row for row in masks if row.tobytes() not in have], dtype=np.uint8).reshape(-1, existing.n_train)
    if not len(new):
        return None
    previous = (existing.meta.get("pairwise") or {}).get("all_candidates", [])
    info["all_candidates"] = sorted(set(previous) | set(info["candidates"]))
    return existing.extend(new, "pairwise", meta_key="pairwise", meta=info)
