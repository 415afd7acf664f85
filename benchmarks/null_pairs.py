"""False findings on null data (issue 15, item 4): how often does the report list a pair when no pair interacts?

Null outputs are built from a finished real ``dataspex run`` so that the noise is the real retraining noise, not
a Gaussian stand-in; each null study then goes through what the report does: fit the linear datamodel and the
ranking estimator on the fit masks, rank the top ``report.top_k`` pairs of each kind, test each on the held-out
masks against the linear model (``dataspex.fit.significance``), and count the pairs with a Benjamini-Hochberg
q-value <= ``report.q_max`` (findings). Variants:

* ``permuted``: the run's outputs with their rows shuffled against the masks (pure noise with the real outputs'
  distribution and their correlation across test examples; nothing depends on the mask);
* ``additive``: the linear datamodel's fit to the real outputs plus its residuals shuffled across masks (a purely
  additive function of the mask, real main effects, real noise shape);
* ``seed``: the difference of two retrains of the same masks under training seeds 0 and 1, over sqrt(2) (pure
  seed noise: every effect of the mask cancels); needs the replicate cache of ``benchmarks/budget.py``
  (``--replicate``), and uses the held-out masks only (3/4 to fit, 1/4 to test, shuffled per study). Both
  retrains must start from the run's base model: a replicate with its own classification head differs from the
  run by a function of the mask, and that difference has real pairs in it (38 of 100 studies listed some on
  fortunes with such a replicate, 5 of 100 with the run's head).

The share of studies with no finding answers the issue's question but is coarse (100 yes/no answers, standard
error 0.03), and a valid test sits at its edge: for independent uniform p-values, Benjamini-Hochberg at level q
lists something with probability exactly q (Simes), so at ``report.q_max`` 0.1 the expected share is 0.90. Each
study also keeps the one-sided p-value of every pair it tested (1 to ~20 per study); under null data a valid
test's p-values are uniform, so their share at or below 0.005 / 0.01 / 0.05 / 0.1 reads the test's level more finely
(``calibration``). ``--pair-test pooled,permutation`` reads the same ranked pairs of every study with each test,
so the tests are compared on identical pairs.

    python benchmarks/null_pairs.py --run /tmp/runs/f256p --replicate /tmp/budget/f256p/replicate.npz --studies 30
    python benchmarks/null_pairs.py --run /tmp/runs/f256p_4096 --fit-masks 1024 --studies 100   # own replicates
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings

import numpy as np
import pandas as pd
from scipy import stats

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from budget import estimator_config, markdown_table, read_replicate  # noqa: E402


def null_outputs(variant: str, Y: np.ndarray, masks: np.ndarray, rng, linear=None) -> np.ndarray:
    """One null data set (m, T) from real outputs ``Y`` (m, T): see the module docstring. ``linear`` is a fitted
    linear datamodel (``additive`` only)."""
    order = rng.permutation(len(Y))
    if variant == "permuted":
        return Y[order]
    if variant == "additive":
        fitted = linear.predict(masks)
        return fitted + (Y - fitted)[order]
    raise ValueError(f"unknown variant {variant!r}")


def one_study(masks_fit, Y_fit, masks_ho, Y_ho, est_cfg, lin_cfg, k: int, q_max: float,
              pair_tests=("pooled",)) -> dict:
    """Fit, rank, test one null study (outputs without the mean column). Every test of ``pair_tests`` reads the
    same ranked pairs, so their results pair up. Returns, per test, the number of pairs ``listed``, the
    ``findings`` (q <= q_max), the smallest q-value ``min_q`` and the one-sided ``p_values`` of the tested pairs
    (under null data each is uniform on [0, 1] when the test is valid)."""
    from hydra.utils import instantiate

    from dataspex.fit.ranking import ranked_pairs
    from dataspex.fit.significance import ranked_pair_tests

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        linear = instantiate(lin_cfg).fit(masks_fit, Y_fit)
        est = instantiate(est_cfg).fit(masks_fit, Y_fit)
    res, T = est.result_, Y_fit.shape[1]
    both = pd.concat([ranked_pairs(res, kind, k, "uniform", T) for kind in ("harmful", "redundant")],
                     ignore_index=True)
    if both.empty:
        return {test: {"listed": 0, "findings": 0, "min_q": None, "p_values": []} for test in pair_tests}
    baseline = linear.predict(masks_ho)
    out = {}
    for test in pair_tests:
        tested = ranked_pair_tests(res, both[["i", "j", "test"]], masks_ho, Y_ho, baseline, test)
        q, p = tested["q_value"].to_numpy(), tested["p_value"].to_numpy()
        out[test] = {"listed": len(both), "findings": int(np.sum(q <= q_max)), "min_q": float(np.nanmin(q)),
                     "p_values": [float(v) for v in p[np.isfinite(p)]]}
    return out


# 0.005 = 0.1 / 20: the p-value Benjamini-Hochberg at q_max 0.1 asks of the first of 20 tested pairs (10 per kind,
# the default top_k), so the share there is what decides whether a null study lists a pair.
LEVELS = (0.005, 0.01, 0.05, 0.1)


def calibration(p_values_by_study) -> dict:
    """How a test's null p-values sit against the uniform. ``p_values_by_study``: one sequence of p-values per
    study. Returns their number and, for each level a of :data:`LEVELS`, the share at or below a (a valid test
    gives about a; more is a test that lists noise), and the standard error of the share at 0.05 with the studies
    as clusters (the pairs of one study share its held-out masks and often a test example, so their p-values are
    not independent)."""
    groups = [np.asarray(p, dtype=np.float64) for p in p_values_by_study]
    p = np.concatenate([np.zeros(0), *groups])
    out = {"p_values": len(p), **{f"p<={a:g}": float(np.mean(p <= a)) if len(p) else np.nan for a in LEVELS}}
    sizes = np.array([len(g) for g in groups], dtype=np.float64)
    hits = np.array([np.sum(g <= 0.05) for g in groups], dtype=np.float64)
    k = len(groups)
    if k > 1 and sizes.sum() > 0:  # ratio estimator's cluster standard error
        share = hits.sum() / sizes.sum()
        dev = hits - share * sizes
        out["se(p<=0.05)"] = float(np.sqrt(k / (k - 1) * np.sum(dev ** 2)) / sizes.sum())
    else:
        out["se(p<=0.05)"] = np.nan
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", required=True)
    parser.add_argument("--replicate", default=None, help="replicate.npz of benchmarks/budget.py (variant seed)")
    parser.add_argument("--variants", default="permuted,additive,seed")
    parser.add_argument("--studies", type=int, default=30, help="null studies per variant")
    parser.add_argument("--estimator", default="quadratic",
                        help="the ranking estimator (budget.estimator_config: a key of the run's config or of "
                             "conf/estimator/, name:key=value for parameters)")
    parser.add_argument("--fit-masks", type=int, default=None,
                        help="fit on the run's first M fit masks only (default: all of them)")
    parser.add_argument("--out", default=None, help="null_pairs.json goes here (default: <run>/budget)")
    parser.add_argument("--output", default="loss", help="the output to model (fit.output): loss, margin or error")
    parser.add_argument("--pair-test", default="pooled",
                        help="the held-out pair tests (report.pair_test), comma-separated: pooled, permutation, "
                             "welch; each reads the same ranked pairs of every study")
    opts = parser.parse_args(argv)

    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from dataspex.core.outputs import modelled_output
    from dataspex.design.replicate import finished_replicate_rows
    from dataspex.fit.significance import PAIR_TESTS
    from dataspex.store import RunStore

    def log(msg):
        print(msg, file=sys.stderr, flush=True)

    pair_tests = tuple(opts.pair_test.split(","))
    unknown = [t for t in pair_tests if t not in PAIR_TESTS]
    if unknown:
        parser.error(f"--pair-test {','.join(unknown)}: not one of {', '.join(PAIR_TESTS)}")
    cfg = OmegaConf.load(os.path.join(opts.run, "config.yaml"))
    est_cfg = estimator_config(cfg, opts.estimator)
    lin_cfg = OmegaConf.create({"_target_": "dataspex.estimators.LinearDatamodel"})
    k, q_max = int(cfg.report.top_k), float(OmegaConf.select(cfg, "report.q_max", default=0.1))
    store = RunStore(opts.run)
    design = store.load_design()
    results = store.load_results(design)
    fit_keep, ho_keep = results.keep(design, "fit"), results.keep(design, "heldout")
    if opts.fit_masks is not None:  # the first M fit masks by id (the order a prefix of the design has)
        fit_ids = np.sort(results.mask_ids[fit_keep])[: opts.fit_masks]
        if len(fit_ids) < opts.fit_masks:
            parser.error(f"--fit-masks {opts.fit_masks}: the run has {len(fit_ids)} finished fit masks")
        fit_keep = np.isin(results.mask_ids, fit_ids)
    Y = results.outputs(opts.output)  # refuses an unknown output by name
    # How heavy the outputs' tails are (0 for a Gaussian): Student t's p-values are conservative in the far tail when
    # a few masks carry most of an output's variance, which the permutation test's are not.
    kurtosis = float(np.median(stats.kurtosis(Y, axis=0)))
    at = {int(m): r for r, m in enumerate(results.mask_ids)}
    rows = []
    for variant in opts.variants.split(","):
        rng = np.random.default_rng(0)
        if variant == "seed":
            if opts.replicate:
                cached = read_replicate(opts.replicate, cfg.train.seed)
                if cached is None:
                    parser.error(f"--replicate {opts.replicate} is missing or was not trained from the run's base "
                                 f"model (train.seed={cfg.train.seed}; older caches drew a new head): rerun "
                                 "benchmarks/budget.py")
                if opts.output == "margin":
                    parser.error("--replicate caches hold test losses only: --output margin needs the run's own "
                                 "seed replicates")
                ids, _, rep = cached
                rep = modelled_output(opts.output, rep, np.zeros_like(rep))  # loss or error: functions of the loss
                rows_of = np.array([at[int(m)] for m in ids])
            else:  # the run's own seed replicates: the same base model by construction
                done = finished_replicate_rows(design, results.mask_ids)
                if len(done) < 16:
                    log(f"variant seed skipped: {len(done)} finished seed replicates in the run and no --replicate")
                    continue
                rows_of = np.array([a for a, _ in done])
                rep = Y[np.array([b for _, b in done])]
            masks, null = results.masks[rows_of], (Y[rows_of] - rep) / np.sqrt(2.0)
        else:
            masks = results.masks
            linear = instantiate(lin_cfg).fit(results.masks[fit_keep], Y[fit_keep]) if variant == "additive" else None
        for s in range(opts.studies):
            start = time.perf_counter()
            if variant == "seed":
                order = rng.permutation(len(masks))
                cut = 3 * len(order) // 4
                fit_rows, ho_rows = order[:cut], order[cut:]
                out = one_study(masks[fit_rows], null[fit_rows], masks[ho_rows], null[ho_rows], est_cfg, lin_cfg,
                                k, q_max, pair_tests)
            else:
                Yn = null_outputs(variant, Y, masks, rng, linear)
                out = one_study(masks[fit_keep], Yn[fit_keep], masks[ho_keep], Yn[ho_keep], est_cfg, lin_cfg,
                                k, q_max, pair_tests)
            for test, got in out.items():
                rows.append({"variant": variant, "test": test, "study": s, **got})
            log(f"{variant} {s}: " + ", ".join(f"{test} {got['findings']} of {got['listed']}"
                                                for test, got in out.items())
                + f" ({time.perf_counter() - start:.0f} s)")
    table = pd.DataFrame(rows)
    summary = table.groupby(["variant", "test"], sort=False).agg(
        studies=("study", "size"), with_findings=("findings", lambda f: int((f > 0).sum())),
        mean_findings=("findings", "mean"), median_min_q=("min_q", "median")).reset_index()
    summary["no_pairs_share"] = 1 - summary["with_findings"] / summary["studies"]
    # The share of studies is 100 yes/no answers; the null p-values of every tested pair are ~20 per study, so
    # a test's level is read more finely off them (uniform on [0, 1] when the test is valid).
    levels = pd.DataFrame([calibration(group["p_values"])
                           for _, group in table.groupby(["variant", "test"], sort=False)])
    summary = pd.concat([summary, levels], axis=1)
    out_dir = opts.out or os.path.join(opts.run, "budget")
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "null_pairs.json"), "w") as fh:
        json.dump({"run": opts.run, "output": opts.output, "pair_tests": pair_tests, "estimator": opts.estimator,
                   "q_max": q_max, "top_k": k, "median_excess_kurtosis": kurtosis,
                   "fit_masks": int(fit_keep.sum()), "rows": rows}, fh, indent=1)
    print(f"\n{opts.run} ({opts.output}; {', '.join(pair_tests)}): null studies, ranking by {opts.estimator}, top {k} "
          f"pairs per kind tested, q <= {q_max}; the outputs' median excess kurtosis per test example {kurtosis:.1f}\n")
    print("\n".join(markdown_table(summary)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
