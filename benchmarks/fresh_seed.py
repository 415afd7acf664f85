"""Does a seed policy's held-out R^2 carry over to a retrain under a fresh seed?

Under common random numbers (``train.seed_policy=shared``, or ``per_block`` with one block for the fit and
held-out masks) every retrain of a run shares one seed, so the seed's own effect is a function of the mask that
fit and held-out masks share, and an estimator can learn it. Scored on the run's held-out masks that looks like
faithfulness; against a retrain of the same masks under another seed it is noise. For each run this prints the
usual pooled held-out R^2 (beside the run's noise ceiling) and, on the held-out masks that have a seed replicate
(``design.replicates``), the R^2 of the same predictions against the original retrains and against the replicates.

    dataspex design data=files data.train_file=/tmp/real/f256p/train.csv data.test_file=/tmp/real/f256p/test.csv \\
        design.m=1024 design.heldout=256 design.replicates=128 train.seed_policy=per_block train.seed_block=1280 \\
        run_dir=/tmp/runs/f256p_crn      # fit + held-out ids 0-1279: one seed; replicates (ids 1280+): another
    dataspex train run_dir=/tmp/runs/f256p_crn
    python benchmarks/fresh_seed.py /tmp/runs/f256p /tmp/runs/f256p_crn     # beside a per_mask run of the same set
"""

from __future__ import annotations

import os
import sys
import warnings


def main(argv=None) -> list[dict]:
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from dataspex.core.metrics import pooled_r2
    from dataspex.design.replicate import finished_replicate_rows
    from dataspex.fit.faithfulness import noise_ceiling
    from dataspex.store import RunStore

    conf = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "conf", "estimator")
    rows = []
    for run in argv if argv is not None else sys.argv[1:]:
        store = RunStore(run)
        design = store.load_design()
        results = store.load_results(design)
        fit, heldout = results.keep(design, "fit"), results.keep(design, "heldout")
        loss, masks = results.outputs("loss"), results.masks
        pairs = finished_replicate_rows(design, results.mask_ids)
        originals, replicates = [a for a, _ in pairs], [b for _, b in pairs]
        ceiling = noise_ceiling(design, results, "loss")["pooled"]
        policy = OmegaConf.load(os.path.join(run, "config.yaml")).train.seed_policy
        for name in ("linear", "quadratic"):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                est = instantiate(OmegaConf.load(os.path.join(conf, f"{name}.yaml"))).fit(masks[fit], loss[fit])
            row = {"run": run, "seed_policy": str(policy), "estimator": name,
                   "heldout": pooled_r2(loss[heldout], est.predict(masks[heldout])), "ceiling": ceiling,
                   "same_seed": pooled_r2(loss[originals], est.predict(masks[originals])),
                   "fresh_seed": pooled_r2(loss[replicates], est.predict(masks[replicates])),
                   "n_replicated": len(pairs)}
            rows.append(row)
            print(f"{run} ({policy}) {name}: held-out R^2 {row['heldout']:.3f} (ceiling {ceiling:.3f}, "
                  f"{row['heldout'] / ceiling:.0%}); on the {len(pairs)} replicated masks: against the run's "
                  f"retrains {row['same_seed']:.3f}, against the fresh-seed replicates {row['fresh_seed']:.3f}")
    return rows


if __name__ == "__main__":
    main()
