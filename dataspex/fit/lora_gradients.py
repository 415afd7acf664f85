"""Per-example gradients of the loss with respect to a peft model's LoRA parameters (DataInf's input).

One backward pass per example (batches of one): ``torch.func.vmap`` fails inside transformers 5's attention-mask
code (see :mod:`dataspex.fit.trak.gradients`), and at the sizes curation studies use (n = 256 to 1,024 texts of
under 128 tokens, LoRA on one layer) the loop takes seconds. Returned as one (n, d_l) float64 array per LoRA
parameter tensor, in the model's parameter order.
"""

from __future__ import annotations

import numpy as np
import torch

from dataspex.train.common import Encoded, per_example_loss

__all__ = ["lora_gradients", "mean_gradient"]


def _lora_params(model) -> list[tuple[str, torch.nn.Parameter]]:
    params = [(name, p) for name, p in model.named_parameters() if p.requires_grad and "lora_" in name]
    if not params:
        raise ValueError("the model has no trainable LoRA parameters")
    return params


def lora_gradients(model, encoded: Encoded, rows=None) -> list[np.ndarray]:
    """Per-example loss gradients on the LoRA parameters: a list over parameter tensors of (len(rows), d_l)."""
    params = _lora_params(model)
    rows = range(len(encoded)) if rows is None else rows
    out = [[] for _ in params]
    for k in rows:
        batch = encoded.batch([k])
        model.zero_grad(set_to_none=True)
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        per_example_loss(logits, batch["targets"], encoded.task).sum().backward()
        for block, (_, p) in zip(out, params):
            block.append(p.grad.detach().reshape(-1).double().numpy().copy())
    model.zero_grad(set_to_none=True)
    return [np.stack(block) for block in out]


def mean_gradient(blocks: list[np.ndarray]) -> list[np.ndarray]:
    """The gradient of the mean loss over the rows: each block's row mean."""
    return [b.mean(axis=0) for b in blocks]
