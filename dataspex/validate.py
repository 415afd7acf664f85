"""`dataspex validate`: retrain the top pairs directly and check that their interaction is real.

For each of the report's top ``validate.top_k`` harmful and redundant pairs (i, j), with the test example t
the pair moves most, four training sets are retrained ``validate.seeds`` times each:

    full (every example), full minus i, full minus j, full minus both.

Replicate s of a pair gives the realised second difference at the full data set (the ``full`` estimand)

    d_s = f_t(all - i - j)_s - f_t(all - i)_s - f_t(all - j)_s + f_t(all)_s

and the r replicates a t-interval at level ``validate.level`` (Student t, r - 1 degrees of freedom) around
their mean. It is compared with what the ranking estimator predicts for the same quantity,
``result.pair_scores("full", output=t)[i, j]``. Verdict: **confirmed** when the interval excludes 0 on the
side of the predicted sign, otherwise **not confirmed**. Beside it, what a curation team acts on: the realised
change in the test loss from removing both, f(all - i - j) - f(all), with its interval and a ``removal`` column
(lowered / raised / unclear: whether the interval excludes 0). One more training set, the full set minus every
example of the validated harmful pairs, is retrained as often, so the report can state what dropping them all
does to the mean test loss (``curated`` in ``validation.json``).

Seeds: under ``train.seed_policy=per_mask`` (the default) a mask's training seed is derived from
``(train.seed, mask id)``, so r replicates of one training set are r design rows with the same mask bits and
different ids: r different seeds. They are appended to the run's design with role ``validate`` (existing ids
never change) and their results go through the normal result store, so an interrupted ``validate`` resumes
where it stopped, ``dataspex train`` can finish (or shard) them, and ``dataspex fit`` ignores them. A training
set shared by several pairs (``full``, or ``minus i`` when i is in two pairs) is trained once per replicate and
reused. Under ``seed_policy=shared`` every replicate would get the same seed, so one replicate is trained and
no interval is given.

Written into ``<run_dir>/validate/``: ``validation.csv`` / ``validation.parquet`` (one row per pair) and
``validation.json`` (settings). The report is rewritten afterwards to include them.
"""

from __future__ import annotations

import hashlib
import logging
import os

import numpy as np
import pandas as pd

from dataspex.errors import DataspexError
from dataspex.io import atomic_write_bytes, atomic_write_text, write_json

log = logging.getLogger("dataspex")

ROLE = "validate"
VARIANTS = ("full", "minus_i", "minus_j", "minus_both")
DEFAULTS = {"top_k": 3, "seeds": 4, "level": 0.9, "kinds": ["harmful", "redundant"]}


def settings(cfg) -> dict:
    """The ``validate:`` block (each key optional), validated."""
    block = cfg.get("validate", None) or {}
    out = {key: block.get(key, default) for key, default in DEFAULTS.items()}
    out["top_k"], out["seeds"], out["level"] = int(out["top_k"]), int(out["seeds"]), float(out["level"])
    out["kinds"] = [str(k) for k in out["kinds"]]
    if out["top_k"] < 1:
        raise DataspexError(f"validate.top_k={out['top_k']} must be at least 1")
    if out["seeds"] < 1:
        raise DataspexError(f"validate.seeds={out['seeds']} must be at least 1 (2 or more for an interval)")
    if not 0.5 <= out["level"] < 1:
        raise DataspexError(f"validate.level={out['level']} must be in [0.5, 1)")
    bad = [k for k in out["kinds"] if k not in ("harmful", "redundant", "complementary", "interaction")]
    if bad:
        raise DataspexError(f"validate.kinds has {bad}: use harmful, redundant, complementary or interaction")
    return out


# ------------------------------------------------------------------------------------------- which pairs

def select_pairs(result, kinds, k: int, estimand: str, n_test: int) -> pd.DataFrame:
    """The report's top ``k`` pairs of each kind (columns kind, rank, i, j, test, score, joint_effect,
    pattern), a pair listed under two kinds kept once (first kind wins)."""
    from dataspex.report import ranked_pairs

    tables = [ranked_pairs(result, kind, k, estimand, n_test).assign(kind=kind) for kind in kinds]
    pairs = pd.concat(tables, ignore_index=True) if tables else pd.DataFrame()
    if pairs.empty:
        return pairs
    return pairs.drop_duplicates(subset=["i", "j"], keep="first").reset_index(drop=True)


def variant_masks(n_train: int, i: int, j: int) -> dict[str, np.ndarray]:
    """The four training sets of a pair: full, minus i, minus j, minus both."""
    out = {}
    for name, drop in zip(VARIANTS, ((), (i,), (j,), (i, j))):
        mask = np.ones(n_train, dtype=np.uint8)
        mask[list(drop)] = 0
        out[name] = mask
    return out


def curated_mask(n_train: int, pairs: pd.DataFrame) -> np.ndarray | None:
    """The full training set minus every example of the harmful pairs (None without harmful pairs)."""
    harmful = pairs[pairs["kind"] == "harmful"] if len(pairs) else pairs
    if not len(harmful):
        return None
    mask = np.ones(n_train, dtype=np.uint8)
    mask[np.unique(np.concatenate([harmful["i"].to_numpy(), harmful["j"].to_numpy()]))] = 0
    return mask if mask.any() else None


def needed_masks(n_train: int, pairs: pd.DataFrame) -> list[np.ndarray]:
    """Every distinct training set the pairs need, in a stable order."""
    seen: dict[bytes, np.ndarray] = {}
    for row in pairs.itertuples():
        for mask in variant_masks(n_train, int(row.i), int(row.j)).values():
            seen.setdefault(mask.tobytes(), mask)
    return list(seen.values())


# ------------------------------------------------------------------------------------------- the design

def replicate_ids(design) -> dict[bytes, list[int]]:
    """{mask bits: ids of its ``validate`` rows, ascending}: replicate s of a training set is its s-th id."""
    rows = np.flatnonzero(design.roles == ROLE)
    out: dict[bytes, list[int]] = {}
    for r in rows:
        out.setdefault(design.masks[r].tobytes(), []).append(int(design.mask_ids[r]))
    return {key: sorted(ids) for key, ids in out.items()}


def extend_design(design, masks: list[np.ndarray], replicates: int):
    """The design with enough ``validate`` rows for ``replicates`` replicates of every mask (rows that already
    exist are reused, so re-running never duplicates). Returns (design, number of rows added)."""
    have = replicate_ids(design)
    new = []
    for mask in masks:
        missing = replicates - len(have.get(mask.tobytes(), []))
        new += [mask] * max(missing, 0)
    if not new:
        return design, 0
    meta = dict(design.meta.get(ROLE) or {})
    meta["note"] = ("validate rows: replicate s of a training set is its s-th id among equal masks; "
                    "the seed differs per id under seed_policy=per_mask")
    return design.extend(np.array(new, dtype=np.uint8), ROLE, meta_key=ROLE, meta=meta), len(new)


# ------------------------------------------------------------------------------------------- statistics

def t_interval(samples, level: float) -> tuple[float, float, float, float]:
    """(mean, standard error, low, high) of a Student-t interval at ``level``; NaN bounds for fewer than 2."""
    from scipy import stats

    x = np.asarray(samples, dtype=np.float64)
    mean = float(x.mean()) if len(x) else float("nan")
    if len(x) < 2:
        return mean, float("nan"), float("nan"), float("nan")
    se = float(x.std(ddof=1) / np.sqrt(len(x)))
    half = float(stats.t.ppf(0.5 + level / 2, len(x) - 1)) * se
    return mean, se, mean - half, mean + half


def removal_verdict(low: float, high: float) -> str:
    """What removing both did to the test loss: lowered / raised it (the interval excludes 0), or unclear."""
    if not (np.isfinite(low) and np.isfinite(high)):
        return "unclear"
    return "lowered" if high < 0 else "raised" if low > 0 else "unclear"


def verdict(predicted: float, low: float, high: float) -> str:
    """confirmed: the interval excludes 0 on the predicted side."""
    if not (np.isfinite(low) and np.isfinite(high)) or predicted == 0:
        return "not confirmed"
    confirmed = (predicted > 0 and low > 0) or (predicted < 0 and high < 0)
    return "confirmed" if confirmed else "not confirmed"


def analyse_curated(mask, design, results, replicates: int, level: float, output: str = "loss") -> dict | None:
    """The realised effect of dropping every example of the validated harmful pairs at once: change in the mean
    test loss (and in each test example's loss) versus the full set, replicate by replicate."""
    if mask is None:
        return None
    ids = replicate_ids(design)
    full = np.ones_like(mask)
    row_of = {int(m): r for r, m in enumerate(results.mask_ids)}
    got = {k: [row_of.get(m) for m in ids.get(x.tobytes(), [])[:replicates]] for k, x in (("curated", mask),
                                                                                          ("full", full))}
    r = min(len(v) for v in got.values())
    dropped = [int(i) for i in np.flatnonzero(mask == 0)]
    if r == 0 or any(x is None for v in got.values() for x in v[:r]):
        return {"dropped": dropped, "seeds": 0, "status": "pending"}
    Y = results.outputs(output)
    diff = Y[got["curated"][:r]] - Y[got["full"][:r]]  # (r, T)
    mean, _, lo, hi = t_interval(diff.mean(axis=1), level)
    return {"dropped": dropped, "seeds": r, "status": "done", "mean_loss_change": mean, "ci_low": lo, "ci_high": hi,
            "per_test_change": [float(v) for v in diff.mean(axis=0)], "level": level}


def analyse(pairs: pd.DataFrame, design, results, fitted: dict, ranking: str, n_train: int, replicates: int,
            level: float, output: str = "loss") -> pd.DataFrame:
    """One row per pair: predicted and realised interaction (full estimand) on its test example, with the
    interval, the verdict, and the realised effect of removing both on that test example and on the mean
    test loss. Pairs whose retrains are not all finished get NaN and verdict "pending"."""
    ids = replicate_ids(design)
    Y = results.outputs(output)
    row_of = {int(m): r for r, m in enumerate(results.mask_ids)}
    rows = []
    for p in pairs.itertuples():
        i, j, t = int(p.i), int(p.j), int(p.test)
        masks = variant_masks(n_train, i, j)
        got = {v: [row_of.get(m) for m in ids.get(mask.tobytes(), [])[:replicates]] for v, mask in masks.items()}
        r = min(len(v) for v in got.values())
        done = r > 0 and all(x is not None for v in got.values() for x in v[:r])
        row = {"kind": p.kind, "rank": int(p.rank), "i": i, "j": j, "test": t, "pattern": p.pattern,
               "ranking_score": float(p.score), "ranking_estimand": p.estimand, "estimator": ranking,
               "predicted": float(fitted[ranking].pair_scores("full", output=t)[i, j]),
               "predicted_removal": float(-fitted[ranking].pair_effects("full", output=t)[i, j])}
        for name, res in fitted.items():
            if name != ranking:
                row[f"predicted_{name}"] = float(res.pair_scores("full", output=t)[i, j])
        if done:
            cell = {v: Y[got[v][:r]] for v in VARIANTS}  # (r, T) each
            d = cell["minus_both"][:, t] - cell["minus_i"][:, t] - cell["minus_j"][:, t] + cell["full"][:, t]
            mean, se, lo, hi = t_interval(d, level)
            rem = cell["minus_both"][:, t] - cell["full"][:, t]
            rem_mean, _, rem_lo, rem_hi = t_interval(rem, level)
            rem_all = cell["minus_both"].mean(axis=1) - cell["full"].mean(axis=1)
            all_mean, _, all_lo, all_hi = t_interval(rem_all, level)
            row.update(realised=mean, se=se, ci_low=lo, ci_high=hi, seeds=r,
                       verdict=verdict(row["predicted"], lo, hi) if r >= 2 else "not confirmed",
                       realised_removal=rem_mean, removal_ci_low=rem_lo, removal_ci_high=rem_hi,
                       removal=removal_verdict(rem_lo, rem_hi),
                       realised_removal_mean_loss=all_mean, removal_mean_ci_low=all_lo,
                       removal_mean_ci_high=all_hi,
                       loss_full=float(cell["full"][:, t].mean()), loss_minus_i=float(cell["minus_i"][:, t].mean()),
                       loss_minus_j=float(cell["minus_j"][:, t].mean()),
                       loss_minus_both=float(cell["minus_both"][:, t].mean()))
        else:
            row.update(realised=np.nan, se=np.nan, ci_low=np.nan, ci_high=np.nan, seeds=0, verdict="pending",
                       removal="pending")
        row["level"] = level
        rows.append(row)
    return pd.DataFrame(rows)


# ------------------------------------------------------------------------------------------- the stage

def _fit_stamp(store) -> str:
    """A hash of fit/faithfulness.json: tells the report whether the fit changed after validation."""
    with open(store.path("fit", "faithfulness.json"), "rb") as fh:
        return hashlib.sha256(fh.read()).hexdigest()[:16]


def _train_validate_rows(cfg, store, design, data) -> int:
    """Retrain the ``validate`` rows that have no result yet (resumable, through the configured engine)."""
    from dataspex.pipeline import train_rows

    done = store.done_ids()
    todo = np.array([r for r in np.flatnonzero(design.roles == ROLE) if int(design.mask_ids[r]) not in done],
                    dtype=np.int64)
    if len(todo) == 0:
        return 0
    train_rows(cfg, store, data, design, todo)
    return len(todo)


def stage_validate(cfg) -> pd.DataFrame:
    from dataspex.pipeline import open_run
    from dataspex.report import choose_estimator, load_fitted

    opts = settings(cfg)
    store, data = open_run(cfg)
    fitted, faithfulness = load_fitted(store)
    ranking = choose_estimator(fitted, faithfulness, cfg.report.estimator)
    estimand = cfg.report.estimand
    pairs = select_pairs(fitted[ranking], opts["kinds"], opts["top_k"], estimand, data.n_test)
    if pairs.empty:
        raise DataspexError(f"{ranking} lists no {' or '.join(opts['kinds'])} pairs to validate")
    replicates = opts["seeds"]
    if cfg.train.seed_policy == "shared" and replicates > 1:
        log.warning("validate: train.seed_policy=shared gives every replicate the same seed: training one "
                    "replicate per training set, no interval")
        replicates = 1

    design = store.load_design()
    masks = needed_masks(data.n_train, pairs)
    curated = curated_mask(data.n_train, pairs)
    if curated is not None:
        masks.append(curated)
    design, added = extend_design(design, masks, replicates)
    if added:
        store.save_design(design)
    n_rows = len(masks) * replicates
    log.info("validate: %d pairs by %s -> %d training sets x %d seeds = %d retrains (%d new in the design)",
             len(pairs), ranking, len(masks), replicates, n_rows, added)
    trained = _train_validate_rows(cfg, store, design, data)
    log.info("validate: trained %d, reused %d", trained, n_rows - trained)

    results = store.load_results(design)
    output = faithfulness[ranking].get("output", "loss")
    table = analyse(pairs, design, results, fitted, ranking, data.n_train, replicates, opts["level"], output)
    curated_effect = analyse_curated(curated, design, results, replicates, opts["level"], output)
    out_dir = store.path("validate")
    os.makedirs(out_dir, exist_ok=True)
    atomic_write_text(os.path.join(out_dir, "validation.csv"), table.to_csv(index=False))
    atomic_write_bytes(os.path.join(out_dir, "validation.parquet"), table.to_parquet(index=False))
    write_json(os.path.join(out_dir, "validation.json"),
               {"estimator": ranking, "ranking_estimand": estimand, "compared_estimand": "full",
                "top_k": opts["top_k"], "kinds": opts["kinds"], "seeds": replicates, "level": opts["level"],
                "output": output, "seed_policy": str(cfg.train.seed_policy), "engine": str(cfg.train.engine),
                "fit_stamp": _fit_stamp(store), "n_training_sets": len(masks), "curated": curated_effect})
    for row in table.itertuples():
        log.info("validate: %-9s (%d, %d) on test %d: predicted %+.3f, realised %+.3f [%+.3f, %+.3f] -> %s",
                 row.kind, row.i, row.j, row.test, row.predicted, row.realised, row.ci_low, row.ci_high,
                 row.verdict)
    if curated_effect and curated_effect["status"] == "done":
        log.info("validate: dropping %s changes the mean test loss by %+.3f [%+.3f, %+.3f]",
                 curated_effect["dropped"], curated_effect["mean_loss_change"], curated_effect["ci_low"],
                 curated_effect["ci_high"])

    from dataspex.report import write_report

    log.info("report: %s", write_report(cfg, store, data))
    return table


def load_validation(store) -> tuple[pd.DataFrame, dict] | tuple[None, None]:
    """The table and settings written by ``dataspex validate`` (None, None when it has not run)."""
    from dataspex.io import read_json

    path = store.path("validate", "validation.parquet")
    if not os.path.exists(path):
        return None, None
    meta = read_json(store.path("validate", "validation.json"))
    stamp = _fit_stamp(store) if os.path.exists(store.path("fit", "faithfulness.json")) else None
    meta["stale"] = stamp is not None and meta.get("fit_stamp") != stamp
    return pd.read_parquet(path), meta
