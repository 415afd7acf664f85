"""Where a validated drop acts on the test set: the spread of its per-test-example changes.

`dataspex validate` retrains the full set minus every example of its harmful pairs (``curated`` in
``validate/validation.json``, with ``per_test_change``: the mean over seeds of each test example's loss change,
nats). This prints, per run, for the test examples the pairs were *not* chosen on: their mean change (the
report's "other test examples" number), their median, and the ``--top`` largest moves either way with the
test text (read from the run's ``data.test_file`` when it has one). A mean carried by a few large moves and a
median near 0 says the drop acts on a few texts, not on the test set at large.

    python benchmarks/removal_spread.py --run /tmp/runs/f256u_m1024 --run /tmp/runs/w256u_m1024 --top 5
"""

from __future__ import annotations

import argparse
import csv
import os
import sys

import numpy as np
from omegaconf import OmegaConf

from dataspex.core.files import read_json


def spread(run_dir: str, top: int) -> dict:
    """The curated drop's changes on the test examples its pairs were not chosen on: mean, median and the
    ``top`` largest moves by size as ``(test index, change)``."""
    path = os.path.join(run_dir, "validate", "validation.json")
    if not os.path.exists(path):
        raise SystemExit(f"error: {run_dir} has no validation (run `dataspex validate run_dir={run_dir}` first)")
    cur = read_json(path).get("curated") or {}
    if cur.get("status") != "done" or "tests" not in cur:
        raise SystemExit(f"error: {run_dir}'s validation has no finished curated drop with its pairs' test examples "
                         "(re-run `dataspex validate`: it reuses its retrains)")
    change = np.asarray(cur["per_test_change"], dtype=np.float64)
    others = np.setdiff1d(np.arange(len(change)), cur["tests"])
    moves = sorted(((int(t), float(change[t])) for t in others), key=lambda x: -abs(x[1]))[:top]
    return {"dropped": cur["dropped"], "n_others": int(len(others)), "mean": float(change[others].mean()),
            "median": float(np.median(change[others])), "largest": moves}


def _test_texts(run_dir: str) -> list[str] | None:
    cfg = OmegaConf.load(os.path.join(run_dir, "config.yaml"))
    test_file = OmegaConf.select(cfg, "data.test_file")
    if not test_file or not str(test_file).endswith(".csv") or not os.path.exists(test_file):
        return None
    with open(test_file, newline="") as fh:
        return [row["text"] for row in csv.DictReader(fh)]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", action="append", required=True, help="a validated run directory (repeatable)")
    parser.add_argument("--top", type=int, default=5, help="largest moves to list")
    args = parser.parse_args(argv)
    for run in args.run:
        got = spread(run, args.top)
        texts = _test_texts(run)
        print(f"{run}: dropped {got['dropped']}; the other {got['n_others']} test examples: mean "
              f"{got['mean']:+.3f}, median {got['median']:+.4f}")
        for t, value in got["largest"]:
            text = "" if texts is None else " " + texts[t][:100].replace("\n", " ")
            print(f"  test #{t}: {value:+.2f}{text}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
