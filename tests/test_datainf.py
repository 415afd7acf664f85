"""DataInf: the closed form against its own definition, against the exact inverse where the swap is exact, and
against exact inverse-Hessian influence on a tiny logistic model; per-example LoRA gradients on the real model."""

from __future__ import annotations

import numpy as np
import pytest

from dataspex.fit.datainf import damping, datainf_influence, exact_influence


def _blocks(rng, n, dims, T=1):
    return [rng.standard_normal((n, d)) for d in dims], [rng.standard_normal(d) for d in dims]


def test_closed_form_equals_the_dense_sherman_morrison_sum():
    rng = np.random.default_rng(0)
    train, test = _blocks(rng, 7, (3, 5))
    expected = np.zeros(7)
    for g, v in zip(train, test):
        lam, d = damping(g), len(v)
        approx_inverse = sum(np.eye(d) - np.outer(gi, gi) / (lam + gi @ gi) for gi in g) / (len(g) * lam)
        expected -= g @ (approx_inverse @ v)
    np.testing.assert_allclose(datainf_influence(train, test), expected, rtol=1e-12)
    assert damping(train[0]) == pytest.approx(np.mean(train[0] ** 2) / 10)


def test_one_training_example_makes_the_swap_exact():
    rng = np.random.default_rng(1)
    train, test = _blocks(rng, 1, (4, 2))
    np.testing.assert_allclose(datainf_influence(train, test), exact_influence(train, test), rtol=1e-12)


def test_on_a_tiny_logistic_model_datainf_and_exact_influence_agree_on_the_flipped_label():
    """Logistic regression (d = 3) fitted by Newton; one confidently wrong label. Exact influence uses the true
    Hessian of the mean loss (+ the same damping); both put the flipped example first and rank alike."""
    from scipy.stats import spearmanr

    rng = np.random.default_rng(0)
    n, w_true = 40, np.array([2.0, -1.0, 0.5])
    X, Xt = rng.standard_normal((n, 3)), rng.standard_normal((30, 3))
    y, yt = (X @ w_true > 0).astype(float), (Xt @ w_true > 0).astype(float)
    flip = int(np.argmax(np.abs(X @ w_true)))
    y[flip] = 1 - y[flip]
    sig = lambda z: 1 / (1 + np.exp(-z))  # noqa: E731
    w = np.zeros(3)
    for _ in range(50):
        p = sig(X @ w)
        w -= np.linalg.solve((X * (p * (1 - p))[:, None]).T @ X / n + 1e-2 * np.eye(3), X.T @ (p - y) / n + 1e-2 * w)
    grads = (sig(X @ w) - y)[:, None] * X
    v = ((sig(Xt @ w) - yt)[:, None] * Xt).mean(axis=0)
    p = sig(X @ w)
    hessian = (X * (p * (1 - p))[:, None]).T @ X / n + damping(grads) * np.eye(3)
    exact = -(grads @ np.linalg.solve(hessian, v))
    approx = datainf_influence([grads], [v])
    assert int(np.argmax(exact)) == flip == int(np.argmax(approx))
    assert spearmanr(exact, approx)[0] > 0.9  # measured 0.95 on this draw


def test_refuses_mismatched_blocks():
    with pytest.raises(ValueError, match="2 train gradient blocks but 1 test blocks"):
        datainf_influence([np.zeros((2, 3)), np.zeros((2, 1))], [np.zeros(3)])
    with pytest.raises(ValueError, match=r"got \(2, 3\) and \(4,\)"):
        datainf_influence([np.zeros((2, 3))], [np.zeros(4)])


@pytest.mark.slow
def test_per_example_lora_gradients_sum_to_the_batch_gradient():
    from hydra import compose, initialize_config_dir

    from dataspex.cli import config_dir
    from dataspex.core.data import load_data
    from dataspex.core.models import load_base_model, load_tokenizer
    from dataspex.fit.lora_gradients import lora_gradients
    from dataspex.train.common import encode, per_example_loss
    from dataspex.train.naive import finetune
    from tests.conftest import TINY

    with initialize_config_dir(config_dir(), version_base="1.3"):
        cfg = compose("config", overrides=list(TINY))
    data = load_data(cfg.data, cfg.model.task)
    tokenizer = load_tokenizer(cfg.model)
    base = load_base_model(cfg.model, len(data.label_names), cfg.train.seed)
    train = encode(data.train, tokenizer, data.task, cfg.model.max_length)
    model = finetune(base, cfg.lora, cfg.train, train, np.ones(data.n_train, dtype=np.uint8), 0)
    per_example = lora_gradients(model, train, rows=[0, 3, 5])
    model.zero_grad(set_to_none=True)
    batch = train.batch([0, 3, 5])
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    per_example_loss(out, batch["targets"], data.task).sum().backward()
    summed = [p.grad.reshape(-1).double().numpy() for n, p in model.named_parameters()
              if p.requires_grad and "lora_" in n]
    assert len(per_example) == len(summed) and all(b.shape[0] == 3 for b in per_example)
    for block, total in zip(per_example, summed):
        np.testing.assert_allclose(block.sum(axis=0), total, rtol=1e-4, atol=1e-6)
    assert any(np.abs(b).max() > 0 for b in per_example)
