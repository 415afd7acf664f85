"""The link from a run to its drill-down (``dataspex drill``, in ``<run_dir>/drill``). Over units: for each drilled
unit pair, the example pairs the drill-down's report found inside it, read from the drill-down's own report files
(``report/pairs.csv`` and ``summary.json``), which its report stage wrote. Over examples: which of the run's top
pairs hold at the full training set, read from the drill-down's ``fullset.json``
(:mod:`dataspex.validate.fullset`)."""

from __future__ import annotations

import json
import os

import pandas as pd

from dataspex.fit.artifacts import fit_stamp
from dataspex.store import RunStore
from dataspex.validate.fullset import load_fullset

DRILL_DIR = "drill"  # the drill-down run, inside the run directory
SHOWN = 3  # example pairs shown per drilled unit pair and kind


def load_drill(store, units) -> dict | None:
    """{"run_dir", "estimator", "trust", "pairs": the drilled unit pairs [(a, b)], "found": one row per example
    pair of the drill-down's report that lies inside a drilled unit pair (both examples members of a or b),
    with its unit pair, kind, rank, examples (training indices), score, q-value, finding and texts}, or None
    when the run has no reported drill-down (or is not over units)."""
    if units is None:
        return None
    child = RunStore(store.path(DRILL_DIR))
    pairs_path, summary_path = child.path("report", "pairs.csv"), child.path("report", "summary.json")
    if not (child.has_design() and os.path.exists(pairs_path) and os.path.exists(summary_path)):
        return None
    design = child.load_design()
    with open(summary_path) as fh:
        child_summary = json.load(fh)
    drilled = [tuple(p) for p in design.meta.get("drill", {}).get("pairs", [])]
    table = pd.read_csv(pairs_path)
    rows = []
    for r in table.itertuples():
        x, y = (int(design.units.members(int(u))[0]) for u in (r.i, r.j))
        inside = {int(units.unit_of[x]), int(units.unit_of[y])}
        for a, b in drilled:
            if inside <= {a, b}:
                rows.append({"unit_pair": f"{units.names[a]} + {units.names[b]}", "a": a, "b": b, "kind": r.kind,
                             "rank": int(r.rank), "x": x, "y": y, "score": float(r.score),
                             "q_value": float(r.q_value) if pd.notna(r.q_value) else None,
                             "finding": bool(r.finding) if pd.notna(r.finding) else False,
                             "text_x": r.text_i, "text_y": r.text_j, "test": int(r.test)})
                break
    found = pd.DataFrame(rows, columns=["unit_pair", "a", "b", "kind", "rank", "x", "y", "score", "q_value",
                                        "finding", "text_x", "text_y", "test"])
    found = found.sort_values(["a", "b", "kind", "rank"]).groupby(["a", "b", "kind"]).head(SHOWN)
    return {"run_dir": child.run_dir, "estimator": child_summary.get("estimator"),
            "trust": child_summary.get("trust"), "pairs": drilled, "found": found.reset_index(drop=True)}


def load_fullset_drill(store, units) -> dict | None:
    """{"run_dir", "table" (one row per drilled pair: :func:`dataspex.validate.fullset.fullset_table`), "meta"
    (its settings), "stale" (the run was refitted after the drill-down chose its pairs)}, or None when the run is
    over units or has no drill-down over examples."""
    if units is not None:
        return None
    run_dir = store.path(DRILL_DIR)
    table, meta = load_fullset(run_dir)
    if table is None:
        return None
    return {"run_dir": run_dir, "table": table, "meta": meta, "stale": meta.get("fit_stamp") != fit_stamp(store)}

