"""benchmarks/removal_spread.py: the curated drop's changes on the test examples its pairs were not chosen on."""

from __future__ import annotations

import os

import pytest

from dataspex.core.files import write_json
from tests.benchmark_scripts import load_benchmark

removal_spread = load_benchmark("removal_spread")


def _validation(run_dir, curated):
    os.makedirs(os.path.join(run_dir, "validate"), exist_ok=True)
    write_json(os.path.join(run_dir, "validate", "validation.json"), {"curated": curated})


def test_spread_leaves_out_the_pairs_tests_and_orders_moves_by_size(tmp_path):
    run = str(tmp_path / "run")
    _validation(run, {"status": "done", "dropped": [3, 5], "tests": [0, 2],
                      "per_test_change": [-5.0, 0.1, -4.0, -1.2, 0.0, 0.8]})
    got = removal_spread.spread(run, top=2)
    assert got["n_others"] == 4 and got["dropped"] == [3, 5]
    assert got["mean"] == pytest.approx((0.1 - 1.2 + 0.0 + 0.8) / 4)
    assert got["median"] == pytest.approx((0.0 + 0.1) / 2)
    assert got["largest"] == [(3, -1.2), (5, 0.8)]


def test_spread_refuses_a_run_without_a_finished_curated_drop(tmp_path):
    run = str(tmp_path / "run")
    with pytest.raises(SystemExit, match="has no validation"):
        removal_spread.spread(run, top=3)
    _validation(run, {"status": "done", "dropped": [1], "per_test_change": [0.0, 1.0]})  # written before "tests"
    with pytest.raises(SystemExit, match="no finished curated drop with its pairs' test examples"):
        removal_spread.spread(run, top=3)
