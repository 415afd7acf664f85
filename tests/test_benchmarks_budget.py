"""benchmarks/budget.py and benchmarks/null_pairs.py: the pieces that turn a run into budget curves and null studies."""

from __future__ import annotations

import numpy as np
import pytest

from dataspex.fit.faithfulness import pooled_ceiling
from tests.benchmark_scripts import BENCH, load_benchmark

budget, null_pairs = load_benchmark("budget"), load_benchmark("null_pairs")


def test_pooled_ceiling_is_the_shared_share_of_variance():
    """Two replicates = a signal (variance 3 per column) plus independent noise (variance 1): the ceiling is 3/4."""
    rng = np.random.default_rng(0)
    signal = np.sqrt(3.0) * rng.standard_normal((20000, 3))
    a = signal + rng.standard_normal(signal.shape)
    b = signal + rng.standard_normal(signal.shape)
    assert abs(pooled_ceiling(a, b) - 0.75) < 0.01
    assert pooled_ceiling(a, a) == 1.0


def test_first_order_pairs_take_the_two_strongest_at_each_test_example():
    effects = np.array([[0.9, -0.1], [0.8, -0.9], [0.1, -0.8], [-0.5, 0.2]])  # (n=4, T=2)
    assert budget.first_order_pairs(effects, "harmful", 5) == [(0, 1), (0, 3)]  # sums 1.7, then -0.1 + 0.2
    assert budget.first_order_pairs(effects, "redundant", 5) == [(1, 2), (2, 3)]
    assert budget.first_order_pairs(effects, "harmful", 1) == [(0, 1)]
    planted = [{"kind": "harmful", "i": 0, "j": 1}, {"kind": "harmful", "i": 2, "j": 3},
               {"kind": "redundant", "i": 1, "j": 2}]
    assert budget.recall([(1, 0)], planted, "harmful") == 0.5  # order within a pair does not matter
    assert budget.recall([(1, 2)], planted, "redundant") == 1.0
    assert budget.recall([(1, 2)], planted, "other") is None


def test_null_outputs_keep_the_values_and_break_the_link_to_the_mask():
    class Additive:
        def predict(self, masks):
            return masks[:, :2].astype(float) @ np.array([[1.0], [2.0]])

    rng = np.random.default_rng(0)
    masks = rng.integers(0, 2, size=(50, 4)).astype(np.uint8)
    Y = rng.normal(size=(50, 1))
    permuted = null_pairs.null_outputs("permuted", Y, masks, np.random.default_rng(1))
    assert sorted(permuted[:, 0]) == sorted(Y[:, 0]) and not np.array_equal(permuted, Y)
    additive = null_pairs.null_outputs("additive", Y, masks, np.random.default_rng(1), Additive())
    residual = additive - Additive().predict(masks)
    assert np.allclose(sorted(residual[:, 0]), sorted((Y - Additive().predict(masks))[:, 0]))


def test_replicate_keeps_the_runs_head_and_varies_only_the_mask_seeds(tmp_path):
    """The ceiling's replicate must differ from the run only in each mask's seed: the base model (its new
    classification head included) comes from the run's seed, as every mask of the run does. Real training of the
    bundled model on the tiny demo set, against the engine called directly."""
    import copy

    from hydra import compose, initialize_config_dir

    from dataspex.cli import config_dir
    from dataspex.train import engine
    from tests.conftest import TINY
    from train_throughput import setup

    with initialize_config_dir(config_dir(), version_base="1.3"):
        cfg = compose("config", overrides=list(TINY))
    base, train, test = setup(cfg)
    masks = (np.random.default_rng(0).random((3, len(train))) < 0.5).astype(np.uint8)
    ids = np.array([3, 4, 5])
    rep = budget.replicate(cfg, ids, masks, 1, str(tmp_path / "replicate.npz"), lambda msg: None)
    assert int(cfg.train.seed) == 0  # the caller's config is left alone

    def losses(base, train_cfg):
        out = {int(m): loss for m, loss, *_ in engine.train_masks(base, cfg.lora, train_cfg, train, test, masks, ids)}
        return np.stack([out[int(m)] for m in ids])

    other_seeds = copy.deepcopy(cfg)
    other_seeds.train.seed = 1
    np.testing.assert_allclose(rep, losses(base, other_seeds.train), rtol=1e-5, atol=1e-6)
    other_head, _, _ = setup(other_seeds)
    assert not np.allclose(rep, losses(other_head, other_seeds.train), atol=1e-4)
    # the cache answers the same question without training; it records the head's seed
    with np.load(tmp_path / "replicate.npz", allow_pickle=False) as z:
        assert int(z["head_seed"]) == 0 and int(z["seed"]) == 1
    np.testing.assert_array_equal(budget.replicate(cfg, ids, masks, 1, str(tmp_path / "replicate.npz"), None), rep)


def test_outputs_margin_model_predicts_the_loss_through_the_link():
    """benchmarks/outputs.py: margins exactly linear in the mask -> the linear datamodel on the margin is exact
    (R^2 1 on the margin and, through softplus(-margin), on the loss), while on the saturating loss it is not."""
    from omegaconf import OmegaConf

    outputs = load_benchmark("outputs")
    rng = np.random.default_rng(0)
    X = rng.integers(0, 2, (400, 8)).astype(np.uint8)
    weights = rng.normal(0, 2.0, (8, 3))
    margin = (X - 0.5) @ weights + 0.5
    loss = np.logaddexp(0.0, -margin)
    cfg = OmegaConf.load(BENCH.parent / "conf" / "estimator" / "linear.yaml")
    got = outputs.scores(cfg, X[:300], loss[:300], margin[:300], X[300:], loss[300:], margin[300:])
    assert got["margin"] > 0.999 and got["loss_via_margin"] > 0.999
    assert got["loss"] < 0.99


def test_outputs_share_se_is_zero_for_a_perfect_model_and_shrinks_as_one_over_root_m():
    """benchmarks/outputs.py: the bootstrap SE of R^2 / ceiling. A model equal to noiseless outputs whose replicates
    agree scores share 1 in every resample (SE 0); on a signal (variance 3) plus seed noise (variance 1) with half
    the held-out masks replicated, four times the masks halve the SE (ratio within 0.35-0.65), and too few
    replicates are refused."""
    outputs = load_benchmark("outputs")
    rng = np.random.default_rng(0)
    Y = rng.standard_normal((40, 3))
    replicate_of = np.where(np.arange(40) % 2 == 0, np.arange(40), -1)
    assert outputs.share_se(Y, Y, replicate_of, Y, n_boot=50) == 0.0

    def se(M):
        signal = np.sqrt(3.0) * rng.standard_normal((M, 4))
        held_out, again = signal + rng.standard_normal((M, 4)), signal + rng.standard_normal((M, 4))
        half = np.where(np.arange(M) < M // 2, np.arange(M), -1)
        return outputs.share_se(held_out, signal, half, again, n_boot=400, seed=1)
    assert 0.35 < se(1600) / se(400) < 0.65
    with pytest.raises(ValueError, match="7 held-out masks have a seed replicate; 8 or more needed"):
        outputs.share_se(Y, Y, np.where(np.arange(40) < 7, np.arange(40), -1), Y)


def test_estimator_config_takes_the_runs_the_packages_and_parameters():
    import pytest
    from omegaconf import OmegaConf

    cfg = OmegaConf.create({"estimators": {"linear": {"_target_": "dataspex.estimators.LinearDatamodel", "cv": 3}}})
    assert budget.estimator_config(cfg, "linear") == {"_target_": "dataspex.estimators.LinearDatamodel", "cv": 3}
    quad = budget.estimator_config(cfg, "quadratic:screen=main:n_top=20")  # not in the run: conf/estimator/
    assert quad == {"_target_": "dataspex.estimators.QuadraticProxy", "screen": "main", "n_top": 20}
    assert cfg.estimators.linear.cv == 3 and budget.estimator_config(cfg, "linear:cv=5").cv == 5
    assert cfg.estimators.linear.cv == 3  # the run's config is not changed
    with pytest.raises(SystemExit, match="'nosuch' is neither in the run's config nor in conf/estimator/"):
        budget.estimator_config(cfg, "nosuch")
    with pytest.raises(SystemExit, match="parameters are key=value, got 'screen'"):
        budget.estimator_config(cfg, "quadratic:screen")


def test_gap_pieces_against_brute_force():
    gap = load_benchmark("gap")
    rng = np.random.default_rng(3)
    A, B = rng.integers(0, 2, size=(5, 7)), rng.integers(0, 2, size=(4, 7))
    hamming = (A[:, None, :] != B[None, :, :]).sum(-1)
    np.testing.assert_allclose(gap.diffusion_kernel(A, B, 0.3), np.exp(-0.3 * hamming))
    Y, P = rng.normal(size=(30, 2)), rng.normal(size=(30, 2))
    ref = [1 - np.sum((Y[:, t] - P[:, t]) ** 2) / np.sum((Y[:, t] - Y[:, t].mean()) ** 2) for t in range(2)]
    from dataspex.core.metrics import faithfulness_r2  # what gap.py scores each test example with

    np.testing.assert_allclose(faithfulness_r2(Y, P, multioutput="raw_values"), ref)


def test_more_fit_masks_extend_a_run_only_with_runs_that_trained_the_same_things():
    """Another run's fit masks follow the run's own, in order, when both trained the same things (fingerprints
    equal but for the recorded-only data summary) on random designs of the same p; any other run is refused."""
    from types import SimpleNamespace

    def run(name, fingerprint, p=0.5, kind="random", rows=2):
        store = SimpleNamespace(run_dir=f"/runs/{name}", stored_fingerprint=lambda: fingerprint)
        design = SimpleNamespace(meta={"kind": kind, "p": p})
        start = {"a": 0, "b": 10, "c": 20, "d": 30}[name]
        X = np.arange(start, start + rows * 3).reshape(rows, 3) % 2
        return {"store": store, "design": design, "X_fit": X, "Y_fit": np.full((rows, 2), float(start))}

    same = {"model": "m", "data": "h", "train": {"epochs": 12}}
    a = run("a", dict(same, data_summary={"rows": 1}))
    b = run("b", dict(same, data_summary={"rows": 2}), rows=3)
    X, Y = budget.more_fit_masks(a, [b])
    assert np.array_equal(X, np.vstack([a["X_fit"], b["X_fit"]])) and Y[:, 0].tolist() == [0, 0, 10, 10, 10]
    with pytest.raises(SystemExit, match=r"/runs/c trained other things than /runs/a \(fingerprint differs in: "
                                         r"train\)"):
        budget.more_fit_masks(a, [b, run("c", dict(same, train={"epochs": 6}))])
    with pytest.raises(SystemExit, match="only random designs of the same kept fraction extend each other"):
        budget.more_fit_masks(a, [run("d", same, p=0.25)])


def test_epoch_drops_take_medians_over_the_masks_that_trained_each_epoch():
    epoch_drops = load_benchmark("epoch_drops")
    records = np.array([[0.7, 0.5, 0.2, 0.1],
                        [0.7, 0.6, 0.4, np.nan],  # stopped after epoch 2
                        [0.7, 0.4, 0.3, 0.25]])
    rows = epoch_drops.epoch_table(records)
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    assert [r["loss"] for r in rows] == pytest.approx([0.5, 0.3, 0.175])
    assert rows[0]["drop"] is None and rows[1]["drop"] == pytest.approx(0.2)  # drops 0.3, 0.2, 0.1
    assert rows[2]["drop"] == pytest.approx(0.075)  # 0.1 and 0.05; the stopped mask has none


def test_pair_cells_average_the_test_output_by_how_many_of_the_pair_are_kept():
    masks = np.array([[0, 0, 1], [0, 0, 0], [1, 0, 1], [0, 1, 1], [1, 1, 0], [1, 1, 1]])
    Y = np.array([[0.0, 9.0], [2.0, 9.0], [4.0, 9.0], [6.0, 9.0], [8.0, 9.0], [10.0, 9.0]])  # (m=6, T=2)
    planted = [{"kind": "harmful", "i": 0, "j": 1, "test": 0}]
    (row,) = budget.pair_cells(masks, Y, planted)
    assert row == {"kind": "harmful", "i": 0, "j": 1, "test": 0, "neither": 1.0, "one": 5.0, "both": 9.0,
                   "n_neither": 2}


def test_calibration_counts_null_p_values_and_clusters_their_error_by_study():
    got = null_pairs.calibration([[0.01, 0.5], [0.04, 0.2, 0.9]])
    assert got["p_values"] == 5
    assert got["p<=0.005"] == 0.0 and got["p<=0.01"] == pytest.approx(0.2) and got["p<=0.05"] == pytest.approx(0.4)
    assert got["p<=0.1"] == pytest.approx(0.4)
    # hits (1, 1) of sizes (2, 3) around the share 0.4: deviations +-0.2, sqrt(2 * 0.08) / 5
    assert got["se(p<=0.05)"] == pytest.approx(0.08)
    empty = null_pairs.calibration([[]])
    assert empty["p_values"] == 0 and np.isnan(empty["p<=0.05"]) and np.isnan(empty["se(p<=0.05)"])


def test_one_study_gives_every_pair_test_the_same_ranked_pairs():
    """A study read by two tests at once equals the study read by each alone (the tests pair up); one real pair
    (examples 0 and 1, at both test examples) so that pairs are listed."""
    from omegaconf import OmegaConf

    rng = np.random.default_rng(3)
    masks = (rng.random((160, 8)) < 0.5).astype(np.uint8)
    Y = 0.3 * rng.normal(size=(160, 2)) + masks[:, :2] @ np.ones((2, 2)) + 2.0 * masks[:, :1] * masks[:, 1:2]
    est = OmegaConf.create({"_target_": "dataspex.estimators.QuadraticProxy"})
    lin = OmegaConf.create({"_target_": "dataspex.estimators.LinearDatamodel"})
    args = (masks[:120], Y[:120], masks[120:], Y[120:], est, lin, 3, 0.1)
    both = null_pairs.one_study(*args, ("pooled", "welch"))
    assert set(both) == {"pooled", "welch"} and both["pooled"]["listed"] == both["welch"]["listed"] > 0
    assert both["pooled"] == null_pairs.one_study(*args, ("pooled",))["pooled"]
    assert both["welch"] == null_pairs.one_study(*args, ("welch",))["welch"]
    assert len(both["pooled"]["p_values"]) == both["pooled"]["listed"]


def test_logits_caught_from_the_engine_give_its_losses_and_margins_and_the_runner_is_restored():
    """benchmarks/logits.py: the logits caught pass by pass (3 adapters per pass, 5 masks: one short pass) give the
    engine's own losses and margins for every mask, in id order; the runner's margin function is put back. Real
    training of the bundled model on the tiny demo set."""
    from hydra import compose, initialize_config_dir

    from dataspex.cli import config_dir
    from dataspex.train import engine, runners
    from tests.conftest import TINY
    from train_throughput import setup

    logits_bench = load_benchmark("logits")
    with initialize_config_dir(config_dir(), version_base="1.3"):
        cfg = compose("config", overrides=[*TINY, "train.adapters_per_pass=3"])
    base, train, test = setup(cfg)
    masks = (np.random.default_rng(1).random((5, len(train))) < 0.5).astype(np.uint8)
    masks[2, :] = 1  # kept counts differ, so passes regroup the masks out of input order
    ids = [7, 3, 9, 4, 8]
    before = runners.margins
    losses, logits, gold = logits_bench.retrain_logits(cfg, masks, ids, lambda msg: None)
    assert runners.margins is before
    out = {int(m): (loss, marg) for m, loss, marg, _ in engine.train_masks(base, cfg.lora, cfg.train, train, test,
                                                                          masks, ids)}
    want_loss = np.stack([out[i][0] for i in ids])
    want_margin = np.stack([out[i][1] for i in ids])
    assert logits.shape[:2] == (5, len(test)) and logits.shape[2] >= 2 and gold.shape == (len(test),)
    np.testing.assert_allclose(losses, want_loss, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(logits_bench.loss_from_logits(logits, gold), want_loss, rtol=1e-5, atol=1e-5)
    others = np.where(np.arange(logits.shape[2])[None, None, :] == gold[None, :, None], -np.inf, logits)
    gold_logit = np.take_along_axis(logits, np.broadcast_to(gold[None, :, None], (5, len(test), 1)), 2)[..., 0]
    np.testing.assert_allclose(gold_logit - np.logaddexp.reduce(others, axis=2), want_margin, rtol=1e-5, atol=1e-5)


def test_loss_from_logits_is_the_cross_entropy():
    """benchmarks/logits.py: logsumexp - gold logit, against a direct softmax on hand-sized numbers, and stable
    for large logits."""
    logits_bench = load_benchmark("logits")
    logits = np.array([[[1.0, 2.0, 0.5], [0.0, 0.0, 3.0]], [[1000.0, 999.0, 0.0], [-2.0, 1.0, 1.0]]])  # (2, 2, 3)
    gold = np.array([1, 0])
    got = logits_bench.loss_from_logits(logits, gold)
    p = np.exp(logits[0] - logits[0].max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    np.testing.assert_allclose(got[0], -np.log(p[[0, 1], gold]))
    np.testing.assert_allclose(got[1], [np.log1p(np.exp(1.0)), np.log(np.exp(-2.0) + 2 * np.exp(1.0)) + 2.0])
