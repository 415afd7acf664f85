"""``dataspex collect``: every verified result in one Parquet table, ``<run_dir>/results.parquet``."""

from __future__ import annotations

import logging

from omegaconf import OmegaConf

from dataspex.stages.rundir import open_run

log = logging.getLogger("dataspex")


def stage_collect(cfg) -> str:
    """``dataspex collect``: every verified result in one Parquet table (one row per mask), written atomically.

    Checks the fingerprint first, like ``fit``: a collect with another model, data or training config refuses.
    """
    store, _ = open_run(cfg)
    design = store.load_design()
    path, info = store.write_table(OmegaConf.select(cfg, "collect.path", default=None), design)
    missing = info["n_masks"] - info["n_results"]
    if missing:
        log.warning("collect: %d of %d masks have no result yet (the table has the %d finished ones): "
                    "see `dataspex status run_dir=%s`", missing, info["n_masks"], info["n_results"], store.run_dir)
    log.info("collect: %d results, one per mask -> %s", info["n_results"], path)
    print(path, flush=True)
    return path
