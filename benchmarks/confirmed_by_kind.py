"""How often `dataspex validate` confirmed a finding, by kind, over runs: the base rate behind the report's line.

Reads the ``validation.csv`` (and ``validation.json``) of each validation folder named, a run's ``validate/`` or a
copy of one, keeps only validations of the report's findings (``validate.select=findings``, the default: other
selections answer another question and are refused), and prints per folder and in total how many harmful and
redundant findings were confirmed at the full training set, how many came out with the predicted sign whether
confirmed or not, and the median realised / predicted size.

    python benchmarks/confirmed_by_kind.py /tmp/exp10/wx_validate_findings /tmp/exp10/fx_validate_findings \\
        /tmp/exp10/f3_validate_findings /tmp/exp10/w3_validate_findings /tmp/exp10/f5_validate_findings \\
        /tmp/exp11/w6_validate_findings /tmp/runs/f256u_4096/validate /tmp/runs/w256u_4096/validate
"""

from __future__ import annotations

import argparse
import csv
import json
import os

import numpy as np

KINDS = ("harmful", "redundant")


def read(folder: str) -> dict:
    """{kind: [validation rows]} of one validation of findings; SystemExit for another selection."""
    with open(os.path.join(folder, "validation.json")) as fh:
        select = json.load(fh).get("select", "findings")
    if select != "findings":
        raise SystemExit(f"error: {folder} validated select={select!r}, not the report's findings")
    with open(os.path.join(folder, "validation.csv"), newline="") as fh:
        rows = list(csv.DictReader(fh))
    return {kind: [r for r in rows if r["kind"] == kind] for kind in KINDS}


def tally(by_kind: dict) -> dict:
    """{kind: (confirmed, validated)} of :func:`read`'s rows."""
    return {kind: (sum(r["verdict"] == "confirmed" for r in rows), len(rows)) for kind, rows in by_kind.items()}


def signs_and_sizes(rows: list[dict]) -> tuple[int, int, float, float]:
    """(realised with the predicted sign, validated with a realised value, median realised / predicted, median
    |predicted|)."""
    done = [(float(r["predicted"]), float(r["realised"])) for r in rows
            if r["realised"] not in ("", "nan") and float(r["predicted"]) != 0]
    same = sum((p > 0) == (v > 0) and v != 0 for p, v in done)
    if not done:
        return same, 0, float("nan"), float("nan")
    return same, len(done), float(np.median([v / p for p, v in done])), float(np.median([abs(p) for p, _ in done]))


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folders", nargs="+", help="validation folders (a run's validate/ or a copy)")
    opts = parser.parse_args(argv)
    rows = {folder: read(folder) for folder in opts.folders}
    every = {kind: [r for by_kind in rows.values() for r in by_kind[kind]] for kind in KINDS}
    per, total = {folder: tally(by_kind) for folder, by_kind in rows.items()}, tally(every)
    signs = {kind: signs_and_sizes(every[kind]) for kind in KINDS}
    print("| validation | harmful: confirmed of | redundant: confirmed of |")
    print("|---|---:|---:|")
    for folder, t in [*per.items(), ("all", total)]:
        print(f"| {folder} | {t['harmful'][0]} of {t['harmful'][1]} | {t['redundant'][0]} of {t['redundant'][1]} |")
    for kind in KINDS:
        same, done, ratio, size = signs[kind]
        print(f"{kind}: {same} of {done} realised with the predicted sign; median realised / predicted {ratio:.2f}; "
              f"median |predicted| {size:.2f}")
    return {"folders": per, "total": total, "signs": signs}


if __name__ == "__main__":
    main()
