"""benchmarks/antithetic.py: foldover fit masks, and the orthogonality they exist for."""

from __future__ import annotations

from itertools import combinations

import numpy as np
import pytest

from tests.benchmark_scripts import load_benchmark

antithetic = load_benchmark("antithetic")


def test_masks_come_in_complementary_pairs_and_main_effects_are_orthogonal_to_pairs():
    masks = antithetic.antithetic_masks(6, 10, np.random.default_rng(0))
    assert masks.shape == (10, 6) and masks.dtype == np.uint8
    assert np.array_equal(masks[0::2] + masks[1::2], np.ones((5, 6), np.uint8))
    signs = 2.0 * masks - 1.0
    # Every main-effect column against every pair column and the intercept, in the +-1 coding: exactly 0.
    for i in range(6):
        assert signs[:, i].sum() == 0
        for j, k in combinations(range(6), 2):
            assert (signs[:, i] * signs[:, j] * signs[:, k]).sum() == 0


def test_uniform_masks_are_not_orthogonal_so_the_test_above_can_fail():
    signs = 2.0 * (np.random.default_rng(0).random((10, 6)) < 0.5) - 1.0
    assert any((signs[:, i] * signs[:, j] * signs[:, k]).sum() != 0
               for i in range(6) for j, k in combinations(range(6), 2))


def test_odd_m_is_refused():
    with pytest.raises(SystemExit, match="--m 7 must be even"):
        antithetic.antithetic_masks(6, 7, np.random.default_rng(0))
