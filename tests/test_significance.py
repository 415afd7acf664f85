"""The held-out pair test and the Benjamini-Hochberg q-values (dataspex.fit.significance)."""

from __future__ import annotations

import itertools
import os

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from dataspex.core.errors import DataspexError
from dataspex.fit.significance import bh_qvalues, heldout_pair_tests
from tests.conftest import run_cli
from tests.test_report import REPORT_ARGS, copy_run


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


def test_welch_scores_the_same_contrast_with_each_cells_own_variance():
    """Welch's score equals the pooled test's (both are mean00 + mean11 - mean01 - mean10 of the residual); its
    standard error and degrees of freedom are the Welch-Satterthwaite ones, by hand from the four cells."""
    rng = np.random.default_rng(11)
    masks = rng.integers(0, 2, size=(40, 4)).astype(np.uint8)
    y = rng.standard_normal((40, 1)) * (1 + 3 * masks[:, [0]])  # the noise grows where example 0 is kept
    pairs = pd.DataFrame({"i": [0], "j": [2], "test": [0]})
    pooled = heldout_pair_tests(pairs, masks, y, direction=[1])
    welch = heldout_pair_tests(pairs, masks, y, direction=[1], test="welch")
    assert welch["heldout_score"].iloc[0] == pytest.approx(pooled["heldout_score"].iloc[0], abs=1e-12)
    cells = [(masks[:, 0] == a) & (masks[:, 2] == b) for a, b in ((0, 0), (0, 1), (1, 0), (1, 1))]
    vals = [y[c, 0] for c in cells]
    assert welch["heldout_score"].iloc[0] == pytest.approx(vals[0].mean() + vals[3].mean() - vals[1].mean()
                                                            - vals[2].mean(), abs=1e-12)
    parts = np.array([v.var(ddof=1) / len(v) for v in vals])
    se = np.sqrt(parts.sum())
    dof = parts.sum() ** 2 / sum(p ** 2 / (len(v) - 1) for p, v in zip(parts, vals))
    assert welch["heldout_se"].iloc[0] == pytest.approx(se, rel=1e-12)
    assert welch["p_value"].iloc[0] == pytest.approx(stats.t.sf(welch["heldout_score"].iloc[0] / se, dof), rel=1e-9)
    assert welch["heldout_se"].iloc[0] != pytest.approx(pooled["heldout_se"].iloc[0], rel=1e-3)


def test_welch_leaves_a_pair_with_a_one_mask_cell_untested_and_refuses_unknown_tests():
    masks = np.array([[0, 0], [0, 1], [0, 1], [1, 0], [1, 0], [1, 1], [1, 1], [1, 1]], dtype=np.uint8)
    y = np.arange(8, dtype=float)[:, None]
    pairs = pd.DataFrame({"i": [0], "j": [1], "test": [0]})
    assert np.isnan(heldout_pair_tests(pairs, masks, y, test="welch")["p_value"].iloc[0])  # cell 00 has one mask
    assert np.isfinite(heldout_pair_tests(pairs, masks, y)["p_value"].iloc[0])  # the pooled test still runs
    with pytest.raises(DataspexError, match="pair test 'hc3' is not one of: pooled, welch, permutation"):
        heldout_pair_tests(pairs, masks, y, test="hc3")


def test_welch_p_values_hold_their_level_where_cells_differ_in_size_and_spread():
    """Kept fraction 0.9 and a noise that is 5x larger where both examples are dropped (the cell of ~1% of the
    masks): under no interaction, the share of p <= 0.05 (one-sided) from Welch stays at or below 0.05 + 3 sd
    over 2,000 tests, where the pooled test's does not."""
    rng = np.random.default_rng(5)
    hits = {"pooled": [], "welch": []}
    pairs = pd.DataFrame({"i": [0], "j": [1], "test": [0]})
    for _ in range(2000):
        masks = (rng.random((400, 3)) < 0.9).astype(np.uint8)
        both_dropped = (masks[:, 0] == 0) & (masks[:, 1] == 0)
        y = (rng.standard_normal(400) * np.where(both_dropped, 5.0, 1.0))[:, None]
        for test in hits:
            p = heldout_pair_tests(pairs, masks, y, direction=[1], test=test)["p_value"].iloc[0]
            hits[test].append(bool(p <= 0.05) if np.isfinite(p) else False)
    bound = 0.05 + 3 * np.sqrt(0.05 * 0.95 / 2000)
    assert np.mean(hits["welch"]) <= bound
    assert np.mean(hits["pooled"]) > bound


def test_permutation_p_values_match_student_t_on_gaussian_noise_and_are_reproducible():
    """On Gaussian noise with equal cells the permutation p-value estimates Student t's (within 3 Monte Carlo
    standard errors of 1,999 permutations); the same seed gives the same p-values, another seed other ones."""
    from dataspex.fit.significance import PERMUTATIONS

    rng = np.random.default_rng(2)
    masks = rng.integers(0, 2, size=(64, 4)).astype(np.uint8)
    x = masks.astype(float)
    y = (0.3 * (1 - 2 * x[:, 0]) * (1 - 2 * x[:, 1]) + rng.standard_normal(64))[:, None]
    pairs = pd.DataFrame({"i": [0, 2], "j": [1, 3], "test": [0, 0]})
    student = heldout_pair_tests(pairs, masks, y, direction=[1, -1])
    perm = heldout_pair_tests(pairs, masks, y, direction=[1, -1], test="permutation")
    np.testing.assert_array_equal(perm["heldout_t"], student["heldout_t"])  # the same statistic
    for p_t, p_perm in zip(student["p_value"], perm["p_value"]):
        assert abs(p_perm - p_t) <= 3 * np.sqrt(p_t * (1 - p_t) / PERMUTATIONS) + 1 / PERMUTATIONS
    again = heldout_pair_tests(pairs, masks, y, direction=[1, -1], test="permutation")
    np.testing.assert_array_equal(again["p_value"], perm["p_value"])
    other = heldout_pair_tests(pairs, masks, y, direction=[1, -1], test="permutation", seed=1)
    assert not np.array_equal(other["p_value"], perm["p_value"])


def test_permutation_p_values_hold_their_level_on_rare_jumps_at_a_kept_fraction_of_0_9():
    """Noise like the error probability's (0 mostly, 1 in 3% of masks) at p = 0.9, where the both-dropped cell
    holds ~3 of 256 masks: under no interaction the share of one-sided p <= 0.05 from the permutation test is
    within 3 sd of 0.05 over 600 tests."""
    rng = np.random.default_rng(5)
    pairs = pd.DataFrame({"i": [0], "j": [1], "test": [0]})
    hits = []
    for _ in range(600):
        masks = (rng.random((256, 3)) < 0.9).astype(np.uint8)
        y = (rng.random(256) < 0.03).astype(float)[:, None]
        hits.append(heldout_pair_tests(pairs, masks, y, direction=[1], test="permutation")["p_value"].iloc[0] <= 0.05)
    assert abs(np.mean(hits) - 0.05) <= 3 * np.sqrt(0.05 * 0.95 / 600)


def test_the_pair_test_is_a_report_setting_and_the_report_names_it(tmp_path):
    run_dir = copy_run(tmp_path)
    run_cli("report", f"run_dir={run_dir}", *REPORT_ARGS, "report.pair_test=welch")
    report = open(os.path.join(run_dir, "report", "report.md")).read()
    assert "one-sided on the predicted sign, each cell its own variance (Welch))" in report
    proc = run_cli("report", f"run_dir={run_dir}", *REPORT_ARGS, "report.pair_test=hc3", check=False)
    assert proc.returncode != 0 and "pair test 'hc3' is not one of: pooled, welch, permutation" in proc.stderr


def test_sparsest_cells_count_the_fewest_masks_of_a_pairs_four_cells():
    from dataspex.fit.significance import sparsest_cells

    masks = np.array([[0, 0, 1], [0, 1, 1], [1, 0, 1], [1, 1, 0], [1, 1, 1], [1, 1, 0]], dtype=np.uint8)
    pairs = pd.DataFrame({"i": [0, 0, 1], "j": [1, 2, 2], "test": [0, 0, 0]})
    # (0, 1): neither 1, only 1: 1, only 0: 1, both 3 -> 1; (0, 2): neither 0 -> 0; (1, 2): neither 0, only 2: 2,
    # only 1: 2, both 2 -> 0
    assert sparsest_cells(masks, pairs).tolist() == [1, 0, 0]
    pairs = pd.DataFrame({"i": [0, 1], "j": [1, 2], "test": [0, 0]})
    masks = np.vstack([masks, [[0, 0, 0]]])  # a seventh mask: neither of (1, 2) now holds 1
    assert sparsest_cells(masks, pairs).tolist() == [1, 1]


def test_the_evidence_line_says_when_a_starved_cell_leaves_the_tests_little_power():
    """Below an eighth of the held-out masks in a pair's sparsest cell (half a balanced design's quarter) the
    report says the tests have less power than at p = 0.5 and how to get more; at a balanced design it says nothing
    of it."""
    from dataspex.report.text import _evidence_line

    ev = {"tested": True, "baseline": "linear", "n_findings": 0, "q_max": 0.1, "test": "pooled", "n_heldout": 256}
    starved = _evidence_line({"evidence": {**ev, "sparsest_cell": 2.5}})
    assert ("The tests have less power than at design.p=0.5: the sparsest of a listed pair's four cells (neither, "
            "one or both of its examples kept) holds a median of 2.5 of the 256 held-out masks (a quarter at "
            "design.p=0.5); more held-out masks (design.heldout) find more real pairs") in starved
    assert "less power" not in _evidence_line({"evidence": {**ev, "sparsest_cell": 58.0}})
    assert "less power" not in _evidence_line({"evidence": {**ev, "sparsest_cell": None}})


def test_the_pooled_test_leaves_exactly_the_pairs_with_an_empty_cell_untested_and_the_report_says_so():
    """At a kept fraction of 0.9 over 40 held-out masks many pairs have no mask that drops both examples: the pooled
    test gives a p-value to every pair whose four cells all hold a mask and to no other, the pair table says how
    many masks an untested pair's sparsest cell holds, and the evidence line counts the untested pairs."""
    from types import SimpleNamespace

    from dataspex.fit.significance import sparsest_cells
    from dataspex.report.text import _evidence_line, _heldout_cell

    rng = np.random.default_rng(3)
    masks = (rng.random((40, 12)) < 0.9).astype(np.uint8)
    pairs = pd.DataFrame([(i, j, 0) for i in range(12) for j in range(i + 1, 12)], columns=["i", "j", "test"])
    tested = heldout_pair_tests(pairs, masks, rng.standard_normal((40, 1)))
    cells = sparsest_cells(masks, pairs)
    assert 0 < (cells == 0).sum() < len(pairs)  # both kinds present
    np.testing.assert_array_equal(np.isnan(tested["p_value"].to_numpy()), cells == 0)

    row = SimpleNamespace(heldout_score=np.nan, heldout_se=np.nan, heldout_cell=0)
    assert _heldout_cell(row) == "untested: 0 held-out masks in its sparsest cell"
    assert _heldout_cell(SimpleNamespace(heldout_score=0.25, heldout_se=0.1, heldout_cell=1)) == "+0.250 +- 0.100"
    assert _heldout_cell(SimpleNamespace(heldout_score=np.nan, heldout_se=np.nan, heldout_cell=-1)) == "n/a +- n/a"
    ev = {"tested": True, "baseline": "linear", "n_findings": 0, "q_max": 0.1, "test": "pooled", "n_heldout": 40,
          "sparsest_cell": 5.0}
    line = _evidence_line({"evidence": {**ev, "n_untested": int((cells == 0).sum())}})
    assert (f" {int((cells == 0).sum())} listed pairs have no p-value: a pair's four cells (neither, one or both of "
            "its examples kept) each need held-out masks, and the table says how many its sparsest cell holds; such "
            "a pair is not a finding.") in line
    assert "no p-value" not in _evidence_line({"evidence": {**ev, "n_untested": 0}})
