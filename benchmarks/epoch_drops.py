"""How a run's fine-tunes converge: per epoch, the median over masks of the mean training loss and of its drop
from the epoch before (nats), and the epochs the masks trained (fewer than ``train.epochs`` after a plateau stop).

The numbers behind ``train.plateau_tol``'s tolerances and its absolute rule (benchmarks/README.md, *Stopping at a
training-loss plateau*):

    python benchmarks/epoch_drops.py --run /tmp/runs/recipe_f_base      # and recipe_w_base, recipe_f_pt0.02, ...
"""

from __future__ import annotations

import argparse
import warnings

import numpy as np


def epoch_table(train_losses: np.ndarray) -> list[dict]:
    """Per epoch e = 1..epochs of the records (m, 1 + epochs): the median mean training loss and the median drop
    from epoch e - 1 (None for e = 1), over the masks that trained epoch e (NaN columns skipped)."""
    rows = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # an epoch no mask trained: all-NaN medians
        for e in range(1, train_losses.shape[1]):
            drop = None if e == 1 else float(np.nanmedian(train_losses[:, e - 1] - train_losses[:, e]))
            rows.append({"epoch": e, "loss": float(np.nanmedian(train_losses[:, e])), "drop": drop})
    return rows


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", required=True)
    opts = parser.parse_args(argv)

    from dataspex.store import RunStore
    from dataspex.store.health import trained_epochs

    results = RunStore(opts.run).load_results()
    if results.train_losses is None:
        raise SystemExit(f"error: {opts.run} has no training-loss records (result files written before them)")
    epochs = trained_epochs(results.train_losses)
    print(f"{opts.run}: {len(epochs)} masks; epochs trained: mean {epochs.mean():.2f}, {epochs.min()} to "
          f"{epochs.max()}")
    rows = epoch_table(results.train_losses)
    print("| epoch | median training loss | median drop from the epoch before |")
    print("|---:|---:|---:|")
    for r in rows:
        drop = "-" if r["drop"] is None else f"{r['drop']:.4f}"
        print(f"| {r['epoch']} | {r['loss']:.4f} | {drop} |")
    return rows


if __name__ == "__main__":
    main()
