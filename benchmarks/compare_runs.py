"""Are two run directories the same study? Design, retraining losses, fitted models and ranked pairs.

    python benchmarks/compare_runs.py RUN_A RUN_B

Prints one line per artifact (identical / differs, with the largest difference) and exits 1 if anything that
a refactor must not change differs: the design (masks, ids, roles, metadata), every mask's test losses and
margins (compared bitwise), every fitted model's keys and coefficients (bitwise), the ranked pairs and triples
and the report's summary. Timings (fit seconds) are not compared. Between runs made by different dataspex
versions, fit/faithfulness.json rows and report/summary.json are compared on the fields both have (a field only
one has is named in the detail); summary.json's ``examples_to_review`` (before it became two lists) is read as
``examples_to_review_predicted`` of an unvalidated run, ``examples_to_review_validated`` of a validated one.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np
import pandas as pd

from dataspex.fit.estimators import InteractionResult
from dataspex.store import RunStore


def _json(path):
    with open(path) as fh:
        return json.load(fh)


def _common(a: dict, b: dict, skip=()) -> tuple[bool, list[str]]:
    """Whether ``a`` and ``b`` agree on the keys both have (minus ``skip``), and the keys only one has."""
    shared = (set(a) & set(b)) - set(skip)
    return all(a[k] == b[k] for k in shared), sorted((set(a) ^ set(b)) - set(skip))


def _faithfulness(fa: dict, fb: dict) -> tuple[bool, str]:
    same, only = set(fa) == set(fb), set()
    for name in set(fa) & set(fb):
        agree, extra = _common(fa[name], fb[name], skip=("fit_seconds",))
        same, only = same and agree, only | set(extra)
    return same, f"estimators {sorted(fa)} vs {sorted(fb)}" + (f"; compared without {sorted(only)} (in one only)"
                                                               if only else "")


def _summary(s: dict) -> dict:
    """summary.json with the single list of earlier versions renamed to the one of the two lists it meant."""
    s = dict(s)
    if "examples_to_review" in s and "examples_to_review_predicted" not in s:
        old, change = s.pop("examples_to_review"), s.pop("predicted_mean_loss_change_if_removed", None)
        which = "validated" if s.get("validation") is not None else "predicted"
        s[f"examples_to_review_{which}"] = old
        s[f"predicted_mean_loss_change_if_{which}_removed"] = change
    return s


def compare(run_a: str, run_b: str) -> list[tuple[str, bool, str]]:
    a, b = RunStore(run_a), RunStore(run_b)
    out = []
    da, db = a.load_design(), b.load_design()
    same = (np.array_equal(da.masks, db.masks) and np.array_equal(da.mask_ids, db.mask_ids)
            and np.array_equal(da.roles, db.roles) and da.meta == db.meta)
    out.append(("design (masks, ids, roles, meta)", same, f"{len(da)} vs {len(db)} masks"))
    ra, rb = a.load_results(da), b.load_results(db)
    same = np.array_equal(ra.mask_ids, rb.mask_ids) and np.array_equal(ra.losses, rb.losses) \
        and np.array_equal(ra.margins, rb.margins)
    gap = float(np.abs(ra.losses - rb.losses).max()) if ra.losses.shape == rb.losses.shape else float("nan")
    out.append(("losses and margins, bitwise", same, f"{len(ra)} results each, max |loss difference| {gap:.3g}"))
    fa, fb = _json(a.path("fit", "faithfulness.json")), _json(b.path("fit", "faithfulness.json"))
    out.append(("fit/faithfulness.json (without fit seconds)", *_faithfulness(fa, fb)))
    for name in sorted(set(fa) | set(fb)):
        try:
            x, y = InteractionResult.load(a.path("fit", f"{name}.npz")), InteractionResult.load(b.path("fit", f"{name}.npz"))
        except FileNotFoundError as exc:
            out.append((f"fit/{name}.npz", False, str(exc)))
            continue
        same = x.keys == y.keys and np.array_equal(x.fourier, y.fourier)
        out.append((f"fit/{name}.npz (keys, coefficients)", same, f"{len(x.keys)} vs {len(y.keys)} keys"))
    for table in ("pairs.csv", "triples.csv", "faithfulness_curve.csv"):
        pa, pb = a.path("report", table), b.path("report", table)
        if not (os.path.exists(pa) or os.path.exists(pb)):
            continue
        ta, tb = pd.read_csv(pa), pd.read_csv(pb)
        out.append((f"report/{table}", ta.equals(tb), f"{len(ta)} vs {len(tb)} rows"))
    sa, sb = _summary(_json(a.path("report", "summary.json"))), _summary(_json(b.path("report", "summary.json")))
    same, only = _common(sa, sb)
    out.append(("report/summary.json", same, f"examples to review (predicted) {sa.get('examples_to_review_predicted')}"
                + (f"; compared without {only} (in one only)" if only else "")))
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_a")
    parser.add_argument("run_b")
    args = parser.parse_args(argv)
    rows = compare(args.run_a, args.run_b)
    for what, same, detail in rows:
        print(f"{'identical' if same else 'DIFFERS  '}  {what}: {detail}")
    return 0 if all(same for _, same, _ in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
