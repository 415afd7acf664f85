"""How often `dataspex validate` confirmed a finding, by kind, over runs: the base rate behind the report's line.

Reads the ``validation.csv`` (and ``validation.json``) of each validation folder named, a run's ``validate/`` or a
copy of one, keeps only validations of the report's findings (``validate.select=findings``, the default: other
selections answer another question and are refused), and prints per folder and in total how many harmful and
redundant findings were confirmed at the full training set.

    python benchmarks/confirmed_by_kind.py /tmp/exp10/wx_validate_findings /tmp/exp10/fx_validate_findings \\
        /tmp/exp10/f3_validate_findings /tmp/exp10/w3_validate_findings /tmp/exp10/f5_validate_findings \\
        /tmp/exp11/w6_validate_findings /tmp/runs/f256u_4096/validate /tmp/runs/w256u_4096/validate
"""

from __future__ import annotations

import argparse
import csv
import json
import os

KINDS = ("harmful", "redundant")


def tally(folder: str) -> dict:
    """{kind: (confirmed, validated)} of one validation of findings; SystemExit for another selection."""
    with open(os.path.join(folder, "validation.json")) as fh:
        select = json.load(fh).get("select", "findings")
    if select != "findings":
        raise SystemExit(f"error: {folder} validated select={select!r}, not the report's findings")
    with open(os.path.join(folder, "validation.csv"), newline="") as fh:
        rows = list(csv.DictReader(fh))
    return {kind: (sum(r["verdict"] == "confirmed" for r in rows if r["kind"] == kind),
                   sum(r["kind"] == kind for r in rows)) for kind in KINDS}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folders", nargs="+", help="validation folders (a run's validate/ or a copy)")
    opts = parser.parse_args(argv)
    per = {folder: tally(folder) for folder in opts.folders}
    total = {kind: tuple(sum(t[kind][k] for t in per.values()) for k in (0, 1)) for kind in KINDS}
    print("| validation | harmful: confirmed of | redundant: confirmed of |")
    print("|---|---:|---:|")
    for folder, t in [*per.items(), ("all", total)]:
        print(f"| {folder} | {t['harmful'][0]} of {t['harmful'][1]} | {t['redundant'][0]} of {t['redundant'][1]} |")
    return {"folders": per, "total": total}


if __name__ == "__main__":
    main()
