"""``dataspex fit``: fit every configured estimator to the stored results and score it on held-out masks.

The whole set is fitted in memory, then written and swapped in for ``fit/`` at once
(:func:`dataspex.fit.artifacts.write_fit_set`): a fit killed halfway leaves the previous set whole."""

from __future__ import annotations

import logging
import time

import numpy as np
from hydra.utils import instantiate
from omegaconf import OmegaConf

from dataspex.core.errors import DataspexError
from dataspex.design.base import UNFITTED_ROLES
from dataspex.fit.artifacts import clean_stale_fit_dirs, write_fit_set
from dataspex.fit.faithfulness import fit_outputs, heldout_r2
from dataspex.stages.rundir import open_run

log = logging.getLogger("dataspex")


def stage_fit(cfg) -> dict:
    store, data = open_run(cfg)
    clean_stale_fit_dirs(store)  # what a killed fit left: the old set back in place, unfinished sets removed
    design = store.load_design()
    results = store.load_results(design)
    # Validation retrains and seed replicates are not fitted on: unfinished ones must not block `fit`.
    fitted_ids = design.mask_ids[~np.isin(design.roles, UNFITTED_ROLES)]
    missing = int((~np.isin(fitted_ids, results.mask_ids)).sum())
    if missing:
        if not cfg.fit.allow_missing:
            raise DataspexError(f"{missing} of {len(design)} masks have no result yet: run `dataspex train "
                                f"run_dir={store.run_dir}` to finish them (or fit.allow_missing=true)")
        log.warning("fit: %d of %d masks have no result; fitting on the rest", missing, len(design))
    Y = fit_outputs(results, cfg.fit.output)  # every test example, then the mean test output
    names = [f"test_{t}" for t in range(data.n_test)] + ["mean"]
    ho_keep = results.keep(design, "heldout")
    estimators = {name: instantiate(est_cfg) for name, est_cfg in cfg.estimators.items() if est_cfg is not None}
    rows = {name: results.keep(design, est.design_role) for name, est in estimators.items()}
    if not any(keep.any() for keep in rows.values()):
        raise DataspexError("no finished fit masks to fit on: run `dataspex train` first")
    faithfulness, fitted = {}, {}
    for name, estimator in estimators.items():
        keep = rows[name]
        if not keep.any():
            log.info("fit: %-10s not fitted: the design has no finished %s masks", name, estimator.design_role)
            continue
        started = time.perf_counter()
        estimator.fit(results.masks[keep], Y[keep], **estimator.design_inputs(design.meta))
        seconds = time.perf_counter() - started
        result = estimator.result_
        result.output_names = names
        fitted[name] = result
        if estimator.heldout_scored:
            r2, pooled = heldout_r2(estimator, results.masks[ho_keep], Y[ho_keep])
            n_heldout = int(ho_keep.sum())
        else:
            r2, pooled, n_heldout = None, None, 0
        faithfulness[name] = {"r2_mean_over_outputs": float(np.mean(r2)) if r2 is not None else None,
                              "r2_pooled": pooled,
                              "r2_per_output": None if r2 is None else [float(v) for v in r2],
                              "fit_seconds": seconds, "n_fit_masks": int(keep.sum()),
                              "n_heldout_masks": n_heldout, "output": cfg.fit.output, **estimator.fit_summary(),
                              # what this fit was made with, so later stages refit it (faithfulness curves) even
                              # when they are not given the estimator again (+estimator@... is not replayed)
                              "config": OmegaConf.to_container(cfg.estimators[name], resolve=True)}
        log.info("fit: %-10s heldout R^2 %s  (%.1f s, %d %s masks)", name,
                 "n/a" if r2 is None else f"{np.mean(r2):.3f}", seconds, int(keep.sum()), estimator.design_role)
    faithfulness = write_fit_set(store, fitted, faithfulness, str(cfg.fit.output), design)
    log.info("fit: wrote the set of %d estimators (fit %s, on %s) -> %s", len(fitted),
             next(iter(faithfulness.values()))["fit_stamp"], cfg.fit.output, store.path("fit"))
    return faithfulness
