"""The stages as functions of (config, run directory): a thin composition of the modules that do the work.

    design -> train -> fit -> report      (``run`` does all four)

Each stage reads what the previous one wrote into the run directory, so any stage can be re-run alone.
"""

from __future__ import annotations

import logging
import os
import time

import numpy as np
from omegaconf import OmegaConf

from dataspex.errors import DataspexError
from dataspex.store import RunStore

log = logging.getLogger("dataspex")

# Training settings that change results (the rest - engine, chunking, threads - only change speed).
_TRAIN_RESULT_KEYS = ("epochs", "batch_size", "lr", "weight_decay", "seed", "seed_policy")


def fingerprint(cfg, data) -> dict:
    """What a run's results depend on; stored at design time and checked by every later stage."""
    return {
        "model": OmegaConf.to_container(cfg.model, resolve=True),
        "data": data.content_hash(),
        "lora": OmegaConf.to_container(cfg.lora, resolve=True),
        "train": {k: OmegaConf.to_container(cfg.train, resolve=True)[k] for k in _TRAIN_RESULT_KEYS},
    }


def open_run(cfg, create: bool = False):
    """Load the data and open the run directory, checking the fingerprint. Returns (store, data)."""
    from dataspex.data import load_data

    store = RunStore(cfg.run_dir)
    if not create and not os.path.isdir(store.run_dir):
        raise DataspexError(f"run_dir={cfg.run_dir!r} does not exist: run `dataspex run` or `dataspex design` first")
    data = load_data(cfg.data, cfg.model.task)
    store.check_fingerprint(fingerprint(cfg, data), create=create)
    return store, data


_EXTENSION_ROLES = ("pairwise", "validate")  # design rows appended to an existing run by later stages


def stage_design(cfg) -> None:
    from dataspex.design import make_design

    store, data = open_run(cfg, create=True)
    if cfg.design.kind == "pairwise" and store.has_design():  # pairwise masks extend the run's design
        from dataspex.design import extend_pairwise

        design = extend_pairwise(store.load_design(), cfg.design, store)
        if design is None:
            log.info("design: %s already has these pairwise masks", store.run_dir)
        else:
            store.save_design(design)
            log.info("design: added %d pairwise masks (%s screen, candidates %s) -> %s",
                     int((design.roles == "pairwise").sum()), design.meta["pairwise"]["screen"],
                     design.meta["pairwise"]["candidates"], store.path("design.npz"))
        return
    design = make_design(cfg.design, data.n_train, store=store)
    if store.has_design():
        existing = store.load_design()
        # Compare without the rows later stages appended (pairwise designs, validation retrains).
        base = ~np.isin(existing.roles, _EXTENSION_ROLES)
        existing = type(existing)(existing.masks[base], existing.mask_ids[base], existing.roles[base],
                                  {k: v for k, v in existing.meta.items() if k not in _EXTENSION_ROLES})
        if existing.meta != design.meta or not np.array_equal(existing.masks, design.masks):
            raise DataspexError(f"{store.run_dir} already has a different design ({existing.meta}); "
                                "use a new run_dir for a new design")
        log.info("design: %s already has this design (%d masks)", store.run_dir, len(existing))
        return
    store.save_design(design)
    counts = {str(r): int((design.roles == r).sum()) for r in np.unique(design.roles)}
    log.info("design: %d masks over %d training examples %s -> %s", len(design), data.n_train, counts,
             store.path("design.npz"))


def shard_rows(n_rows: int, index: int, count: int) -> np.ndarray:
    """The design rows shard ``index`` of ``count`` trains (round robin, so shards finish together)."""
    if count < 1 or not 0 <= index < count:
        raise DataspexError(f"shard.index={index} must be in [0, shard.count={count})")
    return np.arange(index, n_rows, count)


def stage_train(cfg) -> None:
    store, data = open_run(cfg)
    design = store.load_design()
    rows = shard_rows(len(design), cfg.shard.index, cfg.shard.count)
    done = store.done_ids()
    todo = np.array([r for r in rows if int(design.mask_ids[r]) not in done], dtype=np.int64)
    log.info("train: shard %d/%d has %d masks, %d already done, %d to train", cfg.shard.index, cfg.shard.count,
             len(rows), len(rows) - len(todo), len(todo))
    if len(todo) == 0:
        return
    train_rows(cfg, store, data, design, todo)


def train_rows(cfg, store, data, design, todo: np.ndarray) -> None:
    """Load the base model, tokenise once, and retrain the design rows ``todo`` into the store."""
    import torch

    from dataspex.models import load_base_model, load_tokenizer
    from dataspex.training import get_engine
    from dataspex.training.common import encode

    if cfg.train.threads:
        torch.set_num_threads(int(cfg.train.threads))
    tokenizer = load_tokenizer(cfg.model)
    n_labels = len(data.label_names) if data.label_names else None
    base = load_base_model(cfg.model, n_labels, cfg.train.seed)
    train = encode(data.train, tokenizer, data.task, cfg.model.max_length)
    test = encode(data.test, tokenizer, data.task, cfg.model.max_length)
    _train_chunks(cfg, store, design, todo, get_engine(cfg.train.engine), base, train, test)


def _train_chunks(cfg, store, design, todo, engine, base, train, test) -> None:
    """Train every row in ``todo`` in one engine call (so a batched engine can fill its passes), writing a
    result file each ``train.chunk_size`` finished masks: a crash loses at most the chunk in progress."""
    from tqdm.auto import tqdm

    chunk = max(1, int(cfg.train.chunk_size))
    started = time.perf_counter()
    pending: list[tuple[int, np.ndarray, np.ndarray]] = []
    row_of = {int(design.mask_ids[r]): r for r in todo}

    def flush():
        rows = [row_of[mask_id] for mask_id, _, _ in pending]
        store.write_results([p[0] for p in pending], design.masks[rows], np.array([p[1] for p in pending]),
                            np.array([p[2] for p in pending]), {"engine": cfg.train.engine})
        pending.clear()

    with tqdm(total=len(todo), desc="retraining", unit="mask", disable=not cfg.progress) as bar:
        for mask_id, loss, margin in engine(base, cfg.lora, cfg.train, train, test, design.masks[todo],
                                            design.mask_ids[todo]):
            pending.append((mask_id, loss, margin))
            bar.update(1)
            if len(pending) >= chunk:
                flush()
        if pending:
            flush()
    elapsed = time.perf_counter() - started
    log.info("train: %d masks in %.1f s (%.2f s per mask)", len(todo), elapsed, elapsed / len(todo))


def _fit_rows(design, results, role: str):
    keep = np.isin(results.mask_ids, design.mask_ids[design.roles == role])
    return results.masks[keep], keep


def stage_fit(cfg) -> dict:
    from hydra.utils import instantiate

    from dataspex.io import write_json

    store, data = open_run(cfg)
    design = store.load_design()
    results = store.load_results(design)
    # Validation retrains are not fitted on: an unfinished `validate` must not block `fit`.
    fitted_ids = design.mask_ids[design.roles != "validate"]
    missing = int((~np.isin(fitted_ids, results.mask_ids)).sum())
    if missing:
        if not cfg.fit.allow_missing:
            raise DataspexError(f"{missing} of {len(design)} masks have no result yet: run `dataspex train "
                                f"run_dir={store.run_dir}` to finish them (or fit.allow_missing=true)")
        log.warning("fit: %d of %d masks have no result; fitting on the rest", missing, len(design))
    Y = results.outputs(cfg.fit.output)
    Y = np.column_stack([Y, Y.mean(axis=1)])  # every test example, then the mean test output
    names = [f"test_{t}" for t in range(data.n_test)] + ["mean"]
    fit_role = "spex" if design.meta.get("kind") == "spex" else "fit"
    fit_masks, fit_keep = _fit_rows(design, results, fit_role)
    ho_masks, ho_keep = _fit_rows(design, results, "heldout")
    pw_masks, pw_keep = _fit_rows(design, results, "pairwise")
    if not fit_keep.any() and not pw_keep.any():
        raise DataspexError("no finished fit masks to fit on: run `dataspex train` first")
    faithfulness = {}
    os.makedirs(store.path("fit"), exist_ok=True)
    for name, est_cfg in cfg.estimators.items():
        if est_cfg is None or not fit_keep.any():
            continue
        estimator = instantiate(est_cfg)
        started = time.perf_counter()
        extra = {"design": design.meta["spex"]} if name == "spex" else {}
        estimator.fit(fit_masks, Y[fit_keep], **extra)
        seconds = time.perf_counter() - started
        result = estimator.result_
        result.output_names = names
        result.save(store.path("fit", f"{name}.npz"))
        r2, pooled = _heldout_r2(estimator, ho_masks, Y[ho_keep])
        faithfulness[name] = {"r2_mean_over_outputs": float(np.mean(r2)) if r2 is not None else None,
                              "r2_pooled": pooled,
                              "r2_per_output": None if r2 is None else [float(v) for v in r2],
                              "fit_seconds": seconds, "n_fit_masks": int(fit_keep.sum()),
                              "n_heldout_masks": int(ho_keep.sum()), "output": cfg.fit.output}
        log.info("fit: %-10s heldout R^2 %s  (%.1f s, %d masks)", name,
                 "n/a" if r2 is None else f"{np.mean(r2):.3f}", seconds, int(fit_keep.sum()))
    if pw_keep.any():  # design=pairwise rows: the Pairwise estimator (exact second differences at the full set)
        faithfulness["pairwise"] = _fit_pairwise(cfg, store, pw_masks, Y[pw_keep], names)
    write_json(store.path("fit", "faithfulness.json"), faithfulness)
    return faithfulness


def _fit_pairwise(cfg, store, masks, Y, names) -> dict:
    """Fit Pairwise on the "pairwise" rows into fit/pairwise.npz. Its model holds near the full set only, so it
    has no held-out R^2 on random masks (None: never the report's automatic choice)."""
    from dataspex.estimators import Pairwise

    started = time.perf_counter()
    estimator = Pairwise().fit(masks, Y)
    seconds = time.perf_counter() - started
    estimator.result_.output_names = names
    estimator.result_.save(store.path("fit", "pairwise.npz"))
    log.info("fit: %-10s %d candidates, %d masks (estimand: full)", "pairwise", len(estimator.candidates_),
             len(masks))
    return {"r2_mean_over_outputs": None, "r2_pooled": None, "r2_per_output": None, "fit_seconds": seconds,
            "n_fit_masks": len(masks), "n_heldout_masks": 0, "output": cfg.fit.output, "estimand": "full",
            "candidates": [int(i) for i in estimator.candidates_]}


def _heldout_r2(estimator, masks, Y):
    """Faithfulness on the held-out masks: R^2 per output, and pooled over outputs (1 - total SSE / total SST,
    which weights each test example by how much its loss varies). (None, None) without held-out masks."""
    from dataspex.metrics import faithfulness_r2

    if len(masks) < 2:
        return None, None
    predicted = estimator.predict(masks)
    per_output = np.asarray(faithfulness_r2(Y, predicted, multioutput="raw_values"))
    pooled = 1.0 - float(((Y - predicted) ** 2).sum() / max(((Y - Y.mean(axis=0)) ** 2).sum(), 1e-300))
    return per_output, pooled


def stage_report(cfg) -> str:
    from dataspex.report import write_report

    store, data = open_run(cfg)
    path = write_report(cfg, store, data)
    log.info("report: %s", path)
    return path


def stage_run(cfg) -> str:
    stage_design(cfg)
    stage_train(cfg)
    stage_fit(cfg)
    return stage_report(cfg)


# Every CLI stage: name -> "module:function" (imported on use, so a stage's heavy imports cost nothing elsewhere).
STAGES = {
    "run": "dataspex.pipeline:stage_run",
    "design": "dataspex.pipeline:stage_design",
    "train": "dataspex.pipeline:stage_train",
    "fit": "dataspex.pipeline:stage_fit",
    "report": "dataspex.pipeline:stage_report",
    "status": "dataspex.sweeps:stage_status",
    "collect": "dataspex.sweeps:stage_collect",
    "trak": "dataspex.trak:stage_trak",
    "validate": "dataspex.validate:stage_validate",
}
STAGE_HELP = {
    "run": "design + train + fit + report (the whole job)",
    "design": "write the ablation masks into the run directory",
    "train": "retrain a LoRA adapter per mask and store every test loss (resumable, shardable)",
    "fit": "fit interaction estimators to the stored results",
    "report": "write the report: ranked pairs, tables, heatmaps",
    "status": "show done/total masks per shard",
    "collect": "consolidate all results into one table (Parquet) for pandas / datasets",
    "trak": "TRAK influence scores on the LoRA parameters (first-order baseline and screen)",
    "validate": "retrain the top pairs directly (full, minus i, minus j, minus both) to confirm them",
}


def stage_function(name: str):
    """The function behind stage ``name``."""
    import importlib

    module, func = STAGES[name].split(":")
    return getattr(importlib.import_module(module), func)
