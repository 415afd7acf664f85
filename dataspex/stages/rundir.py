"""The run directory as every stage opens it: the fingerprint of what results depend on, and the shards."""

from __future__ import annotations

import json
import os

import numpy as np
from omegaconf import OmegaConf

from dataspex.core.data import load_data
from dataspex.core.errors import DataspexError
from dataspex.core.files import atomic_write_text, write_json
from dataspex.core.settings import check_settings
from dataspex.design import settings_differences
from dataspex.design.units import check_units, units_setting
from dataspex.store import RunStore

__all__ = ["TRAIN_RESULT_KEYS", "check_design", "fingerprint", "open_run", "override_key", "record_creation",
           "record_setting", "shard_rows", "stored_overrides"]

# Training settings that change results (the rest - engine, chunking, threads - only change speed).
TRAIN_RESULT_KEYS = ("epochs", "batch_size", "lr", "weight_decay", "seed", "seed_policy")


def fingerprint(cfg, data) -> dict:
    """What a run's results depend on; stored at design time and checked by every later stage. ``units``: the
    ``design.units`` setting, when the masks are over groups (the assignment itself is in the design).

    ``data_summary`` (the data settings, row counts, label names, a hash per part) is recorded, not compared
    (``store.RECORDED_ONLY``): the content hash decides, the summary says what differs when it does."""
    out = {
        "model": OmegaConf.to_container(cfg.model, resolve=True),
        "data": data.content_hash(),
        "data_summary": data.summary(OmegaConf.to_container(cfg.data, resolve=True)),
        "lora": OmegaConf.to_container(cfg.lora, resolve=True),
        "train": {k: OmegaConf.to_container(cfg.train, resolve=True)[k] for k in TRAIN_RESULT_KEYS},
    }
    if str(cfg.train.seed_policy) == "per_block":  # its blocks decide which masks share a seed (runs under the
        out["train"]["seed_block"] = cfg.train.get("seed_block")  # other policies keep their fingerprint)
    if cfg.train.get("plateau_tol") is not None:  # a stop decides how long masks train (runs without one keep
        out["train"]["plateau_tol"] = float(cfg.train.plateau_tol)  # their fingerprint)
    units = units_setting(cfg)
    if units != "example":  # stored masks are over units: results belong to that grouping (runs over examples,
        out["units"] = units  # made before units existed, keep their fingerprint)
    return out


def open_run(cfg, create: bool = False):
    """Check the settings, load the data and open the run directory, checking the fingerprint and (for the
    stages after ``design``) that the design settings are the stored design's. Returns (store, data)."""
    check_settings(cfg)
    store = RunStore(cfg.run_dir)
    if not create and not os.path.isdir(store.run_dir):
        raise DataspexError(f"run_dir={cfg.run_dir!r} does not exist: run `dataspex run` or `dataspex design` first")
    data = load_data(cfg.data, cfg.model.task)
    check_units(units_setting(cfg), data.train.columns, str(cfg.data.source))
    store.check_fingerprint(fingerprint(cfg, data), create=create)
    if not create and store.has_design():
        check_design(cfg, store)
    return store, data


def check_design(cfg, store) -> None:
    """Refuse design settings that differ from the stored design's: a stage would silently keep the stored one."""
    design = store.load_design()
    differing = settings_differences(cfg.design, design)
    if differing:
        grow = ""
        if (len(differing) == 1 and differing[0].startswith("design.m:") and design.meta.get("kind") == "random"
                and int(cfg.design.m) > int(design.meta["m"])):
            grow = (f"; to add fit masks to this run instead (its retrains are kept): `dataspex design "
                    f"run_dir={store.run_dir} design.m={cfg.design.m}`")
        raise DataspexError(f"{store.run_dir} has a design made with other settings ({'; '.join(differing)}): "
                            f"drop those overrides to use the stored design, or use a new run_dir for a new one{grow}")


def shard_rows(n_rows: int, index: int, count: int) -> np.ndarray:
    """The design rows shard ``index`` of ``count`` trains (round robin, so shards finish together)."""
    if count < 1 or not 0 <= index < count:
        raise DataspexError(f"shard.index={index} must be in [0, shard.count={count})")
    return np.arange(index, n_rows, count)


def record_creation(run_dir: str, overrides: list[str], cfg) -> None:
    """At a run's creation, remember how it was made: ``overrides.json`` (the overrides later stages replay)
    and ``config.yaml`` (the resolved config), unless the run already has them (the first record stays)."""
    path = os.path.join(run_dir, "overrides.json")
    if os.path.exists(path):
        return
    os.makedirs(run_dir, exist_ok=True)
    write_json(path, list(overrides))
    atomic_write_text(os.path.join(run_dir, "config.yaml"), OmegaConf.to_yaml(cfg, resolve=True))


def override_key(override: str) -> str:
    """The config key a command-line override sets: ``+estimator@estimators.q=quadratic`` -> ``estimator``,
    ``~design.m`` -> ``design.m``."""
    return override.lstrip("+~").split("=", 1)[0].split("@", 1)[0]


def stored_overrides(run_dir: str) -> list[str]:
    """The overrides a run replays on every later stage (``overrides.json``; [] when it has none)."""
    path = os.path.join(run_dir, "overrides.json")
    if not os.path.exists(path):
        return []
    with open(path) as fh:
        return json.load(fh)


def record_setting(run_dir: str, key: str, value) -> None:
    """A setting the design stage changed in place (``design.m`` of a grown design), in the run's records: the
    replayed overrides set ``key=value`` (the stored override of ``key``, with or without a leading ``+``,
    replaced; appended when there was none), so later stages replay the new value, and ``config.yaml`` (what
    :func:`dataspex.load_run` reads as the run's config) holds it."""
    kept = [o for o in stored_overrides(run_dir) if override_key(o) != key]
    write_json(os.path.join(run_dir, "overrides.json"), kept + [f"{key}={value}"])
    config = os.path.join(run_dir, "config.yaml")
    if os.path.exists(config):
        resolved = OmegaConf.load(config)
        OmegaConf.update(resolved, key, value, force_add=True)
        atomic_write_text(config, OmegaConf.to_yaml(resolved))
