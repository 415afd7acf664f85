"""Which of a run's top pairs hold at the full training set: the statistics of a drill-down over examples.

A run's pair models are fitted on random masks that keep each example with probability ``design.p`` (0.5 by
default), so what they rank is a pair's interaction on half-size training sets. A curation team acts on the full
set, and on real text the two differ: on the fresh WordNet and fortunes sets the validated pairs' full-set
interactions came to a median 0.21 and 0.48 of their half-size values (benchmarks/README.md, "Why the fresh sets'
pairs do not hold at the full set"). ``dataspex drill`` on a run over examples measures the full-set value of the
top pairs of each kind at once: random masks over the M members of those pairs (each kept with probability
``drill.p``), every other training example always kept, so every retrain is the full set minus a few members.

For a drilled pair (i, j) at its test example t (the one the run's ranking model chose it on), the least-squares
fit of that test example's output over the drill-down's retrains that keep its *neighbours* (the examples of the
other drilled pairs on the same test example),

    y_t = b_0 + sum over the other members k of b_k z_k + c z_i z_j      (z_k = 1 when member k is kept),

gives c, the pair's second difference y(both kept) - y(i only) - y(j only) + y(neither): the quantity ``dataspex
validate`` measures at the full set. Why the neighbours are kept: a pair's second difference depends on which
examples that act on the same test example are there. Averaged over every member kept at random, four Tolkien quotes
that each keep a Tolkien test quote's loss low (a third fresh fortunes set, test 62) looked like strongly redundant
pairs, +0.67 to +0.83 nats, while at the full set, with the other two there, `validate` measured +0.010 and +0.013;
kept, the same retrains say +0.003 and +0.031. On the three sets where this rule was chosen, the 24 validated pairs'
estimates lay a median 0.68 of their combined standard errors from `validate`'s full-set values (noise alone gives
about 0.67), those over every retrain 1.28; on two sets made after the choice, 0.66 on one (6 pairs) and 1.49 on the
other (7 pairs, none with a neighbour; 3 of them more than 2). Part of the reason: the rule assumes that members
acting only on other test examples do not act on t, and with nine or ten of 256 dropped around a pair (there) that
need not hold (a drill-down of half as many pairs moved one of the three misses into noise); the rest is not known.
So the estimate is near the full set, not at it, and its standard error understates how far
(benchmarks/fullset_agreement.py; benchmarks/README.md, "Two stages"). The price is retrains: a pair with k
neighbours uses about 2^-k of them. The other members' main effects are in the fit because each retrain drops
several of them. With Student t on the fit's degrees of freedom, a one-sided p-value on the side the run's model
predicted, and Benjamini-Hochberg q-values over the drilled pairs; a pair **holds** at the full set when its q-value
is at most ``report.q_max``. The pairs were chosen on other retrains (the run's own, at ``design.p``), so the test
is not the selection read twice.
"""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
from scipy import stats

from dataspex.core.errors import DataspexError
from dataspex.core.files import read_json, write_json
from dataspex.fit.significance import bh_qvalues

__all__ = ["FULLSET", "RANDOM_ROLES", "fullset_table", "load_fullset", "neighbours", "pair_at_full_set",
           "random_retrains", "save_fullset"]

FULLSET = "fullset.json"  # in the drill-down's run directory
# The columns of a drilled pair's row, in order: the run's pair (kind, rank, i, j, test, score, estimand,
# pattern), what the run's model predicts at the full set, the drill-down's estimate and its test.
COLUMNS = ["kind", "rank", "i", "j", "test", "score", "estimand", "pattern", "predicted", "neighbours", "estimate",
           "se", "dof", "masks", "p_value", "q_value", "holds", "note"]
# The drill-down's rows that are random retrains over the members (its validate rows, if any, are not).
RANDOM_ROLES = ("fit", "heldout", "replicate")
NUMBERS = ("score", "predicted", "estimate", "se", "p_value", "q_value")  # floats, NaN where not measured


def random_retrains(design, results, output: str) -> tuple[np.ndarray, np.ndarray]:
    """The drill-down's random retrains (rows of :data:`RANDOM_ROLES`) among ``results``: their masks over the
    members (m, M) and their ``output`` (m, T), as the drill-down's estimates read them."""
    use = np.logical_or.reduce([results.keep(design, role) for role in RANDOM_ROLES])
    return results.masks[use], results.outputs(output)[use]


def pair_at_full_set(masks: np.ndarray, y: np.ndarray, a: int, b: int, kept=()) -> tuple[float, float, int, int]:
    """(c, its standard error, degrees of freedom, retrains used): the coefficient of z_a z_b in the least-squares
    fit of ``y`` (m,) on an intercept, the columns of ``masks`` (m, M) 0/1 and z_a z_b, over the retrains that keep
    every column in ``kept`` (those columns then constant, so left out of the fit). Refuses when the fit has no
    degrees of freedom left or the design cannot separate the terms (a column constant, or too few masks)."""
    z = np.asarray(masks, dtype=np.float64)
    kept = sorted(int(k) for k in kept)
    rows = np.all(z[:, kept] == 1, axis=1) if kept else np.ones(len(z), dtype=bool)
    free = [k for k in range(z.shape[1]) if k not in kept]
    z, y = z[rows], np.asarray(y, dtype=np.float64)[rows]
    X = np.column_stack([np.ones(len(z)), z[:, free], z[:, a] * z[:, b]])
    dof = len(y) - X.shape[1]
    if dof < 1 or np.linalg.matrix_rank(X) < X.shape[1]:
        raise DataspexError(f"{len(y)} retrains over {len(free)} members cannot separate the pair's interaction "
                            "from the members' own effects: retrain more masks (drill.m)")
    inv = np.linalg.inv(X.T @ X)
    coef = inv @ (X.T @ y)
    resid = y - X @ coef
    sigma2 = float(resid @ resid) / dof
    return float(coef[-1]), float(np.sqrt(max(sigma2, 0.0) * inv[-1, -1])), int(dof), int(len(y))


def neighbours(pairs: pd.DataFrame) -> list[list[int]]:
    """For each pair (rows with i, j, test), the examples of the other pairs on the same test example, without its
    own (ascending): the members kept in its full-set estimate."""
    by_test: dict[int, set] = {}
    for i, j, t in zip(pairs["i"], pairs["j"], pairs["test"]):
        by_test.setdefault(int(t), set()).update((int(i), int(j)))
    return [sorted(by_test[int(t)] - {int(i), int(j)}) for i, j, t in zip(pairs["i"], pairs["j"], pairs["test"])]


def fullset_table(pairs: pd.DataFrame, predicted, masks: np.ndarray, Y: np.ndarray, members,
                  q_max: float) -> pd.DataFrame:
    """One row per drilled pair (``pairs``: the run's rows with kind, rank, i, j, test, score, estimand, pattern;
    i and j training examples): the run's full-set prediction ``predicted`` (one per pair: its sign is the side
    tested), the drill-down's estimate c over the retrains that keep its :func:`neighbours` (listed, with the count
    of retrains used) and its standard error, the one-sided p-value, BH q-value and ``holds`` (q <= ``q_max`` and c
    on the predicted side). A pair too few retrains keep the neighbours of gets NaN and its reason in ``note``, and
    does not hold. ``masks`` (m, M) are the drill-down's retrains over its ``members`` (M training examples, in the
    masks' column order), ``Y`` (m, T) their outputs."""
    column = {int(x): k for k, x in enumerate(members)}
    rows = []
    for p, pred, near in zip(pairs.itertuples(), np.asarray(predicted, dtype=np.float64), neighbours(pairs)):
        i, j, t = int(p.i), int(p.j), int(p.test)
        if any(x not in column for x in (i, j, *near)):
            raise DataspexError(f"pair ({i}, {j}) or its neighbours {near} are not among the drill-down's members")
        row = {"kind": p.kind, "rank": int(p.rank), "i": i, "j": j, "test": t, "score": float(p.score),
               "estimand": p.estimand, "pattern": p.pattern, "predicted": float(pred), "neighbours": near}
        try:
            c, se, dof, used = pair_at_full_set(masks, Y[:, t], column[i], column[j], [column[x] for x in near])
        except DataspexError as exc:
            rows.append(dict(row, estimate=np.nan, se=np.nan, dof=0, masks=0, p_value=np.nan, note=str(exc)))
            continue
        side = np.sign(pred)
        if side == 0:
            p_value = 1.0
        elif se > 0:
            p_value = float(stats.t.sf(side * c / se, dof))
        else:  # an exact fit (no noise): the interaction is where it is
            p_value = 0.0 if side * c > 0 else 1.0
        rows.append(dict(row, estimate=c, se=se, dof=dof, masks=used, p_value=p_value, note=""))
    table = pd.DataFrame(rows, columns=[c for c in COLUMNS if c not in ("q_value", "holds")])
    table["q_value"] = bh_qvalues(table["p_value"].to_numpy(dtype=np.float64))
    table["holds"] = (table["q_value"] <= q_max) & (np.sign(table["estimate"]) == np.sign(table["predicted"]))
    return table[COLUMNS]


def save_fullset(run_dir: str, table: pd.DataFrame, meta: dict) -> None:
    """``<drill-down>/fullset.json``: the settings (``meta``) and one record per drilled pair (a number that is
    not one, NaN, written as null)."""
    records = table.astype(object).where(table.notna(), None).to_dict(orient="records")
    write_json(os.path.join(run_dir, FULLSET), dict(meta, pairs=records))


def load_fullset(run_dir: str) -> tuple[pd.DataFrame, dict] | tuple[None, None]:
    """The table and settings :func:`save_fullset` wrote in ``run_dir`` (None, None when there are none)."""
    path = os.path.join(run_dir, FULLSET)
    if not os.path.exists(path):
        return None, None
    meta = read_json(path)
    table = pd.DataFrame(meta.pop("pairs"), columns=COLUMNS)
    for column in NUMBERS:
        table[column] = pd.to_numeric(table[column]).astype(np.float64)
    return table, meta
