"""benchmarks/pair_context.py: a pair's second difference from cell means of random masks."""

from __future__ import annotations

import numpy as np
import pytest

from tests.benchmark_scripts import load_benchmark

pair_context = load_benchmark("pair_context")


def test_the_cell_mean_second_difference_is_the_pair_term_and_its_se_sums_the_cells_variances():
    rng = np.random.default_rng(0)
    masks = (rng.random((400, 5)) < 0.5).astype(np.uint8)
    x, z = masks[:, 1].astype(float), masks[:, 3].astype(float)
    y = 1.0 + 0.5 * x - 0.3 * z + 0.7 * x * z + 2.0 * masks[:, 0]  # another example's effect averages out only
    cells = [(x == a) & (z == b) for a, b in ((1, 1), (1, 0), (0, 1), (0, 0))]
    wobble = rng.normal(size=400)  # noise whose mean is exactly zero in every cell: the means stay exact
    for c in cells:
        wobble[c] -= wobble[c].mean()
    exact = pair_context.second_difference(masks, 1.0 + 0.5 * x - 0.3 * z + 0.7 * x * z + wobble, 1, 3)
    assert exact["value"] == pytest.approx(0.7)
    assert exact["se"] == pytest.approx(np.sqrt(sum(wobble[c].var(ddof=1) / c.sum() for c in cells)))
    # outputs constant in every cell: no error to give, so no value (as the held-out pair test treats them)
    assert pair_context.second_difference(masks, 1.0 + x * z, 1, 3)["value"] is None
    got = pair_context.second_difference(masks, y, 1, 3)
    assert got["counts"] == [int(c.sum()) for c in cells] and sum(got["counts"]) == 400
    by_hand = y[cells[0]].mean() - y[cells[1]].mean() - y[cells[2]].mean() + y[cells[3]].mean()
    assert got["value"] == pytest.approx(by_hand)
    assert got["se"] == pytest.approx(np.sqrt(sum(y[c].var(ddof=1) / c.sum() for c in cells)))
    # a cell with fewer than two masks: no value
    few = masks.copy()
    few[:, 1] = 1
    few[0, 1] = 0
    assert pair_context.second_difference(few, y, 1, 3)["value"] is None


def test_the_summary_compares_each_kept_fraction_with_the_full_set():
    rows = [{"predicted": 0.5, "realised": 0.1, "by_p": {0.5: {"value": 0.4}, 0.9: {"value": 0.2}}},
            {"predicted": -0.3, "realised": -0.2, "by_p": {0.5: {"value": -0.4}, 0.9: {"value": None}}}]
    assert pair_context.summary(rows, 0.5) == (
        "mean |at p - full set| 0.250 over 2 pairs; median full set / at p 0.38; the model's prediction against the "
        "cell means at p: mean |difference| 0.100")
    assert pair_context.summary(rows, 0.9).startswith("mean |at p - full set| 0.100 over 1 pairs")
