"""``dataspex design``: write the ablation masks into the run directory (or extend its design with pairwise
masks)."""

from __future__ import annotations

import logging

import numpy as np
from omegaconf import OmegaConf

from dataspex.core.errors import DataspexError
from dataspex.design import extend_pairwise, make_design, settings_differences
from dataspex.design.random import grow_random
from dataspex.design.replicate import extend_replicates
from dataspex.fit.estimators import LinearDatamodel
from dataspex.fit.significance import STARVED_CELL_SHARE
from dataspex.fit.trak import load_trak_scores
from dataspex.stages.rundir import open_run, record_setting
from dataspex.stages.units import build_units

log = logging.getLogger("dataspex")

SCREENS = ("auto", "trak", "linear")


def pairwise_screen(cfg, n_train: int, store, units=None) -> tuple[np.ndarray, str]:
    """First-order scores (n_units, T) that pick the pairwise design's candidates, and where they came from.

    ``design.screen``: ``trak`` (``<run_dir>/trak/scores.npz``, from ``dataspex trak``; per example, summed over
    each unit's members when the design has ``units``), ``linear`` (a linear datamodel fitted to the run's
    finished ``fit`` masks, on ``design.output``), or ``auto``: TRAK when its scores exist, else the linear
    datamodel; refuses when neither is available."""
    screen = str(cfg.screen)
    if screen not in SCREENS:
        raise DataspexError(f"design.screen={screen!r} is not one of: {', '.join(SCREENS)}")
    where = f"run_dir={store.run_dir}"
    if screen in ("auto", "trak"):
        scores = load_trak_scores(store)
        if scores is not None:
            if scores.shape[0] != n_train:
                raise DataspexError(f"{store.path('trak', 'scores.npz')} scores {scores.shape[0]} training "
                                    f"examples, the data has {n_train}: re-run `dataspex trak {where}`")
            return (scores if units is None else units.sum_rows(scores)), "trak"
        if screen == "trak":
            raise DataspexError(f"design.screen=trak but {store.run_dir} has no TRAK scores: run "
                                f"`dataspex trak {where}` first")
    if store.has_design():
        design = store.load_design()
        results = store.load_results(design)
        keep = results.keep(design, "fit")
        if keep.sum() >= 4:
            Y = results.outputs(str(cfg.output))[keep]
            model = LinearDatamodel(cv=min(5, int(keep.sum()))).fit(results.masks[keep], Y)
            return model.coef_, "linear"
    if screen == "linear":
        raise DataspexError(f"design.screen=linear needs finished random masks in {store.run_dir}: run "
                            f"`dataspex design` + `dataspex train` there first (design=random)")
    raise DataspexError(f"design=pairwise needs a first-order screen to pick its {cfg.candidates} candidates, "
                        f"and {store.run_dir} has none: run `dataspex trak {where}` (TRAK scores), or train a "
                        "random design there first (a linear datamodel screens then)")


def add_replicates(cfg, store) -> None:
    """Append ``design.replicates`` seed replicates of held-out masks (:mod:`dataspex.design.replicate`), unless
    the seed policy would train them exactly like the originals."""
    count = int(OmegaConf.select(cfg, "design.replicates", default=0) or 0)
    if count <= 0:
        return
    if str(cfg.train.seed_policy) == "shared":
        log.warning("design: design.replicates=%d ignored: under train.seed_policy=shared a replicate trains exactly "
                    "like its original, so it measures no seed noise (the report then shows no noise ceiling)",
                    count)
        return
    design, added = extend_replicates(store.load_design(), count)
    if added:
        store.save_design(design)
        log.info("design: added %d seed replicates of held-out masks (the noise ceiling)", added)


def stage_design(cfg) -> None:
    store, data = open_run(cfg, create=True)
    _base_design(cfg, store, data)
    add_replicates(cfg, store)


def _base_design(cfg, store, data) -> None:
    stored = store.load_design() if store.has_design() else None
    extending = cfg.design.kind == "pairwise" and stored is not None
    # An extension keeps the stored grouping; a new design makes its own (clusters: embeddings once, then kept).
    units = stored.units if extending else build_units(cfg, store, data)

    def screen():
        return pairwise_screen(cfg.design, data.n_train, store, units)

    if extending:  # pairwise masks extend the run's design
        design = extend_pairwise(stored, cfg.design, screen)
        if design is None:
            log.info("design: %s already has these pairwise masks", store.run_dir)
        else:
            store.save_design(design)
            log.info("design: added %d pairwise masks (%s screen, candidates %s) -> %s",
                     int((design.roles == "pairwise").sum()), design.meta["pairwise"]["screen"],
                     design.meta["pairwise"]["candidates"], store.path("design.npz"))
        return
    n_units = data.n_train if units is None else units.n_units
    if stored is not None:
        _check_or_grow(cfg, store, stored, n_units, units, screen)
        return
    design = make_design(cfg.design, n_units, screen=screen).over_units(units)
    store.save_design(design)
    counts = {str(r): int((design.roles == r).sum()) for r in np.unique(design.roles)}
    over = f"over {design.n_units} units ({design.units.spec}) of" if design.by_unit else "over"
    log.info("design: %d masks %s %d training examples %s -> %s", len(design), over, data.n_train, counts,
             store.path("design.npz"))
    _warn_starved_cells(cfg.design, counts.get("heldout", 0))


def _warn_starved_cells(design_cfg, n_heldout: int) -> None:
    """Say before any retraining when a kept fraction far from 0.5 leaves the held-out pair tests few masks: random
    masks put n_heldout * min(p, 1 - p)^2 of them in a pair's sparsest cell, and the report reads power off that
    cell with the same bound (:data:`~dataspex.fit.significance.STARVED_CELL_SHARE` of the held-out masks)."""
    p = float(OmegaConf.select(design_cfg, "p", default=0.5))
    if design_cfg.kind != "random" or n_heldout == 0 or min(p, 1 - p) ** 2 >= STARVED_CELL_SHARE:
        return
    log.warning("design: at design.p=%g a pair's sparsest cell (neither or both of its examples kept) gets about "
                "%.1f of the %d held-out masks (a quarter at p=0.5), so the report's pair tests have less power; "
                "on planted fortunes at p=0.9, 768 held-out masks made all 8 planted pairs findings where 256 made "
                "6 (design.heldout; benchmarks/README, 'Three times the held-out masks')",
                p, n_heldout * min(p, 1 - p) ** 2, n_heldout)


def _check_or_grow(cfg, store, stored, n_units: int, units, screen) -> None:
    """The run already has a design: check that ``cfg.design`` describes it (without the rows later stages
    appended), or, for a random design and a larger ``design.m`` with every other setting the same, grow it
    (:func:`dataspex.design.random.grow_random`): the new fit masks train, every retrain the run has is kept."""
    existing = stored.without_extensions()
    have = existing.meta.get("m")
    is_random = cfg.design.kind == "random" == existing.meta.get("kind")
    # A random design's masks with design.m set to the stored count: what the design stage made (the first
    # grown.from masks), grown to that count when it grew since.
    design_cfg = OmegaConf.merge(cfg.design, {"m": have}) if is_random else cfg.design
    start = (existing.meta.get("grown") or {}).get("from") if is_random else None
    made = OmegaConf.merge(cfg.design, {"m": start}) if start is not None else design_cfg
    design = make_design(made, n_units, screen=screen).over_units(units)
    if start is not None:
        design = grow_random(design, have) or design
    if existing.meta != design.meta or not np.array_equal(existing.masks, design.masks):
        differing = "; ".join(settings_differences(design_cfg, existing)) or f"stored {existing.meta}"
        raise DataspexError(f"{store.run_dir} already has a different design ({differing}); "
                            "use a new run_dir for a new design")
    grows = is_random and int(cfg.design.m) != have
    if not grows:
        log.info("design: %s already has this design (%d masks)", store.run_dir, len(existing))
        return
    bigger = grow_random(stored, int(cfg.design.m), where=store.run_dir)
    store.save_design(bigger)
    record_setting(store.run_dir, "design.m", int(cfg.design.m))
    kept = store.done_ids()
    log.info("design: grew the random design of %s from %d to %d fit masks: %d new masks to train, the %d retrains "
             "it has are kept (overrides.json now replays design.m=%d)", store.run_dir, have, int(cfg.design.m),
             int(cfg.design.m) - have, len(kept), int(cfg.design.m))
