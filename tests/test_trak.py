"""TRAK on the LoRA parameters: traker plug-ins, scores on the bundled model (CPU), calibration, the pairwise
screen and design, and the `dataspex trak` stage."""

from __future__ import annotations

import json
import os

import numpy as np
import pandas as pd
import pytest
import torch

from dataspex.core.errors import DataspexError
from dataspex.store import RunStore
from dataspex.fit.trak import fit_calibration, load_trak_scores, trak_pair_scores, trak_predict
from dataspex.fit.trak.gradients import (
    ClassificationMarginOutput,
    CompletionLogProbOutput,
    LoraGradientComputer,
    grad_parameter_names,
)
from tests.conftest import TINY, run_cli


def compose(*overrides: str):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from dataspex.cli import config_dir

    with initialize_config_dir(config_dir(), version_base="1.3"):
        return hydra_compose("config", overrides=list(overrides))


# ------------------------------------------------------------------------------------ pure functions

def test_calibration_recovers_an_affine_map_and_predicts_any_mask():
    rng = np.random.default_rng(0)
    scores = rng.normal(size=(12, 3))
    masks = (rng.random((40, 12)) < 0.5).astype(np.uint8)
    raw = trak_predict(scores, masks)
    np.testing.assert_allclose(raw, masks @ scores)
    Y = raw * np.array([-2.0, 0.5, 3.0]) + np.array([1.0, 0.0, -4.0])
    cal = fit_calibration(scores, masks, Y)
    np.testing.assert_allclose(cal.scale, [-2.0, 0.5, 3.0])
    np.testing.assert_allclose(cal.intercept, [1.0, 0.0, -4.0], atol=1e-9)
    np.testing.assert_allclose(trak_predict(scores, masks[:5], cal), Y[:5])
    with pytest.raises(DataspexError, match="do not match TRAK scores"):
        trak_predict(scores, masks[:, :5])


def test_pair_scores_follow_the_pairs_output():
    scores = np.arange(12, dtype=float).reshape(4, 3)
    pairs = pd.DataFrame({"i": [0, 1, 2], "j": [3, 2, 3], "output": ["test_2", "mean", 1]})
    cols = trak_pair_scores(scores, pairs)
    assert cols["trak_i"].tolist() == [2.0, 4.0, 7.0]
    assert cols["trak_j"].tolist() == [11.0, 7.0, 10.0]
    no_output = trak_pair_scores(scores, pairs[["i", "j"]])
    assert no_output["trak_i"].tolist() == [1.0, 4.0, 7.0]


# --------------------------------------------------------------------- traker plug-ins on real models

def _peft_model(cfg, n_labels):
    from dataspex.core.models import load_base_model
    from dataspex.train.naive import build_peft_model

    return build_peft_model(load_base_model(cfg.model, n_labels, 0), cfg.lora, seed=3)


@pytest.mark.parametrize("task", ["classification", "causal_lm"])
def test_gradient_computer_matches_autograd_on_lora_parameters_only(task):
    """The iterative path: per example, padding cut, the output function called as (model, None, None, *batch);
    gradients w.r.t. the LoRA parameters only (traker's own IterativeGradientComputer ignores grad_wrt)."""
    from dataspex.core.data import Split
    from dataspex.core.models import load_tokenizer
    from dataspex.train.common import encode

    if task == "classification":
        cfg = compose()
        model, output = _peft_model(cfg, 2), ClassificationMarginOutput()
        split = Split(["the film was good", "a very long and rather dull story about nothing"], np.array([1, 0]))
    else:
        cfg = compose("model=tiny_gpt2", "lora.target_modules=[c_attn]")
        model, output = _peft_model(cfg, None), CompletionLogProbOutput()
        split = Split(["2 plus 2 is", "the capital of the country far away is"], completions=["4", "paris"])
    with torch.no_grad():  # non-zero B so that the A matrices get gradients too
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    enc = encode(split, load_tokenizer(cfg.model), task, 64)
    b = enc.batch([0, 1])
    batch = (b["input_ids"], b["attention_mask"], b["targets"])
    names = grad_parameter_names(model, "lora")
    assert names and all("lora_" in n for n in names)
    named = dict(model.named_parameters())
    dim = sum(named[n].numel() for n in names)
    computer = LoraGradientComputer(model, output, dim, torch.float32, "cpu", grad_wrt=names)
    grads = computer.compute_per_sample_grad(batch)
    assert grads.shape == (2, dim) and torch.all(grads.abs().sum(dim=1) > 0)
    for k in range(2):  # each example alone, unpadded, differentiated directly
        one = enc.batch([k])
        out = output.get_output(model, None, None, one["input_ids"], one["attention_mask"], one["targets"])
        direct = torch.cat([g.reshape(-1) for g in torch.autograd.grad(out[0], [named[n] for n in names])])
        torch.testing.assert_close(grads[k], direct, rtol=1e-4, atol=1e-6)
    q = computer.compute_loss_grad(batch)
    assert q.shape == (2, 1) and torch.all((q > 0) & (q <= 1))
    if task == "classification":  # head included only with params=trainable
        assert len(grad_parameter_names(model, "trainable")) > len(names)


def test_projector_choice_on_cpu():
    from trak.projectors import BasicProjector

    from dataspex.fit.trak.gradients import _projector

    cfg = compose()
    projector, kind = _projector(cfg.trak, 1000, torch.device("cpu"), torch.float32)
    assert kind == "basic" and isinstance(projector, BasicProjector)  # (a one-block-safe subclass)
    cfg.trak.projector = "cuda"
    with pytest.raises(DataspexError, match="needs a CUDA device"):
        _projector(cfg.trak, 1000, torch.device("cpu"), torch.float32)


def test_causal_lm_scores(tmp_path):
    from dataspex.fit.trak.gradients import compute_trak_scores

    rows = ["prompt,completion"] + [f"{a} plus {a} is,{2 * a}" for a in range(1, 6)]
    (tmp_path / "train.csv").write_text("\n".join(rows) + "\n")
    (tmp_path / "test.csv").write_text("prompt,completion\n7 plus 7 is,14\n8 plus 8 is,16\n")
    cfg = compose("model=tiny_gpt2", "lora.target_modules=[c_attn]", "data=files",
                  f"data.train_file={tmp_path / 'train.csv'}", f"data.test_file={tmp_path / 'test.csv'}",
                  "train.epochs=1", "trak.proj_dim=16", "trak.n_models=2")
    scores, meta = compute_trak_scores(cfg, return_meta=True)
    assert scores.shape == (5, 2) and np.all(np.isfinite(scores)) and np.any(scores != 0)
    assert meta["model_output"] == "completion_logprob" and meta["projector_used"] == "basic"
    assert meta["settings"]["n_models"] == 2  # an ensemble of two full-data models (own seeds), averaged


# ------------------------------------------------------------------- a tiny run, end to end in process

@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A trained tiny run (in process: the stages are the CLI's functions)."""
    from dataspex.stages.design import stage_design
    from dataspex.stages.fit import stage_fit
    from dataspex.stages.train import stage_train

    run_dir = str(tmp_path_factory.mktemp("trak") / "run")
    cfg = compose(f"run_dir={run_dir}", *TINY, "design.heldout=3", "~estimators.proxyspex", "trak.proj_dim=32")
    stage_design(cfg)
    stage_train(cfg)
    stage_fit(cfg)
    return run_dir, cfg


@pytest.mark.slow
def test_pairwise_design_is_refused_without_a_screen(tmp_path):
    from dataspex.stages.design import stage_design

    cfg = compose(f"run_dir={tmp_path / 'fresh'}", *TINY, "design=pairwise", "design.candidates=3")
    with pytest.raises(DataspexError, match="needs a first-order screen.*dataspex trak"):
        stage_design(cfg)


@pytest.mark.slow
def test_trak_stage_scores_screens_and_feeds_the_pairwise_design(tiny_run, caplog):
    from dataspex.stages.design import pairwise_screen
    from dataspex.stages.design import stage_design
    from dataspex.stages.fit import stage_fit
    from dataspex.stages.train import stage_train
    from dataspex.stages.trak import stage_trak

    run_dir, cfg = tiny_run
    store = RunStore(run_dir)
    pw_cfg = compose(f"run_dir={run_dir}", *TINY, "design=pairwise", "design.candidates=2", "design.m=0")
    n_pw = 1 + 2 + 1
    assert load_trak_scores(store) is None
    assert pairwise_screen(pw_cfg.design, 10, store)[1] == "linear"  # no TRAK yet: the linear datamodel screens

    scores = stage_trak(cfg)
    assert scores.shape == (10, 4) and np.all(np.isfinite(scores)) and np.any(scores != 0)
    loaded, meta = load_trak_scores(store, with_meta=True)
    np.testing.assert_array_equal(loaded, scores)
    assert meta["settings"]["proj_dim"] == 32 and meta["n_params"] > 0
    with open(store.path("trak", "faithfulness.json")) as fh:
        table = json.load(fh)
    assert table["available"] and table["n_heldout_masks"] == 3
    loss = table["outputs"]["loss"]
    assert {"trak", "linear"} <= set(loss) and set(table["outputs"]) == {"loss", "margin", "error"}
    assert len(loss["trak"]["lds_per_output"]) == 5  # 4 test examples + their mean, as `dataspex fit` models
    with caplog.at_level("INFO", logger="dataspex"):
        again = stage_trak(cfg)  # same settings: reused, not recomputed
    assert "reusing" in caplog.text
    np.testing.assert_array_equal(again, scores)

    # pairwise on the existing run: TRAK screens, masks extend the design under role "pairwise"
    assert pairwise_screen(pw_cfg.design, 10, store)[1] == "trak"
    before = store.load_design()
    with caplog.at_level("WARNING", logger="dataspex"):
        stage_design(pw_cfg)
    assert "over the budget design.m=0" in caplog.text
    design = store.load_design()
    pw = design.roles == "pairwise"
    assert pw.sum() == n_pw and np.array_equal(design.masks[~pw], before.masks)
    assert design.meta["pairwise"]["screen"] == "trak" and len(design.meta["pairwise"]["candidates"]) == 2
    stage_design(pw_cfg)  # idempotent
    assert len(store.load_design()) == len(design)
    stage_design(cfg)  # the run's own (random) design is still recognised: no refusal
    stage_train(cfg)
    faith = stage_fit(cfg)
    assert faith["pairwise"]["n_fit_masks"] == n_pw and faith["pairwise"]["r2_mean_over_outputs"] is None
    from dataspex.estimators import InteractionResult

    result = InteractionResult.load(store.path("fit", "pairwise.npz"))
    cand = design.meta["pairwise"]["candidates"]
    assert np.count_nonzero(result.pair_scores("full", output="mean")[np.ix_(cand, cand)]) > 0


@pytest.mark.slow
def test_trak_cli_stage(tiny_run):
    """`dataspex trak` through the real CLI (the config group, the stage registry): with the settings the
    scores were made with it reuses them and rescores them on the held-out masks."""
    run_dir, _ = tiny_run
    store = RunStore(run_dir)
    if load_trak_scores(store) is None:  # run alone: make the scores first
        from dataspex.stages.trak import stage_trak

        stage_trak(tiny_run[1])
    # the CLI needs overrides.json for the tiny data; the in-process fixture wrote none
    with open(os.path.join(run_dir, "overrides.json"), "w") as fh:
        json.dump([a for a in TINY if not a.startswith("progress")] + ["design.heldout=3", "trak.proj_dim=32"], fh)
    os.unlink(store.path("trak", "faithfulness.json"))
    proc = run_cli("trak", f"run_dir={run_dir}")
    assert "trak: reusing" in proc.stderr and "held-out loss: trak LDS" in proc.stderr
    with open(store.path("trak", "faithfulness.json")) as fh:
        assert json.load(fh)["available"]
