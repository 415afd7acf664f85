"""How well fitted pair models predict what `dataspex validate` measured at the full training set.

`dataspex validate` retrains each top pair's four training sets (full, without i, without j, without both) under
many seeds and records the realised interaction at the full set. This script reads one or more of its
``validation.csv`` files (a pair validated twice keeps the row with the most seeds) and, for each fitted model
named, the model's prediction of the same quantity (the pair's "full" estimand at the pair's test example), then
prints one row per pair and, per model, the correlation with the realised values, the mean absolute error and
how many signs agree. Models fitted on other designs of the same data (another ``design.p``, say) can be set
beside the one that chose the pairs.

    python benchmarks/validated_agreement.py \\
        --validate /tmp/runs/f256u_m1024/validate /tmp/runs/f256u_m1024/validate16 \\
        --model p=0.5:/tmp/runs/f256u_m1024/fit/quadratic.npz --model p=0.9:/tmp/runs/f256u_p09/fit/quadratic.npz
"""

from __future__ import annotations

import argparse
import csv
import os

import numpy as np


def validated_pairs(paths: list[str]) -> dict:
    """(i, j, test) -> the validation row with the most seeds, over every ``validation.csv`` under ``paths``."""
    out: dict = {}
    for path in paths:
        with open(os.path.join(path, "validation.csv"), newline="") as fh:
            for row in csv.DictReader(fh):
                key = (int(row["i"]), int(row["j"]), int(row["test"]))
                if key not in out or int(row["seeds"]) > int(out[key]["seeds"]):
                    out[key] = row
    return out


def agreement(predicted: np.ndarray, realised: np.ndarray) -> dict:
    """Pearson correlation (NaN when either side is constant), mean |error| and agreeing signs."""
    spread = predicted.std() > 0 and realised.std() > 0
    return {"corr": float(np.corrcoef(predicted, realised)[0, 1]) if spread else float("nan"),
            "mae": float(np.mean(np.abs(predicted - realised))),
            "signs": int((np.sign(predicted) == np.sign(realised)).sum()), "n": int(len(realised))}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--validate", nargs="+", required=True, help="validate directories (with validation.csv)")
    parser.add_argument("--model", action="append", required=True, help="NAME:path/to/fit/<estimator>.npz")
    opts = parser.parse_args(argv)

    from dataspex.fit.estimators.result import InteractionResult

    pairs = validated_pairs(opts.validate)
    models = {}
    for spec in opts.model:
        name, _, path = spec.partition(":")
        models[name] = InteractionResult.load(path)
    keys = sorted(pairs)
    realised = np.array([float(pairs[k]["realised"]) for k in keys])
    predicted = {name: np.array([model.pair_scores("full", output=t)[i, j] for i, j, t in keys])
                 for name, model in models.items()}
    names = list(models)
    print("| pair (test) | " + " | ".join(f"{n}: predicted" for n in names) + " | realised (se, seeds) | verdict |")
    print("|---|" + "---:|" * len(names) + "---|---|")
    for k, key in enumerate(keys):
        row = pairs[key]
        cells = " | ".join(f"{predicted[n][k]:+.3f}" for n in names)
        print(f"| ({key[0]}, {key[1]}) ({key[2]}) | {cells} | {realised[k]:+.3f} ({float(row['se']):.3f}, "
              f"{row['seeds']}) | {row['verdict']} |")
    out = {n: agreement(predicted[n], realised) for n in names}
    print()
    for n, a in out.items():
        print(f"{n}: correlation with the realised interactions {a['corr']:.2f}, mean |error| {a['mae']:.3f} nats, "
              f"signs agree {a['signs']} of {a['n']}")
    return out


if __name__ == "__main__":
    main()
