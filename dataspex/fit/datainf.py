"""DataInf: closed-form influence of each training example on the test loss, from per-example LoRA gradients.

For a fine-tuned model with LoRA parameter blocks l = 1..L (each adapted matrix one block), per-example loss
gradients g_il (n training examples) and the mean test-loss gradient v_l, influence functions need
(G_l + lambda_l I)^-1 v_l with G_l = (1/n) sum_i g_il g_il^T (the empirical Fisher of block l; blocks are treated
as independent). DataInf (Kwon et al., 2023) swaps the inverse and the mean, and inverts each rank-one term by
Sherman-Morrison:

    (G_l + lambda_l I)^-1  ~=  (1 / (n lambda_l)) sum_i ( I - g_il g_il^T / (lambda_l + g_il^T g_il) )

so that h_l = (1 / (n lambda_l)) sum_i ( v_l - g_il (g_il^T v_l) / (lambda_l + ||g_il||^2) ) costs O(n d_l), and

    influence[k] = - sum_l h_l^T g_kl          (upweighting k changes the mean test loss at this rate).

Removing k from n examples changes the mean test loss by about -influence[k] / n, so ``influence > 0`` means keeping
k raises the test loss: a harm score. The damping is DataInf's layer-wise default,
lambda_l = mean_i (||g_il||^2 / d_l) / ``lambda_scale`` with ``lambda_scale = 10``. With one training example the
swap is exact (then the formula is the Sherman-Morrison inverse itself); :func:`exact_influence` inverts
G_l + lambda_l I directly, for checking the approximation on small blocks.
"""

from __future__ import annotations

import numpy as np

__all__ = ["damping", "datainf_influence", "exact_influence"]


def damping(train_grads: np.ndarray, lambda_scale: float = 10.0) -> float:
    """DataInf's lambda_l for one block: the mean over examples of the mean squared gradient entry, / scale."""
    return float(np.mean(np.asarray(train_grads, dtype=np.float64) ** 2) / lambda_scale)


def _blocks(train_blocks, test_blocks):
    if len(train_blocks) != len(test_blocks):
        raise ValueError(f"{len(train_blocks)} train gradient blocks but {len(test_blocks)} test blocks")
    for g, v in zip(train_blocks, test_blocks):
        g, v = np.asarray(g, dtype=np.float64), np.asarray(v, dtype=np.float64)
        if g.ndim != 2 or v.ndim != 1 or g.shape[1] != v.shape[0]:
            raise ValueError(f"a block needs train gradients (n, d) and a test gradient (d,), got {g.shape} and "
                             f"{v.shape}")
        yield g, v


def datainf_influence(train_blocks, test_blocks, lambda_scale: float = 10.0) -> np.ndarray:
    """(n,) DataInf influence of each training example on the test loss whose gradient is ``test_blocks``.

    ``train_blocks``: per block l, (n, d_l) per-example training-loss gradients; ``test_blocks``: per block, the
    (d_l,) gradient of the (mean) test loss."""
    total = None
    for g, v in _blocks(train_blocks, test_blocks):
        n, lam = len(g), damping(g, lambda_scale)
        coef = (g @ v) / (lam + np.einsum("ij,ij->i", g, g))  # (n,): g_i^T v / (lambda + ||g_i||^2)
        h = (n * v - g.T @ coef) / (n * lam)
        part = -(g @ h)
        total = part if total is None else total + part
    return total


def exact_influence(train_blocks, test_blocks, lambda_scale: float = 10.0) -> np.ndarray:
    """(n,) influence with each block's (G_l + lambda_l I)^-1 computed exactly (same G_l, same lambda_l)."""
    total = None
    for g, v in _blocks(train_blocks, test_blocks):
        lam = damping(g, lambda_scale)
        fisher = g.T @ g / len(g)
        h = np.linalg.solve(fisher + lam * np.eye(len(v)), v)
        part = -(g @ h)
        total = part if total is None else total + part
    return total
