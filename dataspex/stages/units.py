"""The run's units (``design.units``), built once by ``dataspex design`` from the data and, for clusters, the
frozen base model's embeddings (kept in ``embeddings.npz`` so a second design over the same run reuses them)."""

from __future__ import annotations

import logging
import time

from omegaconf import OmegaConf

from dataspex.core.errors import DataspexError
from dataspex.core.models import load_base_model, load_tokenizer
from dataspex.design.units import Units, check_units, cluster_units, column_units, units_setting
from dataspex.train.common import encode
from dataspex.train.embed import embed

log = logging.getLogger("dataspex")


def build_units(cfg, store, data) -> Units | None:
    """The units ``design.units`` names, or None for ``example`` (masks over the examples themselves)."""
    kind, arg = check_units(units_setting(cfg), data.train.columns, str(cfg.data.source))
    if kind == "example":
        return None
    if kind == "drill":
        raise DataspexError("design.units=drill is a drill-down's grouping, made by `dataspex drill run_dir=<a run "
                            "over units>`: it is not set by hand")
    if kind == "column":
        units = column_units(data.train.columns[arg], arg)
    else:
        units = cluster_units(embeddings(cfg, store, data), int(arg), int(cfg.design.seed))
    if units.n_units < 2:
        raise DataspexError(f"design.units={units.spec} makes {units.n_units} unit: a study of pairs needs at least "
                            "2 (is the column the same on every row?)")
    sizes = units.sizes()
    log.info("design: %d training examples in %d units (%s; %d to %d members, median %d)", units.n_train,
             units.n_units, units.spec, sizes.min(), sizes.max(), int(sorted(sizes)[len(sizes) // 2]))
    return units


def embeddings(cfg, store, data):
    """The frozen base model's embeddings of the training texts (n_train, hidden), from ``embeddings.npz`` when
    they were made from this model and data, else computed (and kept)."""
    source = {"model": OmegaConf.to_container(cfg.model, resolve=True), "data": data.content_hash()}
    kept = store.load_embeddings(source)
    if kept is not None and len(kept) == data.n_train:
        return kept
    started = time.perf_counter()
    tokenizer = load_tokenizer(cfg.model)
    n_labels = len(data.label_names) if data.label_names else None
    base = load_base_model(cfg.model, n_labels, int(cfg.train.seed))
    vectors = embed(base, encode(data.train, tokenizer, data.task, cfg.model.max_length))
    store.save_embeddings(vectors, source)
    log.info("design: embedded %d training texts with the base model in %.1f s -> %s", data.n_train,
             time.perf_counter() - started, store.path("embeddings.npz"))
    return vectors
