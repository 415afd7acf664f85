"""The trust and budget pieces: seed replicates in the design, the noise ceiling they give, the learning curve
that `dataspex plan` and the report extrapolate, and the report's drop-effect wording."""

from __future__ import annotations

import json
import os

import numpy as np
import pandas as pd
import pytest

from dataspex.design.base import Design
from dataspex.design.replicate import ROLE, extend_replicates, finished_replicate_rows, replicate_pairs
from dataspex.fit.artifacts import design_record
from dataspex.fit.estimators import InteractionResult
from dataspex.fit.faithfulness import (
    gap_split,
    least_squares_main_effects,
    main_effects_limit,
    noise_ceiling,
    pair_energy,
    pooled_ceiling,
)
from dataspex.fit.planning import curve_r2, describe, learning_curve, needed_retrains
from dataspex.report.curation import drop_all_effect
from dataspex.report.text import _drop_sentence
from dataspex.store.run_store import Results


def _design(n_fit=6, n_heldout=12, n_train=5, seed=0):
    rng = np.random.default_rng(seed)
    masks = rng.integers(0, 2, (n_fit + n_heldout, n_train), dtype=np.uint8)
    roles = ["fit"] * n_fit + ["heldout"] * n_heldout
    return Design(masks, np.arange(n_fit + n_heldout), roles, {"kind": "random"})


def test_replicates_copy_the_first_heldout_masks_once_and_leave_the_fit_record_alone():
    design = _design()
    extended, added = extend_replicates(design, 4)
    assert added == 4
    heldout = design.rows("heldout")[:4]
    assert np.array_equal(extended.masks[extended.rows(ROLE)], design.masks[heldout])
    assert replicate_pairs(extended) == [(int(design.mask_ids[h]), 18 + k) for k, h in enumerate(heldout)]
    again, added = extend_replicates(extended, 4)
    assert added == 0 and len(again) == len(extended)
    more, added = extend_replicates(extended, 6)  # raising the count adds only the missing two
    assert added == 2 and [a for a, _ in replicate_pairs(more)] == [int(design.mask_ids[h])
                                                                    for h in design.rows("heldout")[:6]]
    assert design_record(more) == design_record(design)  # replicates never make a fit stale
    assert len(more.without_extensions()) == len(design)
    assert extend_replicates(design, 50)[1] == 12  # no more than there are held-out masks


def test_finished_replicate_rows_pair_result_rows_of_finished_retrains_only():
    extended, _ = extend_replicates(_design(), 3)  # ids 18, 19, 20 replicate held-out ids of[0..2]
    of = [a for a, _ in replicate_pairs(extended)]
    stored = np.array([20, of[0], 5, 18, of[2], 19])  # results in any order; of[1] not finished
    assert finished_replicate_rows(extended, stored) == [(1, 3), (4, 0)]


def _results(design, losses):
    return Results(design.mask_ids.copy(), design.masks.copy(), losses, losses.copy())


def test_noise_ceiling_pairs_each_replicate_with_its_original():
    design, _ = extend_replicates(_design(n_heldout=40), 40)
    rng = np.random.default_rng(1)
    signal = rng.standard_normal((40, 3))
    losses = np.zeros((len(design), 3))
    ho, rep = design.rows("heldout"), design.rows(ROLE)
    losses[ho] = signal + 0.5 * rng.standard_normal((40, 3))
    losses[rep] = signal + 0.5 * rng.standard_normal((40, 3))
    got = noise_ceiling(design, _results(design, losses), "loss")
    assert got["n_masks"] == 40 and got["pooled"] == pytest.approx(pooled_ceiling(losses[ho], losses[rep]))
    assert got["mean"] == pytest.approx(np.corrcoef(losses[ho].mean(1), losses[rep].mean(1))[0, 1])
    shuffled = losses.copy()
    shuffled[rep] = shuffled[rep][::-1]  # replicates matched to the wrong originals share nothing
    assert noise_ceiling(design, _results(design, shuffled), "loss")["pooled"] < got["pooled"] - 0.3


def test_ceiling_se_is_zero_for_agreeing_replicates_and_matches_the_spread_of_independent_studies():
    """Replicates that agree give the ceiling 1 in every resample (SE 0). On a signal (variance 3) plus seed noise
    (variance 1), the bootstrap SE from one study of 32 replicated masks is within 35% of the standard deviation of
    the ceiling over 300 independent studies of 32, and the noise ceiling reports it with a fixed seed."""
    from dataspex.fit.faithfulness import ceiling_se

    rng = np.random.default_rng(4)
    a = rng.standard_normal((16, 3))
    assert ceiling_se(a, a) == 0.0

    def study():
        signal = np.sqrt(3.0) * rng.standard_normal((32, 4))
        return signal + rng.standard_normal((32, 4)), signal + rng.standard_normal((32, 4))
    spread = np.std([pooled_ceiling(*study()) for _ in range(300)], ddof=1)
    one = ceiling_se(*study())
    assert abs(one / spread - 1) < 0.35
    design, _ = extend_replicates(_design(n_heldout=40), 40)
    losses = rng.standard_normal((len(design), 3))
    got = noise_ceiling(design, _results(design, losses), "loss")
    assert got["pooled_se"] == ceiling_se(losses[design.rows("heldout")], losses[design.rows(ROLE)])


def test_noise_ceiling_says_what_is_missing():
    design = _design()
    assert "design.replicates=0" in noise_ceiling(design, _results(design, np.zeros((18, 2))), "loss")["why"]
    design, _ = extend_replicates(design, 12)
    results = _results(design, np.zeros((len(design), 2)))
    partial = Results(results.mask_ids[:-6], results.masks[:-6], results.losses[:-6], results.margins[:-6])
    got = noise_ceiling(design, partial, "loss")
    assert got["pooled"] is None and got["why"].startswith("6 of 12 seed replicates finished")
    few, _ = extend_replicates(_design(), 5)
    assert noise_ceiling(few, _results(few, np.zeros((len(few), 2))), "loss")["why"].startswith(
        "only 5 seed replicates in the design, 8 needed")


N_FEATURES, NOISE_SD = 8, 1.0


def _pair_study(pair: float, K: int = 4, m: int = 2000, M: int = 20000) -> dict:
    """K least-squares fits on disjoint blocks of m masks over 8 examples, scored on M held-out masks: two outputs,
    main effects plus ``pair`` times x0 x1 on the first, main effects only on the second, seed noise of SD 1."""
    rng = np.random.default_rng(0)
    X = (rng.random((K * m + M, N_FEATURES)) < 0.5).astype(np.float64)
    weights = np.linspace(-1.0, 1.0, N_FEATURES)
    g = np.stack([X @ weights + pair * X[:, 0] * X[:, 1], X @ weights[::-1]], axis=1)
    y = g + NOISE_SD * rng.standard_normal(g.shape)
    g_ho, y_ho = g[K * m:], y[K * m:]
    sst = float(((y_ho - y_ho.mean(0)) ** 2).sum())
    ceiling = float(((g_ho - g_ho.mean(0)) ** 2).sum()) / sst  # the share of held-out variance the mask determines
    coefs = [least_squares_main_effects(X[k * m:(k + 1) * m], y[k * m:(k + 1) * m]) for k in range(K)]
    fits = np.stack([c[0] + X[K * m:] @ c[1:] for c in coefs])
    return {**gap_split(y_ho, fits, ceiling), "sst": sst, "M": M, "X": X, "y": y, "K": K, "m": m}


def test_gap_split_the_mean_of_the_fits_scores_the_mean_r2_plus_most_of_the_variance_exactly():
    rng = np.random.default_rng(1)
    Y = rng.standard_normal((50, 3))
    fits = Y + rng.standard_normal((5, 50, 3))
    d = gap_split(Y, fits, ceiling=0.9)
    assert d["r2_of_mean"] == pytest.approx(d["r2"] + (5 - 1) / 5 * d["variance"], abs=1e-12)
    assert d["r2_without_variance"] == pytest.approx(d["r2"] + d["variance"], abs=1e-12)
    assert d["bias"] == pytest.approx(0.9 - d["r2"] - d["variance"], abs=1e-12)
    assert gap_split(Y, fits)["bias"] is None
    with pytest.raises(ValueError, match="1 fit\\(s\\): the variance needs 2 or more fits on disjoint blocks"):
        gap_split(Y, fits[:1])


def test_least_squares_on_an_additive_truth_has_no_bias_and_the_variance_least_squares_theory_gives():
    d = _pair_study(pair=0.0)
    assert abs(d["bias"]) < 0.01
    # p = n + 1 coefficients on m masks: held-out prediction variance about sigma^2 p / (m - p - 1) per output
    expected = 2 * d["M"] * NOISE_SD ** 2 * (N_FEATURES + 1) / (2000 - N_FEATURES - 2) / d["sst"]
    assert d["variance"] == pytest.approx(expected, rel=0.1)


def test_least_squares_bias_is_the_part_of_a_pair_term_no_main_effect_represents():
    pair = 4.0
    d = _pair_study(pair=pair)
    # x0 x1 = 1/4 + (x0 - 1/2) / 2 + (x1 - 1/2) / 2 + (x0 - 1/2)(x1 - 1/2); the last term, of variance 1/16 at
    # p = 1/2, is orthogonal to every main effect, so least squares leaves pair^2 / 16 per held-out mask
    assert d["bias"] == pytest.approx(d["M"] * pair ** 2 / 16 / d["sst"], rel=0.1)
    assert d["bias"] > 0.05


def test_main_effects_limit_is_the_ceiling_less_the_pair_part_and_needs_two_blocks_of_2n():
    d = _pair_study(pair=4.0)
    K, m, X, y = d["K"], d["m"], d["X"], d["y"]
    got = main_effects_limit(X[:K * m], y[:K * m], X[K * m:], y[K * m:])
    assert got["K"] == 4 and got["block_masks"] == m
    assert got["r2"] == pytest.approx(d["r2_without_variance"], abs=1e-12)  # the same blocks, the same split
    assert 0 < got["r2_se"] < 0.01
    # the pair part is out of every main-effects model's reach: the limit sits that far under the ceiling
    ceiling = d["bias"] + d["r2_without_variance"]
    assert got["r2"] == pytest.approx(ceiling - d["M"] * 4.0 ** 2 / 16 / d["sst"], abs=0.02)
    short = main_effects_limit(X[:31], y[:31], X[K * m:], y[K * m:])
    assert short["r2"] is None
    assert short["why"] == "31 fit masks: 2 disjoint blocks of 2n = 16 or more are needed"
    assert main_effects_limit(X[:32], y[:32], X[K * m:], y[K * m:])["K"] == 2


def test_pair_energy_recovers_the_squared_pair_coefficients_of_each_output_under_noise():
    rng = np.random.default_rng(0)
    n, M = 12, 6000
    X = (rng.random((M, n)) < 0.5).astype(np.uint8)
    s = 1.0 - 2.0 * X
    g = 0.8 * s[:, 0] + 0.6 * s[:, 1] * s[:, 2] + 0.4 * s[:, 4] * s[:, 5]
    Y = np.stack([g + 0.5 * rng.standard_normal(M), 0.3 * s[:, 1] * s[:, 2] + 0.5 * rng.standard_normal(M)], axis=1)
    V = ((Y - Y.mean(0)) ** 2).sum() / (M - 1)
    both = pair_energy(X, Y, [[1, 2], [4, 5]], [[0], [0]])  # the first output's two pairs: 0.36 + 0.16
    assert 0 < both["se"] < 0.02 and both["share"] == pytest.approx(0.52 / V, abs=3 * both["se"])
    shared = pair_energy(X, Y, [[1, 2]], [[0, 1]])  # one pair serving both outputs: 0.36 + 0.09
    assert shared["share"] == pytest.approx(0.45 / V, abs=3 * shared["se"])
    assert abs(pair_energy(X, Y, [[7, 8]], [[0, 1]])["share"]) < 0.002  # seed noise alone holds nothing
    # the estimate is of the pair's coefficient only: a main effect on one of its examples adds nothing
    assert pair_energy(X, Y, [[0, 3]], [[0]])["share"] == pytest.approx(0.0, abs=0.003)


def test_pair_energy_at_a_kept_fraction_of_0_9_uses_the_p_biased_characters():
    rng = np.random.default_rng(2)
    n, M, p = 6, 20000, 0.9
    X = (rng.random((M, n)) < p).astype(np.uint8)
    phi = (X - p) / np.sqrt(p * (1 - p))
    Y = (0.7 * phi[:, 0] + 0.5 * phi[:, 1] * phi[:, 2] + 0.5 * rng.standard_normal(M))[:, None]
    V = ((Y - Y.mean(0)) ** 2).sum() / (M - 1)
    got = pair_energy(X, Y, [[1, 2]], [[0]], p=p)
    assert got["share"] == pytest.approx(0.25 / V, abs=3 * got["se"])
    # read with the uniform characters the same retrains say something else: the kept fraction matters
    assert abs(pair_energy(X, Y, [[1, 2]], [[0]])["share"] - 0.25 / V) > 5 * got["se"]
    with pytest.raises(ValueError, match="p=1.0: the kept fraction must lie in"):
        pair_energy(X, Y, [[1, 2]], [[0]], p=1.0)


def test_the_quadratic_models_screen_is_recorded_for_plan_and_screen_reach_says_when_it_cannot_be_measured():
    from dataspex.estimators import QuadraticProxy
    from dataspex.fit.faithfulness import screen_reach

    rng = np.random.default_rng(1)
    X = (rng.random((200, 8)) < 0.5).astype(np.uint8)
    Y = np.stack([X[:, 0] * X[:, 1] + 0.1 * rng.standard_normal(200), X[:, 2] + 0.1 * rng.standard_normal(200)], 1)
    est = QuadraticProxy(n_top=3).fit(X, Y)
    screen = est.fit_summary()["screen"]
    assert screen["pairs"] == est.pairs_.tolist()
    for p, ts in enumerate(screen["outputs"]):
        assert ts == np.flatnonzero(est.candidates_[p]).tolist()
    assert [0, 1] in screen["pairs"] and 0 in screen["outputs"][screen["pairs"].index([0, 1])]
    shared = QuadraticProxy(n_top=3, screen="main").fit(X, Y).fit_summary()["screen"]
    assert shared["outputs"] is None and shared["pairs"]  # every output may use every pair: not spelled out
    assert pair_energy(X, Y, shared["pairs"], None)["share"] == pytest.approx(
        pair_energy(X, Y, shared["pairs"], [[0, 1]] * len(shared["pairs"]))["share"])

    no_limit = screen_reach(None, None, screen, {"r2": None, "why": "100 fit masks: too few"})
    assert no_limit["r2"] is None and no_limit["why"] == "100 fit masks: too few"


def test_learning_curve_recovers_intercept_and_step_and_inverts_them():
    m = np.array([32, 64, 128])
    curve = learning_curve(m, -0.4 + 0.1 * np.log2(m))  # +0.1 per doubling: 0.1 at 32, 0.3 at 128
    assert curve["intercept"] == pytest.approx(-0.4) and curve["per_doubling"] == pytest.approx(0.1)
    assert curve["kind"] == "log2" and describe(curve) == "log2 line (+0.100 per doubling)"
    assert needed_retrains(curve, 0.5) == {"n_masks": 512, "why": "", "doublings": 2.0}
    assert needed_retrains(curve, 0.25, ceiling=0.7)["n_masks"] == 91  # log2 m = 6.5: 90.5 retrains
    assert needed_retrains(curve, 0.25)["doublings"] == 0.0  # 91 < 128: the pilot already reaches it
    assert needed_retrains(curve, 0.7, ceiling=0.7)["n_masks"] is None
    assert "at or above the noise ceiling 0.700" in needed_retrains(curve, 0.7, ceiling=0.7)["why"]
    falling = learning_curve(m, 0.3 - 0.02 * np.log2(m))
    assert needed_retrains(falling, 0.2)["n_masks"] is None
    assert "does not rise with the retrains (-0.020 per doubling)" in needed_retrains(falling, 0.2)["why"]
    assert needed_retrains(curve, 1.1)["n_masks"] is None  # 2^15: 8 doublings beyond 128
    assert "8.0 doublings beyond the largest measured budget (128): more than 64x" in needed_retrains(curve, 1.1)["why"]
    assert learning_curve([64, 64, np.nan], [0.1, 0.2, 0.3]) is None
    assert needed_retrains(None, 0.5)["n_masks"] is None


def test_power_law_to_the_ceiling_recovers_its_rate_and_inverts_it():
    # ceiling 0.7, the gap 0.6 at m = 32 shrinking x0.8 per doubling
    m = np.array([32.0, 64.0, 96.0, 128.0])
    gap = 0.6 * 0.8 ** np.log2(m / 32)
    curve = learning_curve(m, 0.7 - gap, ceiling=0.7)
    assert curve["kind"] == "power" and curve["ceiling"] == 0.7
    assert np.exp(curve["per_doubling"]) == pytest.approx(0.8)
    np.testing.assert_allclose(curve_r2(curve, [256, 1024]), 0.7 - 0.6 * 0.8 ** np.array([3.0, 5.0]))
    assert describe(curve) == "power law to the ceiling 0.700 (gap x0.80 per doubling)"
    # R^2 0.5: a gap of 0.2, a third of 0.6: log(1/3) / log(0.8) = 4.92 doublings past 32, 971.01 retrains
    assert needed_retrains(curve, 0.5, ceiling=0.7) == {"n_masks": 972, "why": "", "doublings": pytest.approx(
        np.log2(972 / 128))}
    assert needed_retrains(curve, 0.2)["doublings"] == 0.0  # 0.7 - 0.5 reached at m = 32
    assert "at or above the noise ceiling 0.700" in needed_retrains(curve, 0.7)["why"]
    far = needed_retrains(curve, 0.69999)  # the gap must shrink to 1e-5: 40 doublings
    assert far["n_masks"] is None and "with the gap to the ceiling x0.80 per doubling it needs" in far["why"]
    flat = learning_curve(m, 0.7 - 0.3 * 1.1 ** np.log2(m / 32), ceiling=0.7)
    assert "the gap to the noise ceiling does not shrink with the retrains (x1.10 per doubling)" in \
        needed_retrains(flat, 0.5)["why"]
    # a point at or above the ceiling (noise in a small pilot): the log2 line, which has no limit of its own
    assert learning_curve(m, [0.1, 0.3, 0.71, 0.4], ceiling=0.7)["kind"] == "log2"


def test_drop_effect_is_not_predicted_when_no_term_touches_the_examples():
    # f = 1 + 0.5 chi_{0} + 0.25 chi_{1,2} (the mean output only): examples 3 and 4 have no term
    result = InteractionResult(n_features=5, keys=[(), (0,), (1, 2)], fourier=np.array([[1.0], [0.5], [0.25]]),
                               output_names=["mean"])
    assert drop_all_effect(result, 5, [3, 4]) is None
    assert "not predicted" in _drop_sentence(None)
    # chi_k(x) = (-1)^{|k & x|}: removing example 0 turns chi_{0} from -1 into +1 (+2 x 0.5 = +1.0); removing 1
    # turns chi_{1,2} from +1 into -1 (-2 x 0.25 = -0.5)
    assert drop_all_effect(result, 5, [0]) == pytest.approx(1.0)
    assert drop_all_effect(result, 5, [1, 3]) == pytest.approx(-0.5)
    assert _drop_sentence(1.0).endswith("a change of +1.000 nats in the mean test loss if all are removed")


def test_plan_target_defaults_to_80_percent_of_the_ceiling_and_says_how_uncertain_it_is():
    from omegaconf import OmegaConf

    from dataspex.stages.plan import choose_target

    ceiling = {"pooled": 0.7, "pooled_se": 0.05, "n_masks": 16}
    target, source = choose_target(OmegaConf.create({"target": None}), ceiling, 0.1)
    assert target == pytest.approx(0.56)
    assert source == ("80% of the noise ceiling 0.700 (+- 0.050, its bootstrap standard error over 16 replicated "
                      "masks: the target is as uncertain)")
    assert choose_target(OmegaConf.create({"target": None}), {"pooled": None, "why": "none"}, 0.1) == \
        (0.1, "report.trust_r2 (no noise ceiling: none)")


def test_plan_stage_extrapolates_the_pilot_and_prints_the_study(tmp_path):
    from dataspex.store import RunStore
    from tests.conftest import run_cli
    from tests.test_report import copy_run

    run_dir = copy_run(tmp_path)
    store = RunStore(run_dir)
    design = store.load_design()
    # two masks "trained" again in 3 s: the only result file that records its time
    store.write_results(design.mask_ids[:2], design.masks[:2], np.zeros((2, 4)), np.zeros((2, 4)), {"seconds": 3.0})
    assert store.training_rate() == {"seconds": 3.0, "n_masks": 2, "threads": [0]}
    proc = run_cli("plan", f"run_dir={run_dir}", "report.curve_fractions=[0.25,0.5,0.75]", "plan.target=0.99",
                   "plan.shards=4")
    plan = json.load(open(os.path.join(run_dir, "plan.json")))
    assert plan["target_r2_pooled"] == 0.99 and plan["target_from"] == "plan.target"
    assert plan["seconds_per_retrain"] == 1.5 and plan["pilot_fit_masks"] == 48
    # the plan is printed once (stdout), not echoed by the console log beside it, and kept in the run's log
    printed = [line for line in proc.stdout.splitlines() if line.startswith("plan:")]
    assert printed and " plan: " not in proc.stderr
    logged = open(os.path.join(run_dir, "dataspex.log")).read()
    assert all(f"] {line}\n" in logged for line in printed)
    unbounded = 0
    for name, row in plan["estimators"].items():  # each estimator's answer is its own curve's, inverted
        ms, rs, ceiling = [m for m, _ in row["points"]], [r for _, r in row["points"]], plan["ceiling"]["pooled"]
        bound = plan["main_effects_limit"] if name == "linear" else plan["screen_reach"].get(name)
        if bound is not None and bound["r2"] is not None:  # 0.99 is above every bound of this small run
            assert bound["r2"] < 0.99 and row["n_masks"] is None and row["figure"] is None, name
            assert row["why"].startswith("the target is a"), name
            continue
        unbounded += 1
        assert row["n_masks"] == needed_retrains(learning_curve(ms, rs), 0.99, ceiling)["n_masks"], name
        power = learning_curve(ms, rs, ceiling)  # the second estimate, beside the log2 line
        if ceiling is not None and power["kind"] == "power":
            assert row["power"]["n_masks"] == needed_retrains(power, 0.99, ceiling)["n_masks"], name
            assert f"{name:<10} R^2 by retrains" in proc.stdout and "power law to the ceiling" in proc.stdout
            # 48 fit masks over 10 examples: from 2n on the figure is the power law's (where the log2 line has one)
            assert row["figure"] == (row["power"]["n_masks"] if row["n_masks"] is not None else None), name
        else:
            assert row["power"] is None and row["figure"] == row["n_masks"], name
    assert unbounded >= 1  # ProxySPEX: no bound measured, its own curves
    best = plan["best"]
    if best is None:
        assert "no estimator reaches the target" in proc.stdout and plan["commands"] == []
    else:
        need = plan["estimators"][best]["figure"]
        assert need > 48 and plan["new_retrains"] == need - 48  # the pilot's 48 fit masks are kept
        assert plan["wall_seconds_here"] == pytest.approx((need - 48) * 1.5)
        assert plan["wall_seconds_slurm"] == pytest.approx(plan["wall_seconds_here"] / 4)
        assert plan["commands"][0] == f"dataspex design run_dir={run_dir} design.m={need}"  # grown in place
        assert f"run_dir={run_dir} " in plan["commands"][1]
        assert "shard.count=4 'shard.index=range(0,4)'" in plan["commands"][1]
        source = plan["estimators"][best]["figure_from"]
        assert (f"plan: best: {best} at {need} fit retrains" + ("" if source == "log2 line" else f" (its {source})")
                + f": {need - 48} more than the pilot's 48") in proc.stdout
    proc = run_cli("plan", f"run_dir={run_dir}", "plan.target=1.5", check=False)
    assert proc.returncode == 2 and "plan.target=1.5 must be a pooled R^2 in (0, 1)" in proc.stderr


def test_a_named_pair_model_less_faithful_than_linear_is_flagged():
    from dataspex.report.text import _ranking_lines

    linear = InteractionResult(n_features=3, keys=[(), (0,)], fourier=np.array([1.0, 0.5]))
    quad = InteractionResult(n_features=3, keys=[(), (0, 1)], fourier=np.array([1.0, 0.5]))
    ctx = {"name": "quadratic", "result": quad, "fitted": {"linear": linear, "quadratic": quad},
           "faithfulness": {"linear": {"r2_pooled": 0.414}, "quadratic": {"r2_pooled": 0.352}}}
    lines = _ranking_lines(ctx)
    assert len(lines) == 1 and lines[0].startswith(
        "Warning: the ranking model quadratic (pooled held-out R^2 0.352) is less faithful than the linear "
        "datamodel linear (0.414)")
    ctx["faithfulness"]["quadratic"]["r2_pooled"] = 0.5
    assert _ranking_lines(ctx) == []


def test_the_curve_refits_an_estimator_added_at_fit_time(tmp_path):
    """`+estimator@estimators.shared_pairs=quadratic` (a second quadratic model, under its own name) given to
    `dataspex fit` only (such overrides are not replayed on later stages): the fit set records each estimator's
    config, so the faithfulness curve refits it at a smaller budget instead of saying "not in this config"."""
    from dataspex.fit.artifacts import load_faithfulness
    from dataspex.fit.faithfulness import load_curve, update_curve
    from dataspex.store import RunStore
    from tests.conftest import run_cli
    from tests.test_report import copy_run

    run_dir = copy_run(tmp_path)
    run_cli("fit", f"run_dir={run_dir}", "+estimator@estimators.shared_pairs=quadratic",
            "estimators.shared_pairs.screen=main")
    store = RunStore(run_dir)
    faithfulness = load_faithfulness(store)
    assert faithfulness["shared_pairs"]["config"]["_target_"] == "dataspex.estimators.QuadraticProxy"
    assert faithfulness["shared_pairs"]["config"]["screen"] == "main"
    update_curve({}, store, faithfulness, [0.5])  # no estimator configured in this invocation
    curve = load_curve(store, faithfulness, [0.5])
    half = curve[(curve["estimator"] == "shared_pairs") & (curve["fraction"] == 0.5)].iloc[0]
    assert half["note"] == "" and half["n_masks"] == round(0.5 * faithfulness["shared_pairs"]["n_fit_masks"])
    assert half["r2_pooled"] is not None and np.isfinite(half["r2_pooled"])


def test_the_trust_line_gives_the_ceilings_error_and_the_shares_range():
    """With 128 replicates the line says what +- is and no more; with 16 it also says how to narrow it; a ceiling
    without an SE (older summaries) keeps the plain share."""
    from dataspex.report.text import _trust_lines

    trust = {"estimator": "quadratic", "r2_pooled": 0.6, "n_fit_masks": 1024, "n_heldout_masks": 256,
             "trusted": True, "trust_r2": 0.1, "need_trust": None, "need_ceiling": None,
             "ceiling": {"pooled": 0.8, "pooled_se": 0.02, "n_masks": 128}}
    line = _trust_lines(trust)[0]
    assert ("noise ceiling 0.800 +- 0.020 (128 held-out retrains repeated under another seed: no model of the "
            "training set can beat it; +- is its bootstrap standard error); the model reaches 75% of it, 73% to 77% "
            "with the ceiling one standard error either way.") in line
    few = _trust_lines({**trust, "ceiling": {"pooled": 0.8, "pooled_se": 0.05, "n_masks": 16}})[0]
    assert ("+- is its bootstrap standard error, which four times the replicates would about halve: "
            "design.replicates, at most design.heldout); the model reaches 75% of it, 71% to 80%") in few
    plain = _trust_lines({**trust, "ceiling": {"pooled": 0.8, "n_masks": 16}})[0]
    assert "noise ceiling 0.800 (16 held-out retrains repeated under another seed: no model of the training set " \
           "can beat it); the model reaches 75% of it." in plain


def test_a_predicted_rise_from_dropping_the_harmful_examples_is_called_out():
    """The summary's predicted list is not advice when the ranking model says removing it all raises the mean test
    loss: the warning names the redundant findings that share its examples; a fall or no prediction says nothing."""
    from dataspex.report.text import _rise_warning

    actions = pd.DataFrame({"kind": ["harmful", "harmful", "redundant", "redundant"], "i": [3, 5, 3, 8],
                            "j": [7, 9, 7, 11], "test": [0, 1, 4, 2]})
    warning = _rise_warning(0.148, actions)
    assert warning == (" That is a rise: by the ranking model these examples lower the loss of other test examples "
                       "more than they raise it where they were found harmful; redundant findings share examples with "
                       "them: #3 + #7 (test #4). Removing all of them is not advised; `dataspex validate` measures "
                       "each pair's removal on the mean test loss.")
    assert "redundant findings" not in _rise_warning(0.1, actions[actions["i"] != 3])
    assert _rise_warning(-0.2, actions) == _rise_warning(None, actions) == _rise_warning(0.0, actions) == ""


def test_an_action_reads_the_validation_of_its_own_test_example_only():
    """(0, 1) is a harmful finding at test 0 and a redundant one at test 1; `validate` retrained only the redundant
    claim. The harmful action must stay 'not validated' (it once read the redundant claim's verdict and removal,
    keyed by the pair alone), the redundant one gets its own verdict, and neither is a validated harmful action."""
    from types import SimpleNamespace

    from dataspex.report.curation import curation_actions
    from dataspex.validate.analysis import validated_harmful

    # f_0 = 1 + 0.5 chi_0 - 0.5 chi_{0,1}, f_1 = 1 - 0.5 chi_0 + 0.5 chi_{0,1}
    result = InteractionResult(n_features=3, keys=[(), (0,), (0, 1)],
                               fourier=np.array([[1.0, 1.0], [0.5, -0.5], [-0.5, 0.5]]))
    texts = {"text_i": "a", "label_i": "x", "text_j": "b", "label_j": "x", "test_text": "c", "test_label": "y"}
    tables = {kind: pd.DataFrame([{"rank": 1, "i": 0, "j": 1, "test": test, "pattern": pattern, "finding": True,
                                   **texts}])
              for kind, test, pattern in (("harmful", 0, "masking"), ("redundant", 1, "redundant"))}
    validation = pd.DataFrame([{"kind": "redundant", "i": 0, "j": 1, "test": 1, "verdict": "confirmed",
                                "removal": "raised", "realised_removal": 2.5, "removal_ci_low": 2.3,
                                "removal_ci_high": 2.7, "removal_mean_ci_low": -0.2, "removal_mean_ci_high": -0.1}])
    actions = curation_actions(tables, result, SimpleNamespace(task="classification"), validation)
    harmful, redundant = actions.iloc[0], actions.iloc[1]
    assert harmful["kind"] == "harmful" and harmful["verdict"] == "not validated" and harmful["removal"] == "-"
    assert np.isnan(harmful["realised_change_if_both_removed"])
    assert redundant["verdict"] == "confirmed" and redundant["realised_change_if_both_removed"] == 2.5
    full = np.ones((2, 3), dtype=np.uint8)
    full[1, [0, 1]] = 0
    change = result.predict(full)[1] - result.predict(full)[0]  # removing both, per test example: [+1, -1]
    assert harmful["predicted_change_if_both_removed"] == pytest.approx(change[0])
    assert redundant["predicted_change_if_both_removed"] == pytest.approx(change[1]) and change[0] != change[1]
    assert validated_harmful(actions).empty


def test_a_curve_short_of_its_units_is_no_forecast_in_the_trust_line():
    """Below as many fit masks as units the report gives no retrain figure, only the next step; at or above it the
    figure comes with the measured record of such curves."""
    from dataspex.design.units import Units
    from dataspex.fit.planning import extrapolation_record
    from dataspex.report.text import _trust_lines

    need = needed_retrains({"kind": "log2", "intercept": -0.5, "per_doubling": 0.1, "ceiling": None, "points": 4,
                            "largest": 192}, 0.4)
    assert need["n_masks"] == 512
    trust = {"estimator": "linear", "r2_pooled": 0.05, "n_fit_masks": 192, "n_heldout_masks": 48, "trusted": False,
             "trust_r2": 0.1, "need_trust": need, "need_ceiling": None, "ceiling": {"pooled": None, "why": "none"},
             "n_units": 256, "short_pilot": True, "record": extrapolation_record(192, 256)}
    short = _trust_lines(trust)[0]
    assert ("How many retrains report.trust_r2=0.1 needs: not yet known; with fewer fit retrains (192) than "
            "training examples (256) a curve has not reached its steep part and is no forecast") in short
    assert "grow the run to 256 fit retrains" in short and "512" not in short
    enough = _trust_lines({**trust, "n_fit_masks": 256, "n_units": 200, "short_pilot": False,
                           "record": extrapolation_record(256, 200)})[0]
    assert ("extrapolates to about 512 fit retrains for report.trust_r2=0.1; from pilots of as many fit retrains "
            "as training examples on six real-text runs the log2 line asked") in enough
    assert extrapolation_record(256, 128).startswith("from pilots of twice as many fit retrains")  # the 2n record
    # from 4n: the bound's record under a bound, else the other curves' from 4n and 8n pilots (a lower estimate)
    assert "the power law to the model's own bound asked" in extrapolation_record(512, 128, bound=True)
    assert extrapolation_record(512, 128).endswith("a lower estimate either way")
    clusters = Units(np.arange(40) % 20, [f"cluster {k}" for k in range(20)], spec="cluster:20")
    assert extrapolation_record(10, 20, clusters).startswith("with fewer fit retrains (10) than units (cluster:20)")


def test_plan_on_a_pilot_short_of_its_examples_grows_it_to_n_first(tmp_path):
    """48 fit masks over 64 training examples: the plan's study is the pilot grown to 64, whatever its curves say."""
    from dataspex.store import RunStore
    from tests.conftest import run_cli
    from tests.test_report import make_synthetic_run

    run_dir = make_synthetic_run(str(tmp_path / "run"), extra=("data.n_train=60",), proxyspex=False, report=False)
    n_units = RunStore(run_dir).load_design().n_units
    assert n_units > 48
    proc = run_cli("plan", f"run_dir={run_dir}", "report.curve_fractions=[0.25,0.5,0.75]", "plan.shards=2",
                   "plan.target=0.99")
    plan = json.load(open(os.path.join(run_dir, "plan.json")))
    assert plan["grow_first"] == n_units and plan["new_retrains"] == n_units - 48
    assert plan["commands"][0] == f"dataspex design run_dir={run_dir} design.m={n_units}"
    assert (f"with fewer fit retrains (48) than training examples ({n_units}) a curve has not reached its steep "
            f"part and is no forecast") in proc.stdout
    assert f"The next step: grow the pilot to {n_units} fit retrains ({n_units - 48} more" in proc.stdout
    assert "plan: best:" not in proc.stdout


def test_plan_gives_main_effects_models_no_forecast_past_the_main_effects_limit(tmp_path):
    """120 fit masks of a synthetic run whose planted pairs are not additive: least squares on disjoint blocks puts
    the main-effects limit under a target of 0.99, so the linear datamodel gets no forecast and the pair model's
    carries the warning; a target under the limit changes nothing."""
    from dataspex.fit.faithfulness import fit_outputs
    from dataspex.store import RunStore
    from tests.conftest import run_cli
    from tests.test_report import make_synthetic_run

    run_dir = make_synthetic_run(str(tmp_path / "run"), extra=("design.m=120",), proxyspex=False, report=False)
    store = RunStore(run_dir)
    design = store.load_design()
    results = store.load_results(design)
    Y = fit_outputs(results, "loss")
    fit, heldout = results.keep(design, "fit"), results.keep(design, "heldout")
    limit = main_effects_limit(results.masks[fit], Y[fit], results.masks[heldout], Y[heldout])
    assert limit["K"] >= 2 and limit["r2"] + 2 * limit["r2_se"] < 0.99
    args = ("plan", f"run_dir={run_dir}", "report.curve_fractions=[0.25,0.5,0.75]")
    proc = run_cli(*args, "plan.target=0.99")
    plan = json.load(open(os.path.join(run_dir, "plan.json")))
    assert plan["main_effects_limit"]["r2"] == pytest.approx(limit["r2"])
    linear = plan["estimators"]["linear"]
    assert linear["n_masks"] is None and linear["power"] is None
    assert linear["why"] == (f"the target is above the main-effects limit {limit['r2']:.3f} (no budget reaches it "
                             "with main effects alone)")
    assert plan["best"] != "linear"
    # the quadratic model's screen: the limit plus its pairs' energy, measured on every uniform mask
    reach = plan["screen_reach"]["quadratic"]
    screen = json.load(open(os.path.join(run_dir, "fit", "faithfulness.json")))["quadratic"]["screen"]
    rows = fit | heldout
    energy = pair_energy(results.masks[rows], Y[rows], screen["pairs"], screen["outputs"])
    assert reach["r2"] == pytest.approx(limit["r2"] + energy["share"]) and reach["n_pairs"] == len(screen["pairs"])
    assert (f"plan: quadratic's {len(screen['pairs'])} screened pairs hold {energy['share']:.3f} +- "
            f"{energy['se']:.3f} of a retrain's variance") in proc.stdout
    assert (f"plan: main effects alone reach at most R^2 {limit['r2']:.3f} +- {limit['r2_se']:.3f} on this run at "
            f"any budget") in proc.stdout
    assert f"the target is above it by {0.99 - limit['r2']:.3f}, which only interaction terms can add" in proc.stdout
    low = round(limit["r2"] / 2, 3)
    proc = run_cli(*args, f"plan.target={low}")
    plan = json.load(open(os.path.join(run_dir, "plan.json")))
    assert "the target is within it" in proc.stdout and "main-effects limit" not in plan["estimators"]["linear"]["why"]
    # the report's trust line and summary.json carry the same limit
    run_cli("report", f"run_dir={run_dir}", "report.curve_fractions=[0.25,0.5,0.75]")
    summary = json.load(open(os.path.join(run_dir, "report", "summary.json")))
    assert summary["trust"]["limit"]["r2"] == pytest.approx(limit["r2"])
    if summary["trust"]["estimator"] == "quadratic":  # the ranking model's own reach, as plan measured it
        assert summary["trust"]["reach"]["r2"] == pytest.approx(reach["r2"])
    assert (f"Main effects alone reach at most R^2 {limit['r2']:.3f} +- {limit['r2_se']:.3f} on this run at any "
            "budget") in open(os.path.join(run_dir, "report", "report.md")).read()


def test_the_trust_line_gives_a_main_effects_model_no_figure_past_the_limit_and_a_pair_model_one():
    from dataspex.report.context import trust_summary
    from dataspex.report.text import _trust_lines

    # a log2 curve 0.2, 0.3, 0.4 at 256, 512, 1024 fit masks: 0.56 (80% of the ceiling 0.7) at 1024 x 2^1.6
    curve = pd.DataFrame({"estimator": ["m"] * 3, "fraction": [0.25, 0.5, 1.0], "n_masks": [256, 512, 1024],
                          "r2": [0.2, 0.3, 0.4], "r2_pooled": [0.2, 0.3, 0.4], "note": [""] * 3})
    faithfulness = {"m": {"r2_pooled": 0.4, "n_fit_masks": 1024, "n_heldout_masks": 64}}
    ceiling = {"pooled": 0.7, "pooled_se": 0.02, "n_masks": 64}
    limit = {"r2": 0.5, "r2_se": 0.02, "K": 2, "block_masks": 512}
    args = (faithfulness, "m", curve, ceiling, 0.1, 256, None, limit)
    pair = trust_summary(*args, bound=None)
    # no bound, and four times as many fit masks as units: the power law to the ceiling, as `dataspex plan` acts on
    assert pair["need_ceiling"]["n_masks"] == needed_retrains(
        learning_curve([256, 512, 1024], [0.2, 0.3, 0.4], 0.7), 0.56, 0.7)["n_masks"]
    assert pair["need_ceiling"]["toward"] == "the noise ceiling"
    short = trust_summary(faithfulness, "m", curve, ceiling, 0.1, 1000, None, limit, bound=None)  # 1,024 < 2n
    assert short["need_ceiling"]["n_masks"] == needed_retrains(learning_curve([256, 512, 1024], [0.2, 0.3, 0.4]),
                                                               0.56, 0.7)["n_masks"] and "toward" not in short[
        "need_ceiling"]
    line = _trust_lines(pair)[0]
    assert ("Main effects alone reach at most R^2 0.500 +- 0.020 on this run at any budget (71% of the ceiling): "
            "least squares on 2 disjoint blocks of 512 fit masks, its variance removed") in line
    assert "extrapolates to about" in line
    main = trust_summary(*args, bound={**limit, "kind": "main effects"})
    assert main["need_ceiling"]["n_masks"] is None
    assert _trust_lines(main)[0].endswith("To reach 80% of the ceiling: no budget gets it there, as main effects "
                                          "alone reach at most R^2 0.500 on this run.")
    # within two standard errors above the limit (0.56 is not past 0.5 + 2 x 0.04): not excluded, and no figure
    near = trust_summary(*args[:-1], {**limit, "r2_se": 0.04}, bound={**limit, "r2_se": 0.04, "kind": "main effects"})
    assert near["need_ceiling"]["n_masks"] is None
    assert _trust_lines(near)[0].endswith("To reach 80% of the ceiling: no figure, as main effects alone reach at most "
                                          "R^2 0.500 +- 0.040 on this run (the goal is within two of its standard "
                                          "errors: not excluded).")
    assert "Main effects alone" not in _trust_lines(trust_summary(*args[:-1], None))[0]
    # a pair model with a measured reach: no figure past it, the figure below it
    reach = {"r2": 0.52, "r2_se": 0.01, "pairs": 0.02, "pairs_se": 0.001, "n_pairs": 28, "kind": "screen"}
    capped = trust_summary(*args, bound=reach)
    line = _trust_lines(capped)[0]
    assert ("The ranking model's 28 screened pairs hold 0.020 +- 0.001 of a retrain's variance (estimated from pairs "
            "of retrains, no model): with main effects it explains at most R^2 0.520 +- 0.010 at any budget.") in line
    assert line.endswith("To reach 80% of the ceiling: no budget gets it there, as main effects and its 28 screened "
                         "pairs explain at most R^2 0.520 on this run.")
    # under the bound the figure is the power law to it: the gap to 0.6 (0.4, 0.3, 0.2) shrinks x0.71 per doubling
    under = trust_summary(*args, bound={**reach, "r2": 0.6})
    toward = learning_curve([256, 512, 1024], [0.2, 0.3, 0.4], 0.6)
    assert under["need_ceiling"]["n_masks"] == needed_retrains(toward, 0.56)["n_masks"]
    assert under["need_ceiling"]["n_masks"] > pair["need_ceiling"]["n_masks"]  # the gap shrinks ever slower
    assert under["record"].startswith("from pilots of four and eight times as many fit retrains")
    line = _trust_lines(under)[0]
    lo, hi = (needed_retrains(learning_curve([256, 512, 1024], [0.2, 0.3, 0.4], 0.6 + d), 0.56)["n_masks"]
              for d in (0.01, -0.01))
    assert under["need_ceiling"]["range"] == [lo, hi] and under["need_ceiling"]["range_se"] == 0.01
    assert (f"Its faithfulness curve (a power law to its bound R^2 0.600) extrapolates to about "
            f"{under['need_ceiling']['n_masks']} fit retrains for 80% of the ceiling ({lo} to {hi} with its bound "
            "one standard error, 0.010, higher or lower)") in line
    # a limit above a ceiling measured low says that the two estimates disagree, and by how much
    above = trust_summary(faithfulness, "m", curve, {**ceiling, "pooled": 0.45}, 0.1, 256, None, limit, bound=None)
    assert ("its variance removed; it lies above the noise ceiling, which no model can pass: the two estimates "
            "differ by 0.050, 1.8 of their combined standard errors") in _trust_lines(above)[0]


def test_the_plan_line_on_the_limit_says_within_near_or_past():
    from dataspex.stages.plan import _limit_line

    limit = {"r2": 0.5, "r2_se": 0.03, "K": 2, "block_masks": 555}
    head = ("plan: main effects alone reach at most R^2 0.500 +- 0.030 on this run at any budget, 71% of the noise "
            "ceiling (least squares on 2 disjoint blocks of 555 fit masks, its variance removed)")
    ceiling = {"pooled": 0.7, "pooled_se": 0.02}
    assert _limit_line(limit, 0.45, ceiling, False) == head + "; the target is within it"
    assert _limit_line(limit, 0.559, ceiling, False) == head + (
        "; the target is 0.059 above it, within two of its standard errors: main effects alone may not reach it "
        "(more held-out masks, design.heldout, narrow the error)")
    assert _limit_line(limit, 0.6, {"pooled": None, "why": "no replicates"}, True).startswith(
        head.replace(", 71% of the noise ceiling", "") + "; the target is above it by 0.100, which only interaction "
        "terms can add")
    # a limit above the ceiling: both are estimates, and the line says by how much they disagree
    low = {"pooled": 0.4, "pooled_se": 0.04}
    assert _limit_line(limit, 0.32, low, False) == head.replace("71%", "125%") + (
        "; it lies above the noise ceiling, which no model can pass: the two estimates differ by 0.100, 2.0 of their "
        "combined standard errors, so this run pins neither down (more replicated and held-out masks narrow both: "
        "design.replicates, design.heldout); the target is within it")


def test_limit_above_ceiling_is_silent_at_or_under_the_ceiling_and_without_either():
    from dataspex.fit.faithfulness import limit_above_ceiling

    limit = {"r2": 0.5, "r2_se": 0.03}
    assert limit_above_ceiling(limit, {"pooled": 0.5, "pooled_se": 0.02}) == ""
    assert limit_above_ceiling(limit, {"pooled": 0.7, "pooled_se": 0.02}) == ""
    assert limit_above_ceiling(limit, {"pooled": None}) == ""
    assert limit_above_ceiling({"r2": None, "r2_se": None}, {"pooled": 0.3, "pooled_se": 0.02}) == ""
    # no SE on the ceiling: the limit's own SE alone (0.2 / 0.03)
    assert ", 6.7 of their combined" in limit_above_ceiling(limit, {"pooled": 0.3, "pooled_se": None})


def test_the_bound_range_moves_the_bound_one_se_and_has_no_upper_end_where_the_target_is_then_past_it():
    from dataspex.fit.planning import bound_range, curve_r2, describe_range

    m = np.array([256, 512, 768, 1024])
    truth = {"kind": "power", "intercept": -1.0, "per_doubling": -0.3, "ceiling": 0.6, "largest": 1024}
    r2 = curve_r2(truth, m)  # exactly a power law to 0.6: 0.6 - e^-1 x e^(-0.3 log2 m); 0.582 at 1,024
    target = 0.59  # at 4,150 fit masks: two doublings beyond the points

    def exact(bound):  # where the power law through these points to ``bound`` meets the target
        return needed_retrains(learning_curve(m, r2, bound), target)["n_masks"]
    assert exact(0.6) == int(np.ceil(2 ** ((np.log(0.6 - target) + 1.0) / -0.3)))  # the true figure
    assert bound_range(m, r2, target, {"r2": 0.6, "r2_se": 0.003}) == [exact(0.603), exact(0.597)]
    assert exact(0.603) < exact(0.6) < exact(0.597)
    # one SE lower the bound is at the target: no upper end
    assert bound_range(m, r2, target, {"r2": 0.6, "r2_se": 0.01}) == [exact(0.61), None]
    assert bound_range(m, r2, target, {"r2": 0.6, "r2_se": 0.0}) == [exact(0.6), exact(0.6)]
    assert describe_range([1200, 3400], 0.012) == ("1200 to 3400 with its bound one standard error, 0.012, higher "
                                                   "or lower")
    assert describe_range([1200, None], 0.03) == ("1200 with its bound one standard error, 0.030, higher; none with it "
                                                  "as much lower")
    assert describe_range(None, 0.01) == "" and describe_range([None, None], 0.01) == ""


def test_a_best_without_a_bound_beside_refused_bounded_models_says_what_its_figure_assumes():
    from dataspex.stages.plan import _stopped_at_bounds, _unbounded_best_line

    caps = {"linear": {"r2": 0.50, "r2_se": 0.03}, "quadratic": {"r2": 0.522, "r2_se": 0.03}}
    rows = {"linear": {"figure": None, "refused": "past"}, "quadratic": {"figure": None, "refused": "within"},
            "proxyspex": {"figure": 11525, "refused": None}}
    stopped = _stopped_at_bounds("proxyspex", rows, caps)
    assert stopped == caps
    assert _unbounded_best_line("proxyspex", stopped).startswith(
        "plan: proxyspex has no measured bound, so nothing checks its figure against one; linear, quadratic stop "
        "short of the target at their bounds (the highest, quadratic's, R^2 0.522 +- 0.030), and its figure assumes "
        "proxyspex passes that: on five real-text runs")
    # a bounded best, or no refused bounded model: nothing to say
    assert _stopped_at_bounds("quadratic", {**rows, "quadratic": {"figure": 9000}}, caps) == {}
    assert _stopped_at_bounds("proxyspex", {**rows, "linear": {"figure": 20000, "refused": None},
                                            "quadratic": {"figure": None, "refused": None}}, caps) == {}  # 64x past


def test_plan_rows_under_a_bound_act_on_the_power_law_to_it_and_past_it_on_nothing():
    from dataspex.fit.planning import estimator_curve
    from dataspex.stages.plan import _choose_figures

    # three estimators with one curve 0.2, 0.3, 0.4 at 256, 512, 1,024 fit masks; target 0.45
    curve = pd.DataFrame({"estimator": np.repeat(["a", "b", "c"], 3), "n_masks": [256, 512, 1024] * 3,
                          "r2_pooled": [0.2, 0.3, 0.4] * 3})
    target = 0.45

    def row(name):
        points, line = estimator_curve(curve, name)
        return {"points": points, "curve": line, **needed_retrains(line, target), "power": None}
    rows = {name: row(name) for name in "abc"}
    caps = {"a": {"r2": 0.5, "r2_se": 0.01, "kind": "main effects"},  # under it: the power law to 0.5
            "b": {"r2": 0.44, "r2_se": 0.01, "kind": "screen", "n_pairs": 7}}  # 1 SE above it: no curve reaches it
    _choose_figures(rows, caps, curve, target, None, 1024, 256)  # no ceiling measured
    a, b, c = rows["a"], rows["b"], rows["c"]
    log2 = needed_retrains(learning_curve([256, 512, 1024], [0.2, 0.3, 0.4]), target)["n_masks"]
    toward = needed_retrains(learning_curve([256, 512, 1024], [0.2, 0.3, 0.4], 0.5), target)["n_masks"]
    assert a["n_masks"] == log2 and a["figure"] == a["power"]["n_masks"] == toward > log2
    assert a["figure_from"] == "power law to its bound" and a["power"]["curve"]["toward"] == "its bound"
    # its range: the same power law to the bound one SE higher (fewer retrains) and lower (more)
    higher, lower = (needed_retrains(learning_curve([256, 512, 1024], [0.2, 0.3, 0.4], 0.5 + d), target)["n_masks"]
                     for d in (0.01, -0.01))
    assert a["figure_range"] == [higher, lower] and higher < toward < lower and "range" not in a["power"]
    assert b["figure_range"] is None and c["figure_range"] is None  # refused; no bound
    assert (a["refused"], b["refused"], c["refused"]) == (None, "within", None)
    assert b["figure"] is None and b["power"] is None and b["why"] == (
        "the target is at or above its bound R^2 0.440, within two of its standard errors (0.010): no curve reaches "
        "it, though the bound may lie higher (more held-out masks, design.heldout, narrow it)")
    assert c["figure"] == log2 and c["figure_from"] == "log2 line"  # no bound and no ceiling: the log2 line
    # no bound, a power law to the ceiling 0.7: its figure from 2n fit masks on, the log2 line's under 2n
    to_ceiling = learning_curve([256, 512, 1024], [0.2, 0.3, 0.4], 0.7)
    for n_units, source in ((512, "power law to the ceiling"), (513, "log2 line")):
        rows = {"c": {**row("c"), "power": {"curve": to_ceiling, **needed_retrains(to_ceiling, target, 0.7)}}}
        _choose_figures(rows, {}, curve, target, 0.7, 1024, n_units)
        assert rows["c"]["figure_from"] == source
        assert rows["c"]["figure"] == (rows["c"]["power"]["n_masks"] if n_units == 512 else log2)
    assert rows["c"]["power"]["n_masks"] > log2
    # more than two SEs past a bound: no figure at all
    rows = {name: row(name) for name in "ab"}
    _choose_figures(rows, {"b": {**caps["b"], "r2": 0.4}}, curve, target, None, 1024, 256)
    assert rows["b"]["figure"] is None and rows["b"]["refused"] == "past"
    assert rows["b"]["why"].startswith("the target is above what main effects and its 7 screened pairs can explain "
                                       "(R^2 0.400")
