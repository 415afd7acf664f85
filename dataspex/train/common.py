"""Pieces shared by every training engine: encoding, batching, seeds, per-example losses, LoRA init.

Seed policy (documented in the README): the head of the base model is initialised once from ``train.seed``,
so every mask starts from the same head. Each mask then gets its own seed derived from
``(train.seed, mask_id)`` with ``train.seed_policy=per_mask`` (the default), or ``train.seed`` itself with
``seed_policy=shared`` (common random numbers). That seed draws the LoRA A matrices and the epoch shuffles,
so a mask's result depends only on the mask, its id and the config - never on which worker ran it or when.
Under ``shared`` each epoch's order is also one permutation of the whole training set restricted to the
mask's examples (``epoch_batches`` with ``n_train``), so two masks that differ in a few examples see the rest
in the same order and train alike: their difference is the examples', not the shuffle's.
``seed_policy=per_block`` (with ``train.seed_block=B``; ``dataspex curate`` uses it) sits between the two: the
masks whose ids share ``mask_id // B`` share one seed, derived from ``(train.seed, mask_id // B)`` as
``per_mask`` derives it, and one data order as under ``shared``: common random numbers inside a block of ids,
independent seeds across blocks (each block one replicate of a paired comparison).
Dropout is off during training (the model stays in eval mode), so a run is deterministic on a given machine.

Training losses: every engine also reports each mask's training-loss record (1 + epochs,) float64 (see
``loss_record``): where training started and how each epoch went. A last epoch's loss that is not below the
start means training diverged or did not converge (:mod:`dataspex.store.health` flags it).

Plateau stop: with ``train.plateau_tol`` set (nats), a mask's training ends after the first epoch, from the
second on, whose mean training loss fell by less than that from the epoch before (``plateaued``); ``epochs`` is
then the most a mask trains, and the epochs it skipped are NaN in its record. Every engine decides by the same
record, after the epoch's last update.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from dataspex.core.errors import DataspexError

IGNORE = -100  # label value for tokens that carry no loss (prompt and padding in causal LM)


@dataclass
class Encoded:
    """A tokenised split, tokenised once per run. Sequences are unpadded; batches pad to their own maximum.

    classification: ``targets`` (n,) label ids. causal LM: ``token_targets[k]`` is a (len_k,) tensor holding
    the next-token id at completion positions and IGNORE elsewhere.
    """

    input_ids: list[torch.Tensor]
    task: str
    targets: torch.Tensor | None = None
    token_targets: list[torch.Tensor] | None = None
    pad_id: int = 0

    def __len__(self) -> int:
        return len(self.input_ids)

    def batch(self, index) -> dict:
        """Pad the examples at ``index`` (sequence of ints) into one batch."""
        seqs = [self.input_ids[k] for k in index]
        width = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), width), self.pad_id, dtype=torch.long)
        attention = torch.zeros((len(seqs), width), dtype=torch.long)
        for row, s in enumerate(seqs):
            ids[row, : len(s)] = s
            attention[row, : len(s)] = 1
        out = {"input_ids": ids, "attention_mask": attention}
        if self.task == "classification":
            out["targets"] = self.targets[list(index)]
        else:
            tt = torch.full((len(seqs), width), IGNORE, dtype=torch.long)
            for row, k in enumerate(index):
                tt[row, : len(self.token_targets[k])] = self.token_targets[k]
            out["targets"] = tt
        return out


def encode(split, tokenizer, task: str, max_length: int) -> Encoded:
    """Tokenise a split once. Causal LM: prompt + completion (+ EOS when the tokenizer has one), loss on the
    completion tokens only."""
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    if task == "classification":
        ids = tokenizer(list(split.texts), truncation=True, max_length=max_length)["input_ids"]
        return Encoded([torch.tensor(x, dtype=torch.long) for x in ids], task,
                       targets=torch.as_tensor(split.labels, dtype=torch.long), pad_id=pad_id)
    seqs, token_targets = [], []
    for prompt, completion in zip(split.texts, split.completions):
        p = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        c = tokenizer(completion, add_special_tokens=False)["input_ids"]
        if tokenizer.eos_token_id is not None:
            c = c + [tokenizer.eos_token_id]
        if not c:
            raise DataspexError(f"completion {completion!r} has no tokens: causal-LM test losses need a completion")
        full = (p + c)[-max_length:]
        n_c = min(len(c), len(full) - 1)  # the first token has no prediction, so keep at least one prompt token
        tgt = [IGNORE] * len(full)
        for pos in range(len(full) - n_c - 1, len(full) - 1):
            tgt[pos] = full[pos + 1]  # position pos predicts the next token
        seqs.append(torch.tensor(full, dtype=torch.long))
        token_targets.append(torch.tensor(tgt, dtype=torch.long))
    return Encoded(seqs, task, token_targets=token_targets, pad_id=pad_id)


def per_example_loss(logits: torch.Tensor, targets: torch.Tensor, task: str) -> torch.Tensor:
    """Loss of each example in nats: cross-entropy of the gold label, or the summed NLL of the completion.

    logits: (B, C) or (B, L, V); targets: (B,) or (B, L). Returns (B,)."""
    if task == "classification":
        return torch.nn.functional.cross_entropy(logits.float(), targets, reduction="none")
    nll = torch.nn.functional.cross_entropy(logits.float().transpose(1, 2), targets, ignore_index=IGNORE,
                                            reduction="none")
    return nll.sum(dim=1)


def margins(logits: torch.Tensor, targets: torch.Tensor, task: str) -> torch.Tensor:
    """Classification: gold logit minus logsumexp of the others (the datamodels/TRAK output).
    Causal LM: the completion's log-probability (minus its loss). Returns (B,)."""
    if task != "classification":
        return -per_example_loss(logits, targets, task)
    logits = logits.float()
    gold = logits.gather(1, targets[:, None])[:, 0]
    others = logits.scatter(1, targets[:, None], float("-inf"))
    return gold - torch.logsumexp(others, dim=1)


SEED_POLICIES = ("per_mask", "shared", "per_block")
_CRN_POLICIES = ("shared", "per_block")  # one global data order restricted to each mask (common random numbers)


def mask_seed(seed: int, mask_id: int, policy: str, block: int | None = None) -> int:
    """The seed that draws a mask's LoRA init and data order (see the module docstring); ``block`` is
    ``train.seed_block``, needed by ``per_block`` only."""
    if policy == "shared":
        return int(seed)
    if policy == "per_mask":
        return int(np.random.SeedSequence([int(seed), int(mask_id)]).generate_state(1)[0])
    if policy == "per_block":
        if not block or int(block) < 1:
            raise DataspexError(f"train.seed_policy=per_block needs train.seed_block >= 1, got {block!r}")
        return mask_seed(seed, int(mask_id) // int(block), "per_mask")
    raise DataspexError(f"train.seed_policy={policy!r} is not one of: {', '.join(SEED_POLICIES)}")


def epoch_batches(kept: np.ndarray, epochs: int, batch_size: int, seed: int,
                  n_train: int | None = None) -> list[np.ndarray]:
    """Every optimiser step's example indices: each epoch a fresh shuffle of ``kept`` cut into batches. With
    ``n_train``, each epoch's shuffle is a permutation of all ``n_train`` examples restricted to ``kept`` (the
    same permutations for every mask under one seed: common random numbers)."""
    gen = torch.Generator().manual_seed(seed)
    steps = []
    if n_train is not None:
        keep = np.zeros(n_train, dtype=bool)
        keep[kept] = True
    for _ in range(epochs):
        if n_train is None:
            order = kept[torch.randperm(len(kept), generator=gen).numpy()]
        else:
            perm = torch.randperm(n_train, generator=gen).numpy()
            order = perm[keep[perm]]
        steps += [order[s: s + batch_size] for s in range(0, len(order), batch_size)]
    return steps


def mask_schedule(kept: np.ndarray, train_cfg, mask_id: int, n_train: int) -> tuple[int, list[np.ndarray]]:
    """A mask's seed (``mask_seed``) and its optimiser steps (``epoch_batches``) under ``train.seed_policy``;
    every engine trains by these."""
    seed = mask_seed(train_cfg.seed, mask_id, train_cfg.seed_policy, train_cfg.get("seed_block"))
    shared = str(train_cfg.seed_policy) in _CRN_POLICIES
    return seed, epoch_batches(kept, int(train_cfg.epochs), int(train_cfg.batch_size), seed,
                               n_train if shared else None)


def loss_record(steps: list[np.ndarray], epochs: int) -> tuple[np.ndarray, np.ndarray]:
    """How a mask's training-loss record is summed from its optimiser steps (``epoch_batches``).

    The record (1 + epochs,) holds the mean per-example loss of the first batch before any update (column 0:
    the untrained model, the base with its initial head), then of each epoch's batches, each batch's loss taken
    as it is trained on, before its update (column 1 + e: epoch e). Returns each step's column (1 + its epoch;
    step 0 also counts into column 0) and the divisors (examples summed into each column)."""
    per_epoch = max(1, len(steps) // epochs) if epochs else 1  # every epoch has the same number of batches
    columns = 1 + np.arange(len(steps)) // per_epoch
    kept = sum(len(b) for b in steps[:per_epoch])
    divisors = np.array([len(steps[0]) if steps else 1] + [max(1, kept)] * epochs, dtype=np.float64)
    return columns, divisors


def plateau_tol(train_cfg) -> float | None:
    """``train.plateau_tol`` (nats) as a float, or None when every mask trains all ``train.epochs``."""
    tol = train_cfg.get("plateau_tol")
    return None if tol is None else float(tol)


def epoch_ended(columns: np.ndarray, t: int) -> int:
    """The epoch (1-based) whose last optimiser step is step ``t`` of a mask's ``loss_record`` columns, else 0."""
    last = t + 1 == len(columns) or columns[t + 1] != columns[t]
    return int(columns[t]) if last else 0


def plateaued(record: np.ndarray, epoch: int, tol: float | None) -> bool:
    """Whether a mask's training stops after ``epoch`` under ``train.plateau_tol=tol``: from the second epoch on,
    when the epoch's mean training loss (``record[epoch]``, a training-loss record as ``loss_record`` sums it)
    fell by less than ``tol`` nats from the epoch before. The epochs not trained keep NaN in the record.

    Why an absolute drop in nats and not a relative one: with the default recipe the training loss keeps
    falling by 20-25% an epoch to the end (planted fortunes at n = 256, median over 1,408 masks: 0.0133, 0.0101,
    0.0081 nats in epochs 10-12), while its drop in nats flattens (0.006, 0.003, 0.002): a relative rule never
    stops there (``benchmarks/epoch_drops.py``)."""
    if tol is None or epoch < 2:
        return False
    return bool(record[epoch - 1] - record[epoch] < tol)


def lora_init(shapes: list[tuple[int, int]], seed: int) -> list[torch.Tensor]:
    """LoRA A matrices (r, d_in) for each adapted module, drawn as peft does (Kaiming-uniform, a=sqrt(5)) but
    from a generator of our own, so every engine draws the same numbers. B starts at zero."""
    gen = torch.Generator().manual_seed(seed + 1)  # +1: keep apart from the data-order stream
    out = []
    for r, d_in in shapes:
        bound = math.sqrt(6.0 / ((1 + 5.0) * d_in))  # kaiming_uniform_ with a=sqrt(5) on fan_in=d_in
        out.append((torch.rand((r, d_in), generator=gen) * 2 - 1) * bound)
    return out


def check_mask(mask: np.ndarray, n_train: int, mask_id=None) -> np.ndarray:
    """Indices of the kept examples; refuses a mask of the wrong length or one that keeps nothing."""
    mask = np.asarray(mask)
    where = f"mask {mask_id}" if mask_id is not None else "mask"
    if mask.ndim != 1 or mask.shape[0] != n_train:
        raise DataspexError(f"{where} has length {mask.shape[-1] if mask.ndim else 0} but there are {n_train} "
                            "training examples: the design does not belong to this data set")
    kept = np.flatnonzero(mask)
    if kept.size == 0:
        raise DataspexError(f"{where} keeps no training example: nothing to fine-tune on (drop it from the design)")
    return kept


def check_finite(losses: np.ndarray, mask_id) -> None:
    if not np.all(np.isfinite(losses)):
        raise DataspexError(f"mask {mask_id}: training produced non-finite test losses (diverged?); "
                            "lower train.lr or check the data")
