"""The reference engine: one fresh peft model per mask, trained one after another.

Slow but obviously right; the batched engine is tested against it.
"""

from __future__ import annotations

import copy
import warnings

import numpy as np
import torch

from dataspex.core.models import lora_config
from dataspex.train.common import (Encoded, check_finite, check_mask, epoch_ended, lora_init, loss_record, margins,
                                   mask_schedule, per_example_loss, plateau_tol, plateaued)


def lora_modules(peft_model) -> list:
    """The peft LoRA layers in module order (the order lora_init draws for)."""
    from peft.tuners.lora import LoraLayer  # lazy: peft (with transformers) takes seconds to import

    return [m for _, m in peft_model.named_modules() if isinstance(m, LoraLayer)]


def build_peft_model(base, lora_cfg, seed: int):
    """A fresh peft model on a copy of ``base`` with LoRA A drawn by ``lora_init(seed)``."""
    from peft import get_peft_model  # lazy: peft (with transformers) takes seconds to import

    with warnings.catch_warnings():  # peft calls a transformers API that transformers 5 deprecates
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        model = get_peft_model(copy.deepcopy(base), lora_config(lora_cfg, base))
    layers = lora_modules(model)
    inits = lora_init([tuple(m.lora_A["default"].weight.shape) for m in layers], seed)
    with torch.no_grad():
        for m, a in zip(layers, inits):
            m.lora_A["default"].weight.copy_(a)
            m.lora_B["default"].weight.zero_()
    model.eval()  # dropout off: see training.common
    return model


def finetune(base, lora_cfg, train_cfg, train: Encoded, mask: np.ndarray, mask_id: int):
    """Fine-tune one adapter on the examples kept by ``mask``; returns the peft model."""
    return finetune_with_losses(base, lora_cfg, train_cfg, train, mask, mask_id)[0]


def finetune_with_losses(base, lora_cfg, train_cfg, train: Encoded, mask: np.ndarray, mask_id: int):
    """:func:`finetune`, also returning the training-loss record (1 + epochs,) float64 (``common.loss_record``)."""
    kept = check_mask(mask, len(train), mask_id)
    seed, steps = mask_schedule(kept, train_cfg, mask_id, len(train))
    model = build_peft_model(base, lora_cfg, seed)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=train_cfg.lr, weight_decay=train_cfg.weight_decay)
    columns, divisors = loss_record(steps, int(train_cfg.epochs))
    tol = plateau_tol(train_cfg)
    sums = np.zeros(len(divisors))
    for t, index in enumerate(steps):
        batch = train.batch(index)
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        per_example = per_example_loss(logits, batch["targets"], train.task)
        loss = per_example.mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        summed = float(per_example.detach().double().sum())
        sums[columns[t]] += summed
        if t == 0:
            sums[0] = summed
        epoch = epoch_ended(columns, t)
        if epoch and plateaued(sums / divisors, epoch, tol):
            sums[epoch + 1:] = np.nan  # the epochs it skips
            break
    if not steps:
        sums[0] = np.nan  # never trained: no start
    return model, sums / divisors


@torch.no_grad()
def evaluate(model, test: Encoded, batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Per-test-example (loss, margin), each (n_test,) float64."""
    losses, margs = [], []
    for start in range(0, len(test), batch_size):
        batch = test.batch(range(start, min(start + batch_size, len(test))))
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        losses.append(per_example_loss(logits, batch["targets"], test.task))
        margs.append(margins(logits, batch["targets"], test.task))
    return torch.cat(losses).double().numpy(), torch.cat(margs).double().numpy()


def train_masks(base, lora_cfg, train_cfg, train: Encoded, test: Encoded, masks: np.ndarray, mask_ids):
    """Yield ``(mask_id, losses, margins, train_losses)`` for each mask, one peft model at a time, in input
    order (losses and margins (n_test,) float64; train_losses (1 + epochs,) float64, see ``common.loss_record``)."""
    for mask, mask_id in zip(masks, mask_ids):
        model, train_losses = finetune_with_losses(base, lora_cfg, train_cfg, train, mask, int(mask_id))
        losses, margs = evaluate(model, test)
        check_finite(losses, mask_id)
        yield int(mask_id), losses, margs, train_losses
