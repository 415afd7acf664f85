"""Pairwise exhaustive design: exact second differences at the full data set."""

import itertools
import warnings

import numpy as np
import pytest

from dataspex.estimators import DataspexInputError, InteractionResult, Pairwise, screen_candidates
from dataspex.fit.estimators.transforms import all_masks


def truth(n=8, T=2, seed=0):
    rng = np.random.default_rng(seed)
    keys = [(), (0,), (2,), (0, 3), (1, 2, 4), (3, 5), (0, 3, 6), (5, 7), (1, 2, 3, 4)]
    return InteractionResult(n, keys, rng.normal(size=(len(keys), T)))


def brute_second_difference(f, n, i, j):
    full = np.ones(n, dtype=np.uint8)
    xi, xj, xij = full.copy(), full.copy(), full.copy()
    xi[i] = xj[j] = xij[i] = xij[j] = 0
    y = f.predict(np.stack([xij, xi, xj, full]))
    return y[0] - y[1] - y[2] + y[3]


def test_design_shape_and_rows():
    masks = Pairwise.design(10, [7, 2, 5, 2])
    assert masks.shape == (1 + 3 + 3, 10) and masks.dtype == np.uint8
    assert masks[0].all()
    removed = {tuple(np.flatnonzero(r == 0)) for r in masks}
    assert removed == {(), (2,), (5,), (7,), (2, 5), (2, 7), (5, 7)}


def test_pairwise_equals_brute_force_second_differences():
    n, f = 8, truth()
    cand = [0, 1, 2, 3, 5, 7]
    masks = Pairwise.design(n, cand)
    perm = np.random.default_rng(1).permutation(len(masks))  # any row order
    est = Pairwise().fit(masks[perm], f.predict(masks)[perm])
    D_full = est.result_.pair_scores("full", output=1)
    g = est.result_.main_effects("full", output=1)
    sd = est.second_differences_
    for i, j in itertools.combinations(cand, 2):
        expect = brute_second_difference(f, n, i, j)
        row = sd[(sd.i == i) & (sd.j == j)]
        np.testing.assert_array_equal(row.score.to_numpy(), expect)  # exact
        assert D_full[i, j] == pytest.approx(expect[1], abs=1e-12)
        E = est.result_.pair_effects("full", output=1)
        y = f.predict(np.stack([np.ones(n), np.where(np.isin(np.arange(n), [i, j]), 0, 1)]).astype(np.uint8))
        assert E[i, j] == pytest.approx(y[0, 1] - y[1, 1], abs=1e-12)
    np.testing.assert_allclose(g[cand], f.main_effects("full", output=1)[cand], atol=1e-12)
    # the stored model reproduces every measured mask exactly
    np.testing.assert_allclose(est.predict(masks), f.predict(masks), atol=1e-12)
    np.testing.assert_array_equal(est.candidates_, cand)


def test_pairwise_averages_replicates_and_validates():
    n, f = 6, truth(n=8)
    masks = Pairwise.design(8, [0, 3, 5])
    Y = f.predict(masks)
    rng = np.random.default_rng(2)
    noise = rng.normal(size=Y.shape)
    est = Pairwise().fit(np.vstack([masks, masks]), np.vstack([Y + noise, Y - noise]))
    np.testing.assert_allclose(est.predict(masks), Y, atol=1e-12)
    with pytest.raises(DataspexInputError, match="remove at most 2"):
        Pairwise().fit(np.zeros((2, 8), np.uint8), np.zeros(2))
    with pytest.raises(DataspexInputError, match="full-data"):
        Pairwise().fit(masks[1:], Y[1:])
    with pytest.raises(DataspexInputError, match="single removal"):
        Pairwise().fit(np.delete(masks, 1, axis=0), np.delete(Y, 1, axis=0))
    assert n == 6


def test_screen_candidates_and_budget_warning():
    scores = np.array([[0.1, 5.0], [3.0, 0.0], [-2.0, 0.1], [0.0, -4.9], [0.2, 0.0]])
    assert screen_candidates(scores, 2).tolist() == [0, 1]  # strongest per output (relative)
    assert screen_candidates(scores[:, 0], 2).tolist() == [1, 2]
    with pytest.warns(UserWarning, match="budget"):
        screen_candidates(scores, 4, budget=3)
    with pytest.warns(UserWarning, match="budget"):
        Pairwise.design(10, range(6), budget=10)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Pairwise.design(10, range(5), budget=10)
    with pytest.raises(DataspexInputError):
        screen_candidates(scores, 0)


def test_pairwise_on_cube_function_matches_result_full_estimand():
    n, f = 8, truth()
    masks = Pairwise.design(n, range(n))
    est = Pairwise().fit(masks, f.predict(masks))
    np.testing.assert_allclose(est.result_.pair_scores("full", 0), f.pair_scores("full", 0), atol=1e-12)
    assert all_masks(2).shape == (4, 2)
