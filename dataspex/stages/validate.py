"""``dataspex validate``: retrain the report's findings (the pairs its actions name) directly (full, minus i,
minus j, minus both) and check that their interaction is real; then rewrite the report with the verdicts.

The statistics are :mod:`dataspex.validate`, the training sets :mod:`dataspex.design.validation`; this stage
appends those sets to the design, retrains what is missing through the normal store (so it resumes, and
``dataspex train`` can finish or shard it) and writes ``<run_dir>/validate/``.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from dataspex.core.errors import DataspexError
from dataspex.design.validation import ROLE, curated_mask, extend_design, seeds_by_mask
from dataspex.fit.artifacts import choose_estimator, load_fitted
from dataspex.fit.ranking import select_pairs
from dataspex.report.context import listed_pairs, pair_evidence
from dataspex.report.drill import DRILL_DIR, load_fullset_drill
from dataspex.report.text import KINDS
from dataspex.stages.report import report_run
from dataspex.stages.rundir import open_run
from dataspex.stages.train import train_role
from dataspex.validate import analyse, analyse_curated, save_validation, seeds_needed, seeds_per_pair, settings

log = logging.getLogger("dataspex")

# Rounds of growth by power: a width measured on few seeds is itself noisy, so after growing to what the first
# widths asked for the widths are measured again (on unplanted WordNet one pair asked for 22 seeds from its
# 16-seed width and was still too wide at 22; benchmarks/README.md, "Seeds by power"). Widths only, never means.
GROWTH_ROUNDS = 4


def stage_validate(cfg) -> pd.DataFrame:
    opts = settings(cfg)
    store, data = open_run(cfg)
    fitted, faithfulness = load_fitted(store)
    ranking = choose_estimator(fitted, faithfulness, cfg.report.estimator)
    estimand = cfg.report.estimand
    if fitted[ranking].degree < 2:  # auto chose a model without pair terms: the honest answer, not an error
        log.warning("validate: nothing to validate: the most faithful model, %s, has no pair terms (pairs do "
                    "not improve the held-out fit), so the report lists no pair", ranking)
        return pd.DataFrame()
    design = store.load_design()
    siblings = pd.DataFrame()
    if opts["select"] == "findings":
        pairs, siblings = report_findings(cfg, store, design, data, fitted, faithfulness, ranking, opts)
        if pairs.empty:
            log.warning("validate: nothing to validate: none of the report's listed %s pairs is a finding "
                        "(held-out q-value <= report.q_max=%s), so the report names no action; "
                        "validate.select=top retrains the top pairs anyway", " or ".join(opts["kinds"]),
                        cfg.report.q_max)
            return pd.DataFrame()
    elif opts["select"] == "drilled":
        pairs = drilled_pairs(store, opts)
        if pairs.empty:
            log.warning("validate: nothing to validate: none of the drill-down's %s pairs holds at the full "
                        "training set (its q-value <= report.q_max)", " or ".join(opts["kinds"]))
            return pd.DataFrame()
    else:
        pairs = select_pairs(fitted[ranking], opts["kinds"], opts["top_k"], estimand, data.n_test)
        if pairs.empty:
            raise DataspexError(f"{ranking} lists no {' or '.join(opts['kinds'])} pairs to validate")
    replicates = opts["seeds"]
    if cfg.train.seed_policy == "shared" and replicates > 1:
        log.warning("validate: train.seed_policy=shared gives every replicate the same seed: training one "
                    "replicate per training set, no interval")
        replicates = 1

    # Pairs name columns of the masks: units when the design is over units (their members are retrained together).
    # A claim is a pair at one test example: the pairs' own, then their siblings (other findings of the same pair,
    # read from the same retrains at their own test examples: no retrain more).
    claims = all_claims(pairs, siblings, opts["kinds"])
    pair_of = claim_pairs(claims, pairs)
    if len(claims) > len(pairs):
        log.info("validate: %d more %s of the same pairs at other test examples, read from the same retrains: %s",
                 len(claims) - len(pairs), "finding" if len(claims) - len(pairs) == 1 else "findings",
                 ", ".join(f"{r.kind} ({r.i}, {r.j}) on test {r.test}" for r in siblings.itertuples()))
    curated = curated_mask(design.n_units, pairs)
    masks, counts = seeds_by_mask(design.n_units, pairs, replicates, curated)
    output = faithfulness[ranking].get("output", "loss")
    design, results = _retrain(cfg, store, design, data, masks, counts, len(pairs), ranking)
    per_pair = np.full(len(pairs), replicates, dtype=np.int64)
    table = analyse(claims, design, results, fitted, ranking, design.n_units, per_pair[pair_of], opts["level"],
                    output)
    curated_seeds = replicates
    for _ in range(GROWTH_ROUNDS):
        want = pair_seeds(pair_of, seeds_per_pair(table, per_pair[pair_of], opts["max_seeds"]), per_pair)
        if not (want > per_pair).any():
            break
        log.info("validate: %d of %d pairs have an interval wider than half their predicted interaction: growing "
                 "their training sets to the seeds each needs (%s; validate.max_seeds=%d)",
                 int((want > per_pair).sum()), len(pairs), ", ".join(
                     f"({r.i}, {r.j}): {a} -> {b}" for r, a, b in zip(pairs.itertuples(), per_pair, want) if b > a),
                 opts["max_seeds"])
        per_pair = want
        masks, counts = seeds_by_mask(design.n_units, pairs, per_pair, curated)
        if curated is not None:
            curated_seeds = dict(zip((m.tobytes() for m in masks), counts))[curated.tobytes()]
        design, results = _retrain(cfg, store, design, data, masks, counts, len(pairs), ranking)
        table = analyse(claims, design, results, fitted, ranking, design.n_units, per_pair[pair_of], opts["level"],
                        output)
    table["seeds_needed"] = seeds_needed(table)
    harmful_tests = pairs.loc[pairs["kind"] == "harmful", "test"].tolist()  # the pairs the curated mask drops
    curated_effect = analyse_curated(curated, design, results, curated_seeds, opts["level"], output, harmful_tests)
    save_validation(store, table, {
        "estimator": ranking, "ranking_estimand": estimand, "compared_estimand": "full", "top_k": opts["top_k"],
        "kinds": opts["kinds"], "select": opts["select"], "seeds": int(per_pair.max()), "first_seeds": opts["seeds"],
        "max_seeds": opts["max_seeds"], "level": opts["level"], "output": output,
        "seed_policy": str(cfg.train.seed_policy), "engine": str(cfg.train.engine), "n_training_sets": len(masks),
        "curated": curated_effect})
    for row in table.itertuples():
        log.info("validate: %-9s (%d, %d) on test %d: predicted %+.3f, realised %+.3f [%+.3f, %+.3f] -> %s; "
                 "removing both: its test loss %s, the other test losses %s (%+.3f [%+.3f, %+.3f])",
                 row.kind, row.i, row.j, row.test, row.predicted, row.realised, row.ci_low, row.ci_high,
                 row.verdict, row.removal, row.removal_elsewhere, row.realised_removal_elsewhere,
                 row.removal_elsewhere_ci_low, row.removal_elsewhere_ci_high)
    if curated_effect and curated_effect["status"] == "done":
        log.info("validate: dropping %s changes the mean test loss by %+.3f [%+.3f, %+.3f], the loss of the %d "
                 "test examples the pairs were not chosen on by %+.3f [%+.3f, %+.3f]",
                 curated_effect["dropped"], curated_effect["mean_loss_change"], curated_effect["ci_low"],
                 curated_effect["ci_high"], curated_effect["n_elsewhere"], curated_effect["elsewhere_change"],
                 curated_effect["elsewhere_ci_low"], curated_effect["elsewhere_ci_high"])
    report_run(cfg, store, data)
    return table


def _retrain(cfg, store, design, data, masks, counts, n_pairs: int, ranking: str):
    """Append the missing replicates of ``masks`` (``counts`` each) to the design (role ``validate``), train them
    through the store (resumable), and return the design and its results."""
    design, added = extend_design(design, masks, counts)
    if added:
        store.save_design(design)
    n_rows = int(sum(counts))
    lo, hi = min(counts), max(counts)
    log.info("validate: %d pairs by %s -> %d training sets x %s seeds = %d retrains (%d new in the design)",
             n_pairs, ranking, len(masks), lo if lo == hi else f"{lo}-{hi}", n_rows, added)
    trained = train_role(cfg, store, design, data, ROLE)
    log.info("validate: trained %d, reused %d", trained, n_rows - trained)
    return design, store.load_results(design)


def all_claims(pairs: pd.DataFrame, siblings: pd.DataFrame, kinds) -> pd.DataFrame:
    """The pairs' own claims and their siblings in the report's order: by kind (in ``kinds``' order), then rank."""
    if siblings.empty:
        return pairs
    claims = pd.concat([pairs, siblings], ignore_index=True)
    order = {k: n for n, k in enumerate(kinds)}
    claims["_order"] = claims["kind"].map(order)
    return claims.sort_values(["_order", "rank"], kind="stable").drop(columns="_order").reset_index(drop=True)


def claim_pairs(claims: pd.DataFrame, pairs: pd.DataFrame) -> np.ndarray:
    """For each claim (a row with ``i``, ``j``), the row of ``pairs`` that retrains its pair: (len(claims),) int.
    Every claim's pair must be among ``pairs``."""
    row = {(int(i), int(j)): k for k, (i, j) in enumerate(zip(pairs["i"], pairs["j"]))}
    return np.array([row[(int(i), int(j))] for i, j in zip(claims["i"], claims["j"])], dtype=np.int64)


def pair_seeds(pair_of: np.ndarray, want: np.ndarray, seeds: np.ndarray) -> np.ndarray:
    """The seeds each pair's training sets should have: the most any of its claims wants (``want``, one per claim;
    ``pair_of`` maps claims to pairs), never fewer than it has (``seeds``, one per pair)."""
    out = np.array(seeds, dtype=np.int64, copy=True)
    np.maximum.at(out, pair_of, np.asarray(want, dtype=np.int64))
    return out


def drilled_pairs(store, opts: dict) -> pd.DataFrame:
    """The pairs ``dataspex drill`` found to hold at the full training set (its fullset.json), the first
    ``validate.top_k`` of each kind in ``validate.kinds`` in the run's order. Refuses when the run has no
    drill-down over examples, or when the run was refitted after it (the drilled pairs were another fit's)."""
    fullset = load_fullset_drill(store, None)
    if fullset is None:
        raise DataspexError(f"validate.select=drilled validates the pairs that hold at the full set in a drill-down "
                            f"over examples, and {store.path(DRILL_DIR)} has none: run `dataspex drill "
                            f"run_dir={store.run_dir}` first")
    if fullset["stale"]:
        raise DataspexError(f"{fullset['run_dir']} drilled the pairs of an earlier fit of {store.run_dir}: remove it "
                            "and run `dataspex drill` again, or validate with validate.select=findings")
    table = fullset["table"]
    held = table[table["holds"].astype(bool)]
    parts = [held[held["kind"] == kind].sort_values("rank").head(opts["top_k"]) for kind in opts["kinds"]]
    return pd.concat(parts, ignore_index=True).drop_duplicates(subset=["i", "j"], keep="first").reset_index(drop=True)


def report_findings(cfg, store, design, data, fitted: dict, faithfulness: dict, ranking: str,
                    opts: dict) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The pairs the report acts on, in its order: of each kind in ``validate.kinds``, the first ``validate.top_k``
    findings (held-out BH q-value at most ``report.q_max``) among the report's ``report.top_k`` listed pairs, with
    the q-values computed over the same lists the report tests (:func:`dataspex.report.context.pair_evidence`).
    The top of a ranked list need not be a finding: validating it instead (``validate.select=top``) spends the
    retrains on pairs the report names no action for, while its actions stay unvalidated (on unplanted WordNet,
    2026-12-06, the three top harmful pairs by score were validated and none of the report's harmful findings).

    Returns (pairs, siblings): each pair once (the first of its claims), and every other finding of the same pairs
    at another test example (a pair can be harmful at one test example and redundant at another: unplanted WordNet
    at 16n, (159, 236) at tests 38 and 60), which the same retrains answer at their own test examples."""
    other = [k for k in opts["kinds"] if k not in KINDS]
    if other:
        raise DataspexError(f"validate.kinds has {other} and validate.select=findings: the report tests only "
                            f"{' and '.join(KINDS)} pairs for findings; use validate.select=top for {other}")
    listed = listed_pairs(fitted[ranking], int(cfg.report.top_k), cfg.report.estimand, data.n_test)
    output = faithfulness[ranking].get("output", "loss")
    tested, _ = pair_evidence(design, store.load_results(design), fitted, ranking, output, listed,
                              float(cfg.report.q_max), str(cfg.report.pair_test))
    findings = [tested[kind][tested[kind]["finding"].astype(bool)].assign(kind=kind) for kind in opts["kinds"]]
    pairs = pd.concat([f.head(opts["top_k"]) for f in findings], ignore_index=True)
    pairs = pairs.drop_duplicates(subset=["i", "j"], keep="first").reset_index(drop=True)
    chosen = set(zip(pairs["i"], pairs["j"]))
    claimed = set(zip(pairs["i"], pairs["j"], pairs["test"]))
    every = pd.concat(findings, ignore_index=True)
    same_pair = [(i, j) in chosen and (i, j, t) not in claimed
                 for i, j, t in zip(every["i"], every["j"], every["test"])]
    siblings = every[same_pair].drop_duplicates(subset=["i", "j", "test"], keep="first").reset_index(drop=True)
    return pairs, siblings
