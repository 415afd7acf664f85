"""Did the curated training set help? The statistics behind ``dataspex curate``.

Each arm of the curation design (:mod:`dataspex.design.curation`) was retrained ``seeds`` times with paired seeds
and scored on the eval split. Per replicate s and arm a:

    loss[a, s] = mean eval loss (nats),   acc[a, s] = share of eval examples with margin > 0 (classification)

and the paired differences d[a, s] = loss[a, s] - loss[full, s] get a Student-t interval over the replicates
(:func:`dataspex.validate.analysis.t_interval`). The random draws are also pooled: per replicate, the mean over
draws. The verdict on the curated set compares it with the full set *and* with random removal of as many examples:

* **helped**: the eval loss fell (interval of curated - full below 0) and fell more than random removal's
  (interval of curated - random below 0);
* **hurt**: the eval loss rose (interval of curated - full above 0);
* **no measurable effect**: anything else (including "better than full, but not beyond random removal").
"""

from __future__ import annotations

import os

import numpy as np
import pandas as pd

from dataspex.core.files import read_json, write_json, write_table
from dataspex.fit.artifacts import FAITHFULNESS, fit_stamp
from dataspex.validate.analysis import t_interval

__all__ = ["analyse_curation", "curation_verdict", "load_curation", "per_replicate", "save_curation"]

CURATION_FILE = ("curate", "curation.json")


def per_replicate(design, results, seeds: int, task: str):
    """({arm: (r,) mean eval loss}, {arm: (r,) eval accuracy or NaN}, r): the replicates < ``seeds`` whose arms
    all have a result (a replicate with any arm missing is left out, so every difference is paired)."""
    arms = list(design.meta["arms"])
    replicate = np.asarray(design.meta["replicate"])
    row_of = {int(m): r for r, m in enumerate(results.mask_ids)}
    complete = []
    for s in range(seeds):
        rows = {design.roles[k]: row_of.get(int(design.mask_ids[k])) for k in np.flatnonzero(replicate == s)}
        if len(rows) == len(arms) and all(v is not None for v in rows.values()):
            complete.append(rows)
    loss = {a: np.array([results.losses[c[a]].mean() for c in complete]) for a in arms}
    acc = {a: (np.array([(results.margins[c[a]] > 0).mean() for c in complete]) if task == "classification"
               else np.full(len(complete), np.nan)) for a in arms}
    return loss, acc, len(complete)


def curation_verdict(vs_full: tuple[float, float], vs_random: tuple[float, float] | None) -> str:
    """helped / hurt / no measurable effect, from the (low, high) intervals of the eval-loss change against the
    full set and against random removal (None when there is no random arm)."""
    low, high = vs_full
    if not (np.isfinite(low) and np.isfinite(high)):
        return "no measurable effect"
    if low > 0:
        return "hurt"
    beyond_random = vs_random is not None and np.isfinite(vs_random[1]) and vs_random[1] < 0
    return "helped" if high < 0 and beyond_random else "no measurable effect"


def analyse_curation(design, results, seeds: int, level: float, task: str,
                     removed: dict[str, int]) -> tuple[pd.DataFrame, dict]:
    """One row per arm (and one for the random draws pooled): mean eval loss and accuracy, their paired change
    against ``full`` with a t-interval at ``level``; and the verdict on the curated set, with the paired intervals
    of curated minus random (pooled) and curated minus each baseline (``curated_vs_<arm>``). ``removed``: arm -> how
    many examples it removes or changes."""
    loss, acc, r = per_replicate(design, results, seeds, task)
    arms = list(design.meta["arms"])
    draws = [a for a in arms if a.startswith("random:")]
    if draws:
        loss["random (pooled)"] = np.mean([loss[a] for a in draws], axis=0) if r else np.zeros(0)
        acc["random (pooled)"] = np.mean([acc[a] for a in draws], axis=0) if r else np.zeros(0)
        removed = dict(removed, **{"random (pooled)": removed[draws[0]]})
    rows = []
    for arm in [*arms, *(["random (pooled)"] if draws else [])]:
        d_loss = loss[arm] - loss["full"]
        d_acc = acc[arm] - acc["full"]
        mean, _, lo, hi = t_interval(d_loss, level)
        amean, _, alo, ahi = t_interval(d_acc, level)
        rows.append({"arm": arm, "removed": int(removed.get(arm, 0)), "seeds": r,
                     "eval_loss": float(loss[arm].mean()) if r else np.nan,
                     "eval_accuracy": float(acc[arm].mean()) if r else np.nan,
                     "loss_change": mean, "loss_change_low": lo, "loss_change_high": hi,
                     "accuracy_change": amean, "accuracy_change_low": alo, "accuracy_change_high": ahi})
    table = pd.DataFrame(rows)
    vs_full = (float(table.loc[table.arm == "curated", "loss_change_low"].iloc[0]),
               float(table.loc[table.arm == "curated", "loss_change_high"].iloc[0]))
    summary = {"seeds": r, "level": level, "curated_vs_full": _interval(loss["curated"] - loss["full"], level)}
    vs_random = None
    if draws:
        summary["curated_vs_random"] = _interval(loss["curated"] - loss["random (pooled)"], level)
        vs_random = (summary["curated_vs_random"]["low"], summary["curated_vs_random"]["high"])
    for arm in arms:
        if arm not in ("full", "curated") and not arm.startswith("random:"):
            summary[f"curated_vs_{arm}"] = _interval(loss["curated"] - loss[arm], level)
    summary["verdict"] = curation_verdict(vs_full, vs_random) if r >= 2 else "no measurable effect"
    if r < 2:
        summary["why"] = f"{r} complete replicate(s): an interval needs at least 2 (curate.seeds)"
    return table, summary


def _interval(diff: np.ndarray, level: float) -> dict:
    mean, se, lo, hi = t_interval(diff, level)
    return {"mean": mean, "se": se, "low": lo, "high": hi}


def save_curation(store, summary: dict, table: pd.DataFrame | None = None) -> None:
    """Write ``curate/curation.json`` (stamped with the current fit) and, when given, the per-arm table."""
    out_dir = store.path(CURATION_FILE[0])
    os.makedirs(out_dir, exist_ok=True)
    if table is not None:
        write_table(table, out_dir, "curation")
    write_json(store.path(*CURATION_FILE), dict(summary, fit_stamp=fit_stamp(store)))


def load_curation(store) -> dict | None:
    """What ``dataspex curate`` wrote (None before it has run); ``stale``: the fit changed since."""
    path = store.path(*CURATION_FILE)
    if not os.path.exists(path):
        return None
    summary = read_json(path)
    stamp = fit_stamp(store) if os.path.exists(store.path(*FAITHFULNESS)) else None
    summary["stale"] = stamp is not None and summary.get("fit_stamp") != stamp
    return summary
