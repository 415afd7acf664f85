"""``dataspex trak``: compute (or reuse) the run's TRAK scores, then score them on the held-out masks."""

from __future__ import annotations

import logging

import numpy as np
import torch
from omegaconf import OmegaConf

from dataspex.fit.trak import SCORE_KEYS, SCORES_FILE, load_trak_scores, save_trak_scores, trak_faithfulness
from dataspex.fit.trak.gradients import compute_trak_scores
from dataspex.stages.rundir import open_run

log = logging.getLogger("dataspex")


def stage_trak(cfg) -> np.ndarray:
    """``dataspex trak``: compute (or reuse) the run's TRAK scores, then score them on the held-out masks."""
    store, data = open_run(cfg)
    settings = {k: OmegaConf.to_container(cfg.trak, resolve=True).get(k) for k in SCORE_KEYS}
    scores, meta = load_trak_scores(store, with_meta=True)
    if scores is not None and not cfg.trak.recompute and meta.get("settings") == settings \
            and scores.shape == (data.n_train, data.n_test):
        log.info("trak: reusing %s (same settings; trak.recompute=true to redo)", store.path(*SCORES_FILE))
    else:
        if cfg.train.threads:
            torch.set_num_threads(int(cfg.train.threads))
        scores, meta = compute_trak_scores(cfg, store, data, return_meta=True)
        log.info("trak: scores -> %s", save_trak_scores(store, scores, meta))
    table = trak_faithfulness(store, scores)
    if table["available"]:
        for output, entry in table["outputs"].items():
            row = "  ".join(f"{name} LDS {m['lds_mean_over_outputs']:.3f} R^2 {m['r2_mean_over_outputs']:.3f}"
                            for name, m in entry.items() if m.get("lds_mean_over_outputs") is not None)
            log.info("trak: held-out %s: %s", output, row)
    else:
        log.info("trak: no held-out scoring yet (%s)", table["reason"])
    return scores
