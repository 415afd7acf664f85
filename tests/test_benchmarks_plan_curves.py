"""benchmarks/plan_curves.py: a pilot's learning curves against the R^2 and retrains measured beyond it."""

from __future__ import annotations

import numpy as np
import pytest

from tests.benchmark_scripts import load_benchmark

plan_curves = load_benchmark("plan_curves")


def test_budgets_are_the_pilot_curve_then_doublings_then_all():
    assert plan_curves.budgets(128, 1635) == [32, 64, 96, 128, 256, 512, 1024, 1635]
    assert plan_curves.budgets(128, 1024) == [32, 64, 96, 128, 256, 512, 1024]


def test_crossing_interpolates_in_log2_retrains():
    m, r2 = np.array([32.0, 64.0, 128.0, 256.0]), np.array([0.1, 0.2, 0.3, 0.5])
    assert plan_curves.crossing(m, r2, 0.4) == pytest.approx(2 ** 7.5)  # half way from 128 to 256
    assert plan_curves.crossing(m, r2, 0.3) == pytest.approx(128.0)
    assert plan_curves.crossing(m, r2, 0.6) is None and plan_curves.crossing(m, r2, 0.05) is None


def test_a_curve_that_is_a_log2_line_is_predicted_exactly_by_it():
    m = np.array([32, 64, 96, 128, 256, 512, 1024])
    r2 = -0.4 + 0.1 * np.log2(m)  # 0.1 at 32 ... 0.6 at 1,024; ceiling 0.8
    measured = {"run": "/x/run", "ceiling": 0.8, "points": {"linear": [[int(a), float(b)] for a, b in zip(m, r2)]}}
    rows = plan_curves.compare(measured, 128)
    assert [r["m"] for r in rows] == [256, 512, 1024] and [r["doublings"] for r in rows] == [1.0, 2.0, 3.0]
    for r in rows:
        assert r["log2 line"] == pytest.approx(r["measured"])
        assert r["power law to the ceiling"] != pytest.approx(r["measured"], abs=1e-3)  # another shape
    asks = plan_curves.asks(measured, 128, [0.5])
    target_80, target_05 = asks  # 80% of the ceiling (0.64) is not reached by 1,024; 0.5 is, at 2^9 = 512
    assert target_80["needed"] is None and target_80["target"] == pytest.approx(0.64)
    assert target_05["needed"] == pytest.approx(512.0) and target_05["log2 line"] == 512
