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


def test_a_power_law_to_the_bound_is_predicted_exactly_by_that_curve_and_is_na_without_a_bound():
    m = np.array([256, 512, 768, 1024, 2048, 4096])
    bound = 0.6
    r2 = bound - np.exp(-0.5 - 0.4 * np.log2(m))  # the gap to the bound x e^-0.4 per doubling; ceiling 0.8 above it
    points = [[int(a), float(b)] for a, b in zip(m, r2)]
    measured = {"run": "/x/run", "ceiling": 0.8, "points": {"quadratic": points, "linear": points},
                "bounds": {"quadratic": {"r2": bound, "r2_se": 0.005}, "linear": None}}
    rows = plan_curves.compare(measured, 1024)
    for r in rows:
        if r["estimator"] == "quadratic":
            assert r["power law to the bound"] == pytest.approx(r["measured"])
            assert r["power law to the ceiling"] != pytest.approx(r["measured"], abs=1e-3)  # it goes elsewhere
        else:
            assert r["power law to the bound"] is None
    quadratic = [a for a in plan_curves.asks(measured, 1024, [0.59, 0.61]) if a["estimator"] == "quadratic"]
    at_059 = next(a for a in quadratic if a["target"] == 0.59)
    expected = 2 ** ((np.log(bound - 0.59) + 0.5) / -0.4)  # where the curve meets 0.59: 1,229 fit masks
    assert at_059["power law to the bound"] == int(np.ceil(expected))
    assert 1024 < at_059["needed"] < 2048  # the measured points cross it there too
    low, high = at_059["bound range"]  # the bound 0.005 (one SE) higher and lower
    assert low < at_059["power law to the bound"] < high and plan_curves.within(at_059["needed"], [low, high])
    assert not plan_curves.within(at_059["needed"], [at_059["needed"] + 1, None])
    assert plan_curves.within(at_059["needed"], [low, None]) and not plan_curves.within(1.0, [None, None])
    past = next(a for a in quadratic if a["target"] == 0.61)  # past the bound: no figure, though below the ceiling
    assert past["power law to the bound"] is None and not past["power law to the bound n/a"]
    assert past["power law to the ceiling"] is not None


def test_the_pilot_bound_is_the_limit_for_main_effects_and_adds_the_screen_energy_for_a_pair_model():
    from types import SimpleNamespace

    from dataspex.fit.faithfulness import main_effects_limit, pair_energy

    rng = np.random.default_rng(0)
    n, M, H = 8, 200, 100
    X = (rng.random((M + H, n)) < 0.5).astype(np.uint8)
    s = 1.0 - 2.0 * X
    Y = np.column_stack([s[:, 0] + 2.0 * s[:, 1] * s[:, 2], s[:, 3]]) + rng.normal(0, 0.5, (M + H, 2))
    run = {"X_fit": X[:M], "Y_fit": Y[:M], "X_ho": X[M:], "Y_ho": Y[M:], "design": SimpleNamespace(meta={"p": 0.5})}
    limit = main_effects_limit(X[:M], Y[:M], X[M:], Y[M:])
    linear = SimpleNamespace(main_effects_only=True)
    assert plan_curves.pilot_bound(run, "linear", linear, M) == pytest.approx({k: limit[k] for k in ("r2", "r2_se")})
    screen = {"pairs": [[1, 2]], "outputs": [[0]]}
    quadratic = SimpleNamespace(main_effects_only=False, fit_summary=lambda: {"screen": screen})
    energy = pair_energy(X, Y, [[1, 2]], [[0]])
    assert energy["share"] > 0.3  # the pair holds most of output 0's variance, and the bound counts it
    assert plan_curves.pilot_bound(run, "quadratic", quadratic, M) == pytest.approx(
        {"r2": limit["r2"] + energy["share"], "r2_se": np.hypot(limit["r2_se"], energy["se"])})
    assert plan_curves.pilot_bound(run, "proxyspex", SimpleNamespace(fit_summary=lambda: {}), M) is None
    assert plan_curves.pilot_bound(run, "linear", linear, 31) is None  # under 4n fit masks: no limit


def test_measure_caches_its_points_and_refits_only_the_pilot_for_a_cache_without_the_bounds_se(tmp_path):
    import json
    import os

    from tests.test_report import copy_run

    run_dir = copy_run(tmp_path)  # 48 fit masks over 10 training examples: a 4n pilot has a limit
    cache = str(tmp_path / "cache" / "run_pilot48.json")
    first = plan_curves.measure(run_dir, ["linear"], 48, cache)
    assert [m for m, _ in first["points"]["linear"]] == [12, 24, 36, 48]
    bound = first["bounds"]["linear"]
    assert set(bound) == {"r2", "r2_se"} and bound["r2_se"] > 0
    assert plan_curves.measure(run_dir, ["linear"], 48, cache) == first  # read back, not refitted
    # a cache written before the bounds kept their SE (a float): its points stay, its bounds are refitted
    old = {**first, "bounds": {"linear": bound["r2"]}, "points": {"linear": [[m, -1.0] for m, _ in
                                                                           first["points"]["linear"]]}}
    with open(cache, "w") as fh:
        json.dump(old, fh)
    upgraded = plan_curves.measure(run_dir, ["linear"], 48, cache)
    assert upgraded["points"] == old["points"] and upgraded["bounds"]["linear"] == pytest.approx(bound)
    assert json.load(open(cache)) == upgraded and not os.path.exists(cache + ".tmp")
