"""The held-out pair test and the Benjamini-Hochberg q-values (dataspex.fit.significance)."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from dataspex.core.errors import DataspexError
from dataspex.fit.significance import bh_qvalues, heldout_pair_tests


def _brute_bh(p):
    """q_i = min over the sorted p-values at or above p_i of p_(k) * P / k (the definition, no tricks)."""
    p = np.asarray(p, dtype=float)
    order = np.sort(p)
    P = len(p)
    return np.array([min(1.0, min(order[k] * P / (k + 1) for k in range(P) if order[k] >= pi)) for pi in p])


def test_bh_matches_the_definition_with_ties_and_nan():
    rng = np.random.default_rng(3)
    for _ in range(50):
        p = rng.choice([0.001, 0.01, 0.02, 0.04, 0.2, 0.5, 0.9], size=rng.integers(1, 10))
        assert np.allclose(bh_qvalues(p), _brute_bh(p))
    q = bh_qvalues([0.01, np.nan, 0.04])  # NaN is untested: not part of the family of 2
    assert np.isnan(q[1]) and np.allclose(q[[0, 2]], _brute_bh([0.01, 0.04]))
    assert np.isnan(bh_qvalues([np.nan])).all()


def test_bh_refuses_bad_input():
    with pytest.raises(DataspexError, match=r"must lie in \[0, 1\]"):
        bh_qvalues([0.5, 1.5])
    with pytest.raises(DataspexError, match="1-D array"):
        bh_qvalues(np.zeros((2, 2)))


def _all_masks(n):
    return np.array(list(itertools.product([0, 1], repeat=n)), dtype=np.uint8)


def test_exact_second_difference_on_all_masks():
    """Noise-free f on all 2^5 masks: the held-out score is exactly the average second difference of the pair,
    computed by brute force over the contexts of the other examples."""
    masks = _all_masks(5)
    x = masks.astype(float)
    f = 0.3 + 0.7 * x[:, 0] - 0.2 * x[:, 3] + 1.1 * x[:, 1] * x[:, 2] + 0.4 * x[:, 0] * x[:, 4] \
        + 0.25 * x[:, 0] * x[:, 1] * x[:, 2]
    Y = np.column_stack([f, -f])
    noise = 1e-3 * np.random.default_rng(0).standard_normal(len(f))  # a residual variance to divide by
    Y = Y + noise[:, None]
    pairs = pd.DataFrame({"i": [1, 0, 0, 3], "j": [2, 4, 1, 4], "test": [0, 0, 1, 0]})
    out = heldout_pair_tests(pairs, masks, Y, direction=[1, 1, -1, 0])
    for row in out.itertuples():
        i, j, t = row.i, row.j, row.test
        diffs = []
        for ctx in _all_masks(3):
            rest = [k for k in range(5) if k not in (i, j)]
            cell = {}
            for a, b in itertools.product([0, 1], repeat=2):
                m = np.zeros(5, dtype=np.uint8)
                m[rest], m[i], m[j] = ctx, a, b
                cell[a, b] = Y[np.flatnonzero((masks == m).all(axis=1))[0], t]
            diffs.append(cell[1, 1] - cell[1, 0] - cell[0, 1] + cell[0, 0])
        assert row.heldout_score == pytest.approx(np.mean(diffs), abs=1e-12)
    assert out["heldout_score"].tolist()[:3] == pytest.approx([1.1 + 0.125, 0.4, -0.25 * 0.5], abs=1e-2)
    assert out["p_value"].iloc[0] < 0.01 and out["p_value"].iloc[3] > 0.01  # 32 masks, no baseline


def test_baseline_is_subtracted_and_direction_is_one_sided():
    rng = np.random.default_rng(1)
    masks = rng.integers(0, 2, size=(200, 12)).astype(np.uint8)
    s = 1.0 - 2.0 * masks
    main = s @ rng.normal(size=12)
    y = main + 0.3 * s[:, 2] * s[:, 5] + 0.5 * rng.standard_normal(200)
    pairs = pd.DataFrame({"i": [2, 2], "j": [5, 5], "test": [0, 0]})
    up = heldout_pair_tests(pairs, masks, y[:, None], baseline=main[:, None], direction=[1, -1])
    # one-sided on each side of the same statistic: the two p-values add to one
    assert up["p_value"].sum() == pytest.approx(1.0, abs=1e-12)
    assert up["p_value"].iloc[0] < 1e-6
    raw = heldout_pair_tests(pairs.head(1), masks, y[:, None], direction=[1])
    # same estimate against the raw outputs (s_i, s_j absorb their own main effects, the others are orthogonal on
    # average), but a larger standard error: the other examples' main effects are noise without the baseline
    assert raw["heldout_se"].iloc[0] > 2 * up["heldout_se"].iloc[0]
    # against a hand-rolled OLS t statistic
    X = np.column_stack([np.ones(200), s[:, 2], s[:, 5], s[:, 2] * s[:, 5]])
    r = y - main
    coef, res, *_ = np.linalg.lstsq(X, r, rcond=None)
    se = np.sqrt(res[0] / 196 * np.linalg.inv(X.T @ X)[3, 3])
    assert up["heldout_t"].iloc[0] == pytest.approx(coef[3] / se, rel=1e-10)
    assert up["p_value"].iloc[0] == pytest.approx(stats.t.sf(coef[3] / se, 196), rel=1e-8)


def test_p_values_are_uniform_under_the_null():
    """Pure Gaussian noise: the share of p <= 0.05 over 2,000 independent tests is 0.05 (binomial +- 3 sd)."""
    rng = np.random.default_rng(7)
    hits = []
    for _ in range(2000):
        masks = rng.integers(0, 2, size=(48, 6)).astype(np.uint8)
        y = rng.standard_normal((48, 1))
        out = heldout_pair_tests(pd.DataFrame({"i": [0], "j": [1], "test": [0]}), masks, y, direction=[1])
        hits.append(out["p_value"].iloc[0] <= 0.05)
    assert abs(np.mean(hits) - 0.05) < 3 * np.sqrt(0.05 * 0.95 / 2000)


def test_bad_input_gets_a_clear_error():
    masks = np.zeros((6, 3), dtype=np.uint8)
    pairs = pd.DataFrame({"i": [0], "j": [1], "test": [0]})
    with pytest.raises(DataspexError, match="at least 8 held-out masks, got 6"):
        heldout_pair_tests(pairs, masks, np.zeros((6, 1)))
    with pytest.raises(DataspexError, match="must be"):
        heldout_pair_tests(pairs, np.zeros((8, 3)), np.zeros((9, 1)))
    with pytest.raises(DataspexError, match="direction has 2 entries for 1 pairs"):
        heldout_pair_tests(pairs, np.zeros((8, 3)), np.zeros((8, 1)), direction=[1, 1])
    # a pair whose examples never vary on the held-out masks is untested (NaN), not a finding
    out = heldout_pair_tests(pairs, np.zeros((8, 3), dtype=np.uint8), np.ones((8, 1)))
    assert np.isnan(out["p_value"].iloc[0])
