"""The validation files, written and read here only: ``validate/validation.csv`` / ``.parquet`` (one row per
pair) and ``validate/validation.json`` (the settings, the fit stamp and the curated-set effect)."""

from __future__ import annotations

import os

import pandas as pd

from dataspex.core.files import read_json, write_json, write_table
from dataspex.fit.artifacts import FAITHFULNESS, fit_stamp

__all__ = ["load_validation", "save_validation"]


def save_validation(store, table: pd.DataFrame, meta: dict) -> None:
    """Write the validation table and its settings (``meta``, stamped with the current fit)."""
    out_dir = store.path("validate")
    os.makedirs(out_dir, exist_ok=True)
    write_table(table, out_dir, "validation")
    write_json(os.path.join(out_dir, "validation.json"), dict(meta, fit_stamp=fit_stamp(store)))


def load_validation(store) -> tuple[pd.DataFrame, dict] | tuple[None, None]:
    """The table and settings written by ``dataspex validate`` (None, None when it has not run); ``stale`` in
    the settings says whether the fit changed since."""
    path = store.path("validate", "validation.parquet")
    if not os.path.exists(path):
        return None, None
    meta = read_json(store.path("validate", "validation.json"))
    stamp = fit_stamp(store) if os.path.exists(store.path(*FAITHFULNESS)) else None
    meta["stale"] = stamp is not None and meta.get("fit_stamp") != stamp
    return pd.read_parquet(path), meta
