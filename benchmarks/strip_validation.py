"""A copy of a run without its `dataspex validate` retrains, so that a second validation runs from scratch with
other seeds (benchmarks/README.md, "Seeds by power": is a validation's verdict stable across independent seeds?).

The copy keeps the config, the fit and every result of the study's own masks; the design loses its ``validate``
rows and the result files that hold them are left behind (a result file that mixes validate and other rows is
refused rather than split). Not every new retrain is independent of the old ones: new rows get ids from the
largest kept id + 1, the ids the removed rows had, and a seed is derived from ``(train.seed, mask id)``, so a new
row whose training set and id both match a removed row repeats that retrain exactly. ``overlap`` counts them
(on w256u: 36 of 864).

    python benchmarks/strip_validation.py --run /tmp/runs/w256u_m1024 --out /tmp/runs/w256u_fresh
    dataspex validate run_dir=/tmp/runs/w256u_fresh
    python benchmarks/strip_validation.py --run /tmp/runs/w256u_m1024 --out /tmp/runs/w256u_fresh --overlap
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys

import numpy as np

from dataspex.design.base import Design
from dataspex.design.validation import ROLE
from dataspex.store import RunStore

KEPT = ("config.yaml", "fingerprint.json", "overrides.json", "fit")


def strip(run_dir: str, out_dir: str) -> dict:
    """Write the copy; returns {"kept_rows", "dropped_rows", "kept_files", "dropped_files"}."""
    if os.path.exists(out_dir):
        raise SystemExit(f"error: {out_dir} exists; choose a new directory")
    src = RunStore(run_dir)
    design = src.load_design()
    keep = design.roles != ROLE
    dropped_ids = set(int(x) for x in design.mask_ids[~keep])
    files, dropped_files = [], 0
    for path in src.result_files():
        ids = set(int(x) for x in np.load(path)["mask_ids"])
        if ids & dropped_ids and ids - dropped_ids:
            raise SystemExit(f"error: {path} holds validate rows and other rows; not splitting it")
        if ids & dropped_ids:
            dropped_files += 1
        else:
            files.append(path)
    os.makedirs(os.path.join(out_dir, "results"))
    for name in KEPT:
        path = os.path.join(run_dir, name)
        if os.path.isdir(path):
            shutil.copytree(path, os.path.join(out_dir, name))
        elif os.path.exists(path):
            shutil.copy2(path, os.path.join(out_dir, name))
    meta = {k: v for k, v in design.meta.items() if k != ROLE}
    RunStore(out_dir).save_design(Design(design.masks[keep], design.mask_ids[keep], design.roles[keep], meta,
                                         design.units))
    for path in files:
        shutil.copy2(path, os.path.join(out_dir, "results"))
    return {"kept_rows": int(keep.sum()), "dropped_rows": int((~keep).sum()), "kept_files": len(files),
            "dropped_files": dropped_files}


def overlap(run_a: str, run_b: str) -> tuple[int, int]:
    """(validate rows of ``run_b`` whose id and training set both match a validate row of ``run_a``, validate rows
    of ``run_b``): the retrains the two validations share exactly."""
    rows = []
    for run in (run_a, run_b):
        d = RunStore(run).load_design()
        rows.append({int(i): m.tobytes() for i, m, r in zip(d.mask_ids, d.masks, d.roles) if r == ROLE})
    return sum(1 for i, m in rows[1].items() if rows[0].get(i) == m), len(rows[1])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", required=True, help="a validated run directory")
    parser.add_argument("--out", required=True, help="the new run directory (must not exist, or with --overlap: "
                                                     "the copy, validated since)")
    parser.add_argument("--overlap", action="store_true", help="count the retrains the two validations share")
    args = parser.parse_args(argv)
    if args.overlap:
        same, total = overlap(args.run, args.out)
        print(f"{same} of the {total} validate retrains of {args.out} repeat one of {args.run} exactly")
        return 0
    got = strip(args.run, args.out)
    print(f"{args.out}: {got['kept_rows']} design rows and {got['kept_files']} result files kept; "
          f"{got['dropped_rows']} validate rows and {got['dropped_files']} result files left out")
    return 0


if __name__ == "__main__":
    sys.exit(main())
