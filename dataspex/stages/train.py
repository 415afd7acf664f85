"""``dataspex train``: retrain a LoRA adapter per mask of this shard and store every test example's loss."""

from __future__ import annotations

import logging
import time

import numpy as np
import torch
from tqdm.auto import tqdm

from dataspex.core.models import load_base_model, load_tokenizer
from dataspex.stages.rundir import open_run, shard_rows
from dataspex.store import health
from dataspex.train import get_engine
from dataspex.train.common import encode

log = logging.getLogger("dataspex")


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
    if cfg.train.threads:
        torch.set_num_threads(int(cfg.train.threads))
    tokenizer = load_tokenizer(cfg.model)
    n_labels = len(data.label_names) if data.label_names else None
    base = load_base_model(cfg.model, n_labels, cfg.train.seed)
    train = encode(data.train, tokenizer, data.task, cfg.model.max_length)
    test = encode(data.test, tokenizer, data.task, cfg.model.max_length)
    train_chunks(cfg, store, design, todo, get_engine(cfg.train.engine), base, train, test)


def train_chunks(cfg, store, design, todo, engine, base, train, test) -> None:
    """Train every row in ``todo`` in one engine call (so a batched engine can fill its passes), writing a
    result file each ``train.chunk_size`` finished masks. The engine yields each mask as soon as its pass is
    done, so a crash loses the pass in progress and fewer than ``chunk_size`` finished masks. Masks whose
    training diverged (:mod:`dataspex.store.health`) are logged as a warning: the first at once, all at the end."""
    chunk = max(1, int(cfg.train.chunk_size))
    started = time.perf_counter()
    pending: list[tuple[int, np.ndarray, np.ndarray, np.ndarray]] = []
    row_of = {int(design.mask_ids[r]): r for r in todo}
    flags = health.flag_masks([], np.zeros((0, 0)))
    epochs_trained: list[int] = []  # per mask: the epochs its record holds (fewer than train.epochs after a stop)

    last = started

    def flush():
        nonlocal flags, last
        ids = [p[0] for p in pending]
        losses, curves = np.array([p[1] for p in pending]), np.array([p[3] for p in pending])
        now = time.perf_counter()
        # Wall seconds since the previous chunk (model loading not included): `dataspex plan` reads the rate.
        store.write_results(ids, design.masks[[row_of[i] for i in ids]], losses, np.array([p[2] for p in pending]),
                            {"engine": cfg.train.engine, "seconds": now - last, "threads": torch.get_num_threads()},
                            train_losses=curves)
        last = now
        pending.clear()
        epochs_trained.extend(health.trained_epochs(curves).tolist())
        found = health.flag_masks(ids, losses, curves)
        if found["n_flagged"] and not flags["n_flagged"]:
            first = found["ids"][0]
            log.warning("train: mask %d diverged or did not converge (%s); lower train.lr? (all such masks are "
                        "listed when training ends)", first, "; ".join(found["reasons"][first]))
        flags = health.merge(flags, found)

    with tqdm(total=len(todo), desc="retraining", unit="mask", disable=not cfg.progress) as bar:
        # The engine trains on example masks (a unit's members kept or dropped with it); the store keeps the
        # design's own masks, over units.
        for mask_id, loss, margin, curve in engine(base, cfg.lora, cfg.train, train, test, design.example_masks(todo),
                                                   design.mask_ids[todo]):
            pending.append((mask_id, loss, margin, curve))
            bar.update(1)
            if len(pending) >= chunk:
                flush()
        if pending:
            flush()
    elapsed = time.perf_counter() - started
    log.info("train: %d masks in %.1f s (%.2f s per mask)", len(todo), elapsed, elapsed / len(todo))
    if cfg.train.get("plateau_tol") is not None:
        counts = np.array(epochs_trained)
        log.info("train: the plateau stop (train.plateau_tol=%s) ended masks after %.1f epochs on average (%d to %d; "
                 "train.epochs=%d; %d of %d masks trained them all)", cfg.train.plateau_tol, counts.mean(),
                 counts.min(), counts.max(), int(cfg.train.epochs), int((counts == int(cfg.train.epochs)).sum()),
                 len(counts))
    if flags["n_flagged"]:
        log.warning("train: DIVERGED %s: their results are stored but likely useless; lower train.lr (now %s) "
                    "and retrain in a new run_dir", health.summary(flags), cfg.train.lr)


def train_role(cfg, store, design, data, role: str) -> int:
    """Retrain the rows of ``role`` that have no result yet (resumable, through the configured engine); returns
    how many were trained."""
    done = store.done_ids()
    todo = np.array([r for r in design.rows(role) if int(design.mask_ids[r]) not in done], dtype=np.int64)
    if len(todo) == 0:
        return 0
    train_rows(cfg, store, data, design, todo)
    return len(todo)
