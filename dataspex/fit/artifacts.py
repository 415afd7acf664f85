"""The fit set on disk, written and read here only: ``fit/<estimator>.npz`` (InteractionResult) and
``fit/faithfulness.json`` (held-out scores per estimator), plus the fit stamp that tells later files which fit
they were made from.
"""

from __future__ import annotations

import hashlib
import os

import numpy as np

from dataspex.core.errors import DataspexError
from dataspex.core.files import read_json, write_json
from dataspex.fit.estimators import InteractionResult

__all__ = ["choose_estimator", "fit_stamp", "load_faithfulness", "load_fitted", "save_faithfulness",
           "save_fitted"]

FAITHFULNESS = ("fit", "faithfulness.json")


def save_fitted(store, name: str, result) -> str:
    """Write one estimator's InteractionResult as ``fit/<name>.npz``; returns the path."""
    path = store.path("fit", f"{name}.npz")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    result.save(path)
    return path


def save_faithfulness(store, faithfulness: dict) -> None:
    """Write the faithfulness table (estimator name -> scores): the list of estimators the fit holds."""
    write_json(store.path(*FAITHFULNESS), faithfulness)


def load_faithfulness(store) -> dict | None:
    """The faithfulness table, or None before ``dataspex fit``."""
    path = store.path(*FAITHFULNESS)
    return read_json(path) if os.path.exists(path) else None


def load_fitted(store) -> tuple[dict, dict]:
    """{estimator name: InteractionResult} and the faithfulness table written by `dataspex fit`."""
    faithfulness = load_faithfulness(store)
    if faithfulness is None:
        raise DataspexError(f"{store.run_dir} has no fitted estimators: run `dataspex fit run_dir={store.run_dir}`")
    results = {name: InteractionResult.load(store.path("fit", f"{name}.npz")) for name in faithfulness}
    return results, faithfulness


def fit_stamp(store) -> str:
    """A hash of fit/faithfulness.json: tells files made from a fit (validation, curves) whether it changed."""
    with open(store.path(*FAITHFULNESS), "rb") as fh:
        return hashlib.sha256(fh.read()).hexdigest()[:16]


def choose_estimator(results: dict, faithfulness: dict, wanted: str) -> str:
    """The estimator that ranks pairs: the one asked for, else the most faithful one that models pairs."""
    if wanted != "auto":
        if wanted not in results:
            raise DataspexError(f"report.estimator={wanted!r} was not fitted; fitted: {sorted(results)}")
        return wanted
    # Prefer estimators that found pairs; if none did, the most faithful one reports "none found".
    candidates = [name for name, res in results.items() if res.degree >= 2] or list(results)
    return max(candidates, key=lambda n: faithfulness[n]["r2_mean_over_outputs"] or -np.inf)
