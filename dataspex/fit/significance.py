"""Is a ranked pair supported by data the ranking never saw? A held-out test per pair, and q-values over them.

The ranking model picks its pairs on the fit masks, so testing them on those masks again would be circular. The
held-out random masks were never seen by any estimator: on them each candidate pair (i, j), at its test example
t, gets an ordinary least-squares fit of the residual of the main-effects model,

    r_t(x) = f_t(x) - baseline_t(x)  ~  c0 + c_i s_i + c_j s_j + c s_i s_j,    s = 1 - 2 x  (Fourier characters),

and ``4 c`` estimates the pair's average second difference over random half-size training sets (the
``uniform`` pair score, 4 F[{i, j}]). The baseline (the linear datamodel, fitted on the fit masks only) removes
the variance that every other example's main effect adds; ``s_i`` and ``s_j`` absorb what it got wrong about
the pair's own examples. The test is one-sided in the direction the ranking model predicted (a direction chosen
on other data, so the p-value stays valid), with Student t on m - 4 degrees of freedom.

Benjamini-Hochberg q-values over every tested pair then bound the expected share of false findings: a report
lists a pair as a finding only when its q-value is at most ``report.q_max``. Under null data (no pair
interacts) BH at level q lists nothing in at least 1 - q of runs when the p-values are valid;
``benchmarks/null_pairs.py`` measures that on real seed noise.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats

from dataspex.core.errors import DataspexError
from dataspex.fit.faithfulness import fit_outputs

__all__ = ["bh_qvalues", "heldout_evidence", "heldout_pair_tests", "ranked_pair_tests"]

TEST_COLUMNS = ["heldout_score", "heldout_se", "heldout_t", "p_value"]


def bh_qvalues(p_values) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values (q-values) of a 1-D array; NaN (untested) stays NaN and does not
    count towards the family. q_(k) = min over l >= k of p_(l) * P / l, capped at 1."""
    p = np.asarray(p_values, dtype=np.float64)
    if p.ndim != 1:
        raise DataspexError(f"bh_qvalues takes a 1-D array of p-values, got shape {p.shape}")
    q = np.full(p.shape, np.nan)
    tested = np.flatnonzero(np.isfinite(p))
    if len(tested) == 0:
        return q
    if np.any((p[tested] < 0) | (p[tested] > 1)):
        raise DataspexError("p-values must lie in [0, 1]")
    order = tested[np.argsort(p[tested], kind="stable")]
    scaled = p[order] * len(order) / np.arange(1, len(order) + 1)
    q[order] = np.minimum(np.minimum.accumulate(scaled[::-1])[::-1], 1.0)
    return q


def heldout_pair_tests(pairs: pd.DataFrame, masks, Y, baseline=None, direction=None) -> pd.DataFrame:
    """Test each pair of ``pairs`` (columns ``i``, ``j``, ``test``) on held-out masks.

    masks: (m, n) 0/1 held-out masks; Y: (m, T) their outputs (e.g. test losses in nats); baseline: (m, T) the
    main-effects model's predictions of Y on those masks (None: test against the raw outputs, less power);
    direction: (P,) expected sign of the pair's uniform score (+1, -1; 0 or None = two-sided).

    Returns ``pairs`` with the columns ``heldout_score`` (4 c, in the outputs' units), ``heldout_se`` (its
    standard error), ``heldout_t`` and ``p_value`` (one-sided on the expected side). Raises
    :class:`DataspexError` when there are too few held-out masks (at least 8) or the shapes disagree.
    """
    masks = np.asarray(masks)
    Y = np.asarray(Y, dtype=np.float64)
    if Y.ndim != 2 or masks.ndim != 2 or len(masks) != len(Y):
        raise DataspexError(f"held-out masks {masks.shape} and outputs {Y.shape} must be (m, n) and (m, T)")
    m = len(masks)
    if m < 8:
        raise DataspexError(f"a held-out pair test needs at least 8 held-out masks, got {m}")
    resid = Y if baseline is None else Y - np.asarray(baseline, dtype=np.float64)
    if resid.shape != Y.shape:
        raise DataspexError(f"baseline predictions {np.shape(baseline)} must match the outputs {Y.shape}")
    signs = np.zeros(len(pairs)) if direction is None else np.sign(np.asarray(direction, dtype=np.float64))
    if len(signs) != len(pairs):
        raise DataspexError(f"direction has {len(signs)} entries for {len(pairs)} pairs")
    S = 1.0 - 2.0 * masks.astype(np.float64)
    dof = m - 4
    out = pairs.copy()
    cols = {c: np.full(len(pairs), np.nan) for c in TEST_COLUMNS}
    for row, (i, j, t) in enumerate(zip(pairs["i"], pairs["j"], pairs["test"])):
        i, j, t = int(i), int(j), int(t)  # an empty table concatenated with others comes back as object dtype
        X = np.column_stack([np.ones(m), S[:, i], S[:, j], S[:, i] * S[:, j]])
        gram = X.T @ X
        if np.linalg.matrix_rank(gram) < 4:  # a constant or duplicated column: the pair is not identifiable here
            continue
        inv = np.linalg.inv(gram)
        coef = inv @ (X.T @ resid[:, t])
        sigma2 = float(np.sum((resid[:, t] - X @ coef) ** 2)) / dof
        se = float(np.sqrt(max(sigma2, 0.0) * inv[3, 3]))
        if se <= 0:
            continue
        tval = float(coef[3]) / se
        if signs[row] > 0:
            p = stats.t.sf(tval, dof)
        elif signs[row] < 0:
            p = stats.t.cdf(tval, dof)
        else:
            p = 2.0 * stats.t.sf(abs(tval), dof)
        cols["heldout_score"][row], cols["heldout_se"][row] = 4.0 * coef[3], 4.0 * se
        cols["heldout_t"][row], cols["p_value"][row] = tval, float(p)
    for c in TEST_COLUMNS:
        out[c] = cols[c]
    return out


def ranked_pair_tests(ranking, pairs: pd.DataFrame, masks, Y, baseline=None) -> pd.DataFrame:
    """:func:`heldout_pair_tests` of the pairs a fitted ``ranking`` model (an ``InteractionResult``) listed, each
    one-sided on the sign of that model's uniform score at the pair's test example, plus ``q_value``
    (Benjamini-Hochberg over all of them; NaN when untested)."""
    direction = [ranking.pair_scores("uniform", output=int(t))[int(i), int(j)]
                 for i, j, t in zip(pairs["i"], pairs["j"], pairs["test"])]
    tested = heldout_pair_tests(pairs, masks, Y, baseline, direction)
    tested["q_value"] = bh_qvalues(tested["p_value"].to_numpy())
    return tested


def heldout_evidence(design, results, fitted: dict, name: str, output: str,
                     pairs: pd.DataFrame) -> tuple[pd.DataFrame, dict]:
    """Test the ranking model ``fitted[name]``'s listed ``pairs`` (columns i, j, test) on the held-out masks of
    ``results`` (the run's stored results for ``design``), against the linear datamodel's predictions when one was
    fitted. Returns ``pairs`` with the columns of :func:`ranked_pair_tests` (NaN when untested), and a dict saying
    what was done: ``tested`` (bool), ``n_heldout``, ``baseline`` (estimator name or None), ``why`` (why not
    tested, else None)."""
    meta = {"tested": False, "n_heldout": 0, "baseline": None, "why": None}
    out = pairs.copy()
    for c in [*TEST_COLUMNS, "q_value"]:
        out[c] = np.nan
    if pairs.empty:
        meta["why"] = "no pairs listed"
        return out, meta
    heldout = results.keep(design, "heldout")
    meta["n_heldout"] = int(heldout.sum())
    if meta["n_heldout"] < 8:
        meta["why"] = (f"the run has {meta['n_heldout']} held-out random masks (a pair test needs at least 8): "
                       "add some with design.heldout=... and `dataspex train`")
        return out, meta
    masks, Y = results.masks[heldout], fit_outputs(results, output)[heldout]
    linear = [n for n, r in fitted.items() if r.estimator == "LinearDatamodel"]
    baseline = None
    if linear:
        meta["baseline"] = linear[0]
        baseline = fitted[linear[0]].predict(masks)
    tested = ranked_pair_tests(fitted[name], pairs[["i", "j", "test"]], masks, Y, baseline)
    for c in [*TEST_COLUMNS, "q_value"]:
        out[c] = tested[c].to_numpy()
    meta["tested"] = True
    return out, meta
