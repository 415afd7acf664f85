"""The batched engine's optimiser: torch's AdamW on a (G, P) stack of adapters with a step count per adapter
(``BatchedAdamW``), and dynamic loss scaling for fp16 autocast (``_LossScale``)."""

from __future__ import annotations

import numpy as np
import torch

from dataspex.core.errors import DataspexError

BETAS = (0.9, 0.999)  # torch.optim.AdamW defaults, which naive uses
EPS = 1e-8


class BatchedAdamW:
    """torch's AdamW (single-tensor algorithm, default betas and eps) on a (G, P) stack of adapters, with a step
    count per adapter: a step updates only the adapters in ``active`` and their bias corrections."""

    def __init__(self, flat: torch.Tensor, lr: float, weight_decay: float):
        self.lr, self.wd = float(lr), float(weight_decay)
        self.m = torch.zeros_like(flat)
        self.v = torch.zeros_like(flat)
        self.steps = np.zeros(flat.shape[0])

    @torch.no_grad()
    def step(self, flat: torch.Tensor, grad: torch.Tensor, active: list[int] | None) -> None:
        """``active``: the adapters that had a batch (None: all)."""
        beta1, beta2 = BETAS
        if active is None:
            index, p, g, m, v = None, flat, grad, self.m, self.v
            self.steps += 1
            n = self.steps
        else:
            index = torch.tensor(active, device=flat.device)
            p, g, m, v = flat[index], grad[index], self.m[index], self.v[index]
            self.steps[active] += 1
            n = self.steps[active]
        # Bias corrections in float64 like torch's python scalars, then rounded once to float32.
        neg_step = torch.tensor(-self.lr / (1 - beta1 ** n), dtype=p.dtype, device=p.device)[:, None]
        bc2_sqrt = torch.tensor(np.sqrt(1 - beta2 ** n), dtype=p.dtype, device=p.device)[:, None]
        p.mul_(1 - self.lr * self.wd)
        m.lerp_(g, 1 - beta1)
        v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
        denom = (v.sqrt() / bc2_sqrt).add_(EPS)
        p.add_(m * neg_step / denom)
        if index is not None:
            flat[index], self.m[index], self.v[index] = p, m, v


class _LossScale:
    """Dynamic loss scaling for fp16 autocast: halve the scale and redo the step while gradients overflow."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.scale = 2.0 ** 16 if enabled else 1.0

    def check(self, grad) -> bool:
        if not self.enabled:
            return True
        if torch.isfinite(grad).all():
            grad.div_(self.scale)
            return True
        if self.scale < 1.0:
            raise DataspexError("fp16 training overflows at any loss scale: use train.precision=bf16 or fp32")
        self.scale /= 2
        return False
