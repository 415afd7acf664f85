"""The batched retraining engine: many masks' LoRA adapters train in one pass, with the naive loop's results.

What each adapter gets is exactly what ``naive.finetune`` gives its peft model: its own kept examples in the
order ``epoch_batches`` draws, LoRA A from ``lora_init`` and B = 0, the base model's head, the mean loss over
its own batch, and AdamW (torch's defaults) with its own step count. What is shared, and why that is exact:

* **Adapters side by side.** The G adapters of a pass share the frozen base. Rows are laid out adapter-major
  (adapter g owns rows ``[g*b, (g+1)*b)``); every adapted linear computes ``base(x) + (x A_g^T)(s B_g)^T`` with
  one ``bmm`` over adapters, and the trained head is a per-adapter linear. The pass's loss is the sum of each
  adapter's mean loss, so each adapter's gradient is that of its own loss alone. An adapter whose batch is
  smaller than the others' is padded with zero-weight rows; one with no batch at a step (it has fewer steps)
  is left out of that step entirely, its AdamW state and step count untouched.
* **Frozen prefix.** Layers below the lowest adapted layer see only frozen weights, and dropout is off, so
  their output for an example is a constant: it is computed once per run for every example, kept unpadded,
  and re-padded per batch (positions restart at 0 in every row, as in a right-padded batch).
* **No padding tokens (BERT).** Tokens are packed: linear layers, norms and activations see real tokens
  only; attention alone re-pads (padded keys masked, as in a padded batch). The lowest adapted layer's frozen
  query/key/value outputs are cached with its input.
* **Only the rows the loss reads.** BERT's classifier reads the pooled [CLS] row, so the last layer works on
  the [CLS] query alone, with its keys and values folded into per-row sums (``Packing.attend_first_folded``).
  Causal LMs compute logits only at completion positions.

All of it is exact algebra; float32 sums run in another order than in the naive loop, so losses agree to
rounding, amplified by training (``benchmarks/train_throughput.py`` measures both against naive, and naive
against itself with eager attention instead of SDPA).

Architectures run layer by layer: BERT-style sequence classifiers, GPT-2 and Llama causal LMs. Any other
model runs whole through transformers with the same batched adapters and head (no prefix cache). A LoRA
setup the batched layers cannot reproduce (a target that is not a linear layer, a head with non-linear
parameters, DoRA...) falls back to the naive loop, with a warning.

Config (``conf/train/default.yaml``): ``adapters_per_pass`` (auto or an int), ``prefix_cache``
(auto/true/false), ``device`` (auto/cpu/cuda), ``precision`` (fp32/bf16/fp16; GPU only, CPU stays fp32).
"""

from __future__ import annotations

import copy
import itertools
import logging
import math
import os
import weakref
from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dataspex.errors import DataspexError
from dataspex.models import head_module_names, lora_config
from dataspex.training.common import (IGNORE, Encoded, check_finite, check_mask, epoch_batches, lora_init,
                                      margins, mask_seed, per_example_loss)

log = logging.getLogger("dataspex")

BETAS = (0.9, 0.999)  # torch.optim.AdamW defaults, which naive uses
EPS = 1e-8


class Unsupported(Exception):
    """The batched layers cannot reproduce this LoRA setup exactly (the engine then runs the naive loop)."""


# ---------------------------------------------------------------------------------------------- settings

@dataclass
class Settings:
    device: torch.device
    autocast: torch.dtype | None  # None: fp32
    adapters_per_pass: int | None  # None: chosen from the device and memory
    prefix_cache: str  # "auto", "on" or "off"


def settings(train_cfg) -> Settings:
    """The engine's speed-only keys of ``train_cfg`` (each optional), validated."""
    device = str(train_cfg.get("device", "auto") or "auto")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if not (device == "cpu" or device.startswith("cuda")):
        raise DataspexError(f"train.device={device!r} is not one of: auto, cpu, cuda")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise DataspexError("train.device=cuda but torch sees no CUDA device: use train.device=auto or cpu")
    device = torch.device(device)

    precision = str(train_cfg.get("precision", "fp32") or "fp32")
    dtypes = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
    if precision not in dtypes:
        raise DataspexError(f"train.precision={precision!r} is not one of: fp32, bf16, fp16")
    autocast = dtypes[precision]
    if device.type == "cpu" and autocast is not None:
        log.warning("train.precision=%s applies on GPU only: training on CPU in fp32", precision)
        autocast = None

    k = train_cfg.get("adapters_per_pass", "auto")
    if k is None or str(k) == "auto":
        k = None
    elif int(k) < 1:
        raise DataspexError(f"train.adapters_per_pass={k} must be a positive integer or auto")
    else:
        k = int(k)

    cache = train_cfg.get("prefix_cache", "auto")
    cache = {True: "on", False: "off", None: "auto"}.get(cache, str(cache).lower())
    cache = {"true": "on", "false": "off"}.get(cache, cache)
    if cache not in ("auto", "on", "off"):
        raise DataspexError(f"train.prefix_cache={train_cfg.get('prefix_cache')!r} is not one of: auto, true, false")
    return Settings(device, autocast, k, cache)


# ------------------------------------------------------------------------------ what peft would train

@dataclass
class Targets:
    """What peft trains, found by building the peft model once.

    ``names``: LoRA-adapted module names in module order (the order ``lora_init`` draws for); ``shapes``: their
    LoRA A shapes (r, d_in); ``out_features``: d_out; ``scales``: alpha / r as peft computes it; ``head``: names
    of the trained head's linear layers (lora.train_head)."""

    names: list[str]
    shapes: list[tuple[int, int]]
    out_features: list[int]
    scales: list[float]
    head: list[str]


def shared_copy(model: nn.Module, device: torch.device | None = None) -> nn.Module:
    """A copy of ``model``'s module tree that shares its parameters and buffers (or holds copies on ``device``),
    so modules can be swapped without touching the caller's model."""
    memo = {}
    for t in itertools.chain(model.parameters(), model.buffers()):
        if id(t) in memo:
            continue
        if device is None or t.device == device:
            memo[id(t)] = t
        elif isinstance(t, nn.Parameter):
            memo[id(t)] = nn.Parameter(t.detach().to(device), requires_grad=False)
        else:
            memo[id(t)] = t.to(device)
    return copy.deepcopy(model, memo)


def _linear_kinds():
    from transformers.pytorch_utils import Conv1D

    return (nn.Linear, Conv1D)


def find_targets(base, lora_cfg) -> Targets:
    """Build the peft model on a shared copy of ``base`` and read off what it adapts and trains."""
    from peft import get_peft_model
    from peft.tuners.lora import LoraLayer

    probe = get_peft_model(shared_copy(base), lora_config(lora_cfg, base))
    names, shapes, outs, scales = [], [], [], []
    for name, module in probe.named_modules():
        if not isinstance(module, LoraLayer):
            continue
        if not isinstance(module.get_base_layer(), _linear_kinds()):
            raise Unsupported(f"LoRA target {name} is a {type(module.get_base_layer()).__name__}, not a linear layer")
        if module.use_dora.get("default") or getattr(module, "lora_bias", {}).get("default"):
            raise Unsupported("DoRA / LoRA bias")
        names.append(name.removeprefix("base_model.model."))
        shapes.append(tuple(module.lora_A["default"].weight.shape))
        outs.append(module.lora_B["default"].weight.shape[0])
        scales.append(float(module.scaling["default"]))
    head = []
    for top in head_module_names(base) if lora_cfg.train_head else []:
        for sub, module in base.get_submodule(top).named_modules():
            if not list(module.parameters(recurse=False)):
                continue
            if not isinstance(module, nn.Linear):
                raise Unsupported(f"the trained head has a {type(module).__name__}")
            head.append(f"{top}.{sub}" if sub else top)
    targets = Targets(names, shapes, outs, scales, head)
    # Safety net: train exactly as many numbers as peft does.
    n_peft = sum(p.numel() for p in probe.parameters() if p.requires_grad)
    if n_peft != Layout(targets, base).size:
        raise Unsupported(f"peft trains {n_peft} parameters, the batched layers {Layout(targets, base).size}")
    return targets


# ------------------------------------------------------------------------------- batched modules

class BatchedLoRA(nn.Module):
    """A frozen linear (nn.Linear or Conv1D) plus one LoRA update per adapter.

    ``A`` (G, r, d_in) and ``B`` (G, d_out, r) (already times alpha/r) are bound before each pass. Rows are
    adapter-major: x (G*b, ..., d_in) -> (G*b, ..., d_out), adapter g's rows use A[g], B[g]. With a ``packing``
    x is (T, d_in) packed tokens whose per-adapter blocks may differ in length. ``base_out``: the frozen
    linear's output on x when already known."""

    def __init__(self, base: nn.Module):
        super().__init__()
        self.base = base
        self.A = self.B = None

    def forward(self, x, packing=None, base_out=None):
        y = self.base(x) if base_out is None else base_out
        g = self.A.shape[0]
        if packing is None or packing.uniform:
            xa = torch.bmm(x.reshape(g, -1, x.shape[-1]), self.A.transpose(1, 2))  # (G, rows, r)
            return torch.baddbmm(y.reshape(g, -1, y.shape[-1]), xa, self.B.transpose(1, 2)).view(y.shape)
        xa = torch.bmm(x[packing.gather], self.A.transpose(1, 2))  # (G, Tmax, r): blocks padded by repeats
        delta = torch.bmm(xa, self.B.transpose(1, 2)).reshape(-1, y.shape[-1])[packing.scatter]
        return y + delta


class BatchedLinear(nn.Module):
    """A trained head linear, one per adapter: ``W`` (G, d_out, d_in), ``b`` (G, d_out) or None, bound per pass.
    x (G*b, ..., d_in) -> (G*b, ..., d_out)."""

    def __init__(self, has_bias: bool):
        super().__init__()
        self.has_bias = has_bias
        self.W = self.b = None

    def forward(self, x):
        g = self.W.shape[0]
        xs = x.reshape(g, -1, x.shape[-1])
        if self.b is None:
            y = torch.bmm(xs, self.W.transpose(1, 2))
        else:
            y = torch.baddbmm(self.b[:, None, :], xs, self.W.transpose(1, 2))
        return y.view(*x.shape[:-1], y.shape[-1])


class Layout:
    """Where each trained tensor of one adapter sits in its flat parameter vector: per LoRA target A (r, d_in)
    then B (d_out, r); per head linear W (d_out, d_in) then b (d_out,) if it has one."""

    def __init__(self, targets: Targets, base: nn.Module):
        self.targets = targets
        self.shapes = []
        for (r, d_in), d_out in zip(targets.shapes, targets.out_features):
            self.shapes += [(r, d_in), (d_out, r)]
        self.head_init = []  # the base head's tensors, the starting point of every adapter's head
        for name in targets.head:
            linear = base.get_submodule(name)
            self.head_init.append(linear.weight.detach())
            if linear.bias is not None:
                self.head_init.append(linear.bias.detach())
        self.shapes += [tuple(t.shape) for t in self.head_init]
        self.sizes = [math.prod(s) for s in self.shapes]
        self.size = sum(self.sizes)

    def initial(self, seeds: list[int], device) -> torch.Tensor:
        """(G, P) float32: LoRA A from ``lora_init(seed)``, B = 0, the base head, one row per seed."""
        head = [t.reshape(-1).float().cpu() for t in self.head_init]
        rows = []
        for seed in seeds:
            parts = []
            for a, (d_out, r) in zip(lora_init(self.targets.shapes, seed), self.shapes[1::2]):
                parts += [a.reshape(-1), torch.zeros(d_out * r)]
            rows.append(torch.cat(parts + head))
        return torch.stack(rows).to(device)

    def bind(self, flat: torch.Tensor, loras: list[BatchedLoRA], heads: list[BatchedLinear]) -> None:
        """Point the batched modules at the adapters in ``flat`` (G, P) (differentiably)."""
        g = flat.shape[0]
        parts = iter(p.view(g, *s) for p, s in zip(flat.split(self.sizes, dim=1), self.shapes))
        for module, scale in zip(loras, self.targets.scales):
            module.A = next(parts)
            module.B = next(parts) * scale
        for module in heads:
            module.W = next(parts)
            module.b = next(parts) if module.has_bias else None


# ---------------------------------------------------------------------------------------------- AdamW

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


# ------------------------------------------------------------------------------------ shared pieces

@dataclass
class Split:
    """One encoded split on the device: ``ids`` (n, Lmax) right-padded, ``lengths`` (n,), ``targets`` (n,) or
    (n, Lmax). With a prefix cache, ``hidden`` (sum of lengths (+1), d) holds every example's frozen hidden
    states back to back from ``offsets`` (n,); ``qkv``, when set, the frozen base outputs of the first adapted
    layer's query/key/value for the same tokens (3 tensors like ``hidden``)."""

    ids: torch.Tensor
    lengths: torch.Tensor
    targets: torch.Tensor
    hidden: torch.Tensor | None = None
    offsets: torch.Tensor | None = None
    qkv: tuple | None = None

    def rows(self, rows: torch.Tensor):
        """Right-padded ids (N, L), lengths (N,), targets of ``rows`` (N,), trimmed to their own longest."""
        lengths = self.lengths[rows]
        width = int(lengths.max())
        targets = self.targets[rows]
        if targets.dim() == 2:
            targets = targets[:, :width]
        return self.ids[rows, :width], lengths, targets, width


def to_split(enc: Encoded, device) -> Split:
    lengths = torch.tensor([len(s) for s in enc.input_ids], dtype=torch.long)
    full = enc.batch(range(len(enc)))
    return Split(full["input_ids"].to(device), lengths.to(device), full["targets"].to(device))


def lin(module, x, packing=None, base_out=None):
    """``module(x)`` for a plain or batched linear; ``base_out``: the frozen part's output, already known."""
    if isinstance(module, BatchedLoRA):
        return module(x, packing, base_out)
    return module(x) if base_out is None else base_out


def padding_mask(lengths: torch.Tensor, width: int, causal: bool, eager: bool, dtype) -> torch.Tensor:
    """Attention mask for right-padded rows of ``lengths`` (N,): keys past a row's length are hidden, and with
    ``causal`` keys after the query too. (N, 1, 1, width) or (N, 1, width, width); bool (True = attend) for
    SDPA, additive float for eager attention."""
    keys = torch.arange(width, device=lengths.device)
    allowed = (keys[None, :] < lengths[:, None])[:, None, None, :]
    if causal:
        allowed = allowed & (keys[None, :] <= keys[:, None])[None, None]
    if not eager:
        return allowed
    return torch.zeros(allowed.shape, dtype=dtype, device=lengths.device).masked_fill_(~allowed,
                                                                                       torch.finfo(dtype).min)


def split_layer(names: list[str], prefix: str, n_layers: int, after: tuple[str, ...]) -> int | None:
    """The lowest layer (under module path ``prefix``) holding a LoRA target, ``n_layers`` if none does; None
    if a target sits anywhere but in the layers or the modules ``after`` them."""
    split = n_layers
    for name in names:
        if name.startswith(prefix + "."):
            split = min(split, int(name[len(prefix) + 1:].split(".")[0]))
        elif not any(name == a or name.startswith(a + ".") for a in after):
            return None
    return split


def _describe(kind: str, split: int, n_layers: int, cache: bool, extra: str = "") -> str:
    below = "embeddings" + (f" + layers 0-{split - 1}" if split else "")
    how = "computed once per run (prefix cache)" if cache else "recomputed per batch without gradients"
    return f"{kind}: {below} {how}; layers {split}-{n_layers - 1} trained{extra}"


def _cache_budget(device) -> int:
    """Bytes the prefix cache may take: a quarter of the free memory."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0] // 4
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 4
    except (ValueError, OSError):
        return 1 << 30


# -------------------------------------------------------------------------------- BERT, packed

class Packing:
    """A batch of N right-padded rows of ``lengths`` (N,), held as T packed tokens (no padding).

    Tokens run row by row, so with adapter-major rows each adapter's tokens are contiguous. ``valid`` (N, L);
    ``unpad`` (T,): row * L + position of each packed token; ``first`` (N,): each row's first token. With
    ``groups`` adapters, ``gather`` (G, Tmax) lays each adapter's tokens out in a block padded to the longest
    (for the LoRA bmm) and ``scatter`` (T,) picks them back out of the (G * Tmax) rows; ``uniform`` when every
    block is full."""

    def __init__(self, lengths: torch.Tensor, groups: int | None = None):
        device = lengths.device
        n, width = len(lengths), int(lengths.max())
        pos = torch.arange(width, device=device)
        self.lengths = lengths
        self.valid = pos[None, :] < lengths[:, None]
        self.first = torch.cumsum(lengths, 0) - lengths
        self.unpad = (torch.arange(n, device=device)[:, None] * width + pos[None, :])[self.valid]
        self.key_mask = self.valid[:, None, None, :]
        self.uniform = True
        if groups:
            per = lengths.view(groups, -1).sum(1)
            start = torch.cumsum(per, 0) - per
            tmax = int(per.max())
            self.uniform = bool((per == tmax).all())
            if not self.uniform:
                self.gather = start[:, None] + torch.minimum(torch.arange(tmax, device=device)[None, :],
                                                             per[:, None] - 1)
                owner = torch.repeat_interleave(torch.arange(groups, device=device), per)
                self.scatter = owner * tmax + torch.arange(len(owner), device=device) - start[owner]

    def padded(self, t):
        """Packed (T, c) -> right-padded (N, L, c), zeros at padding (masked as keys, discarded as queries)."""
        n, width = self.valid.shape
        return t.new_zeros(n * width, t.shape[-1]).index_copy(0, self.unpad, t).view(n, width, -1)

    def attend(self, q, k, v, heads: int, scale: float, first_only: bool = False):
        """Self-attention of packed q, k, v (T, H*dh) -> (T, H*dh); ``first_only``: q is (N, H*dh), one query per
        row, and the result (N, H*dh)."""
        n, width = self.valid.shape
        size = k.shape[-1] // heads
        kp = self.padded(k).view(n, width, heads, size).transpose(1, 2)
        vp = self.padded(v).view(n, width, heads, size).transpose(1, 2)
        if first_only:
            qp = q.view(n, 1, heads, size).transpose(1, 2)
        else:
            qp = self.padded(q).view(n, width, heads, size).transpose(1, 2)
        ctx = F.scaled_dot_product_attention(qp, kp, vp, attn_mask=self.key_mask, scale=scale)
        ctx = ctx.transpose(1, 2).reshape(-1, heads * size)
        return ctx if first_only else ctx.index_select(0, self.unpad)

    def attend_first_folded(self, q, x, key: nn.Linear, value, heads: int, scale: float):
        """Attention context of each row's first token, (N, H*dh), from q (N, H*dh) and the layer input x
        (T, d), without projecting keys or values per token: q_h.k_j = (W_k,h^T q_h).x_j + q_h.b_k,h, whose
        last term is the same for every key (softmax ignores it), and sum_j p_hj v_j = value(sum_j p_hj x_j)
        on head h's outputs, since the weights sum to one. Exact algebra; a d x d product per row instead of
        two per token. ``key``: a frozen linear; ``value``: a frozen linear or a BatchedLoRA on one."""
        n, d = self.valid.shape[0], x.shape[-1]
        size = q.shape[-1] // heads
        xp = self.padded(x)  # (N, L, d)
        qk = torch.einsum("nhe,hed->nhd", q.view(n, heads, size), key.weight.view(heads, size, d))
        scores = torch.einsum("nhd,nld->nhl", qk, xp) * scale
        weights = torch.softmax(scores.masked_fill(~self.valid[:, None, :], float("-inf")), dim=-1)
        mean = torch.einsum("nhl,nld->nhd", weights, xp)  # (N, H, d): per head, the weighted mean input
        frozen = value.base if isinstance(value, BatchedLoRA) else value
        ctx = torch.einsum("nhd,hed->nhe", mean, frozen.weight.view(heads, size, d))
        if frozen.bias is not None:
            ctx = ctx + frozen.bias.view(heads, size)
        if isinstance(value, BatchedLoRA):
            g, r = value.A.shape[0], value.A.shape[1]
            xa = torch.bmm(mean.reshape(g, -1, d), value.A.transpose(1, 2)).view(g, -1, heads, r)
            lora = torch.einsum("gbhr,gher->gbhe", xa, value.B.view(g, heads, size, r))
            ctx = ctx + lora.reshape(n, heads, size)
        return ctx.reshape(n, heads * size)


class BertRunner:
    """BertForSequenceClassification, run on packed tokens: no linear layer ever sees a padding token.

    The classifier reads the pooled [CLS] row only, so the last layer computes keys and values for every token
    and everything else for [CLS] alone. With the prefix cache, the input of layer ``split`` (the lowest
    adapted layer) and the frozen base outputs of that layer's query/key/value are computed once per example.
    """

    prefix, after = "bert.encoder.layer", ("bert.pooler", "classifier")

    def __init__(self, model, split: int, cache: bool, device):
        self.model, self.split, self.cache, self.device = model, split, cache, device
        self.layers = model.bert.encoder.layer

    @staticmethod
    def supports(model, task) -> bool:
        from transformers import BertForSequenceClassification

        cfg = model.config
        return (task == "classification" and type(model) is BertForSequenceClassification
                and not cfg.is_decoder and not cfg.add_cross_attention and not cfg.chunk_size_feed_forward
                and getattr(cfg, "position_embedding_type", "absolute") == "absolute"
                and model.bert.pooler is not None)

    def describe(self) -> str:
        return _describe("BERT, packed tokens", self.split, len(self.layers), self.cache,
                         "; last layer on [CLS] queries only")

    # -- layers

    def embed(self, ids, packing: Packing):
        """Right-padded ids (N, L) -> packed embeddings (T, d)."""
        emb = self.model.bert.embeddings(input_ids=ids)
        return emb.reshape(-1, emb.shape[-1])[packing.unpad]

    def qkv(self, i: int, x):
        """The frozen base outputs of layer ``i``'s query, key and value on x (T, d)."""
        sa = self.layers[i].attention.self
        return tuple(m.base(x) if isinstance(m, BatchedLoRA) else m(x) for m in (sa.query, sa.key, sa.value))

    def layer(self, i: int, x, pk: Packing, qkv=None, first_only: bool = False):
        """BertLayer ``i`` on packed x (T, d) -> (T, d), or (N, d) for each row's first token (``first_only``).
        ``qkv``: the base query/key/value outputs when already known (cached)."""
        layer = self.layers[i]
        sa = layer.attention.self
        base_q, base_k, base_v = qkv if qkv is not None else (None, None, None)
        residual = x
        if first_only:
            residual = x[pk.first]
            base_q = None if base_q is None else base_q[pk.first]
        q = lin(sa.query, residual, None if first_only else pk, base_q)  # (N, d) rows are adapter-major too
        if first_only and base_k is None and self._foldable(sa):
            ctx = pk.attend_first_folded(q, x, sa.key, sa.value, sa.num_attention_heads, sa.scaling)
        else:
            k = lin(sa.key, x, pk, base_k)
            v = lin(sa.value, x, pk, base_v)
            ctx = pk.attend(q, k, v, sa.num_attention_heads, sa.scaling, first_only)
        block = pk if not first_only else None
        out = layer.attention.output
        a = out.LayerNorm(lin(out.dense, ctx, block) + residual)
        h = layer.intermediate.intermediate_act_fn(lin(layer.intermediate.dense, a, block))
        return layer.output.LayerNorm(lin(layer.output.dense, h, block) + a)

    @staticmethod
    def _foldable(sa) -> bool:
        """Keys and values can be folded into per-row sums (attend_first_folded): the key is frozen, the value
        frozen or LoRA-adapted, both plain linears."""
        value = sa.value.base if isinstance(sa.value, BatchedLoRA) else sa.value
        return type(sa.key) is nn.Linear and type(value) is nn.Linear

    # -- data

    def prepare(self, enc: Encoded, autocast) -> Split:
        split = to_split(enc, self.device)
        if self.cache:
            with torch.no_grad(), autocast:
                self._fill_cache(split)
        return split

    def _fill_cache(self, split: Split, chunk: int = 256) -> None:
        lengths = split.lengths
        n, total = len(lengths), int(lengths.sum())
        d = self.model.config.hidden_size
        with_qkv = self.split < len(self.layers) and 4 * total * d * 4 <= _cache_budget(self.device)
        split.offsets = torch.cumsum(lengths, 0) - lengths
        parts, qkv_parts = [], []
        for start in range(0, n, chunk):  # packed in example order, so chunks concatenate into the cache
            rows = torch.arange(start, min(start + chunk, n), device=self.device)
            x = self._bottom(split, rows)
            parts.append(x)
            if with_qkv:
                qkv_parts.append(self.qkv(self.split, x))
        split.hidden = torch.cat(parts)
        if with_qkv:
            split.qkv = tuple(torch.cat(p) for p in zip(*qkv_parts))

    def _bottom(self, split: Split, rows):
        """Packed input of layer ``split`` for ``rows``, from the embeddings up (frozen)."""
        ids, lengths, _, _ = split.rows(rows)
        pk = Packing(lengths)
        x = self.embed(ids, pk)
        for i in range(self.split):
            x = self.layer(i, x, pk)
        return x

    def losses(self, split: Split, rows: torch.Tensor, groups: int, want_margins: bool = False):
        """Per-example loss (N,) (and margin) of ``rows`` (N,) of ``split``, adapter-major, ``groups`` adapters."""
        lengths = split.lengths[rows]
        pk = Packing(lengths, groups)
        qkv = None
        if self.cache:
            tokens = (split.offsets[rows][:, None] + torch.arange(pk.valid.shape[1], device=rows.device))[pk.valid]
            x = split.hidden[tokens]
            if split.qkv is not None:
                qkv = tuple(t[tokens] for t in split.qkv)
        else:
            with torch.no_grad():
                x = self._bottom(split, rows)
        n = len(self.layers)
        if self.split == n:
            cls = x[pk.first]
        else:
            for i in range(self.split, n - 1):
                x = self.layer(i, x, pk, qkv if i == self.split else None)
            cls = self.layer(n - 1, x, pk, qkv if self.split == n - 1 else None, first_only=True)
        pooler = self.model.bert.pooler
        pooled = pooler.activation(lin(pooler.dense, cls))
        logits = self.model.classifier(self.model.dropout(pooled))
        targets = split.targets[rows]
        loss = per_example_loss(logits, targets, "classification")
        return loss, margins(logits, targets, "classification") if want_margins else None


# ------------------------------------------------------------------- causal LMs, through their own blocks

class CausalLM:
    """A decoder-only LM run block by block on right-padded rows (its transformers blocks, our masks);
    logits only at completion positions."""

    prefix, after = "", ("lm_head",)

    def __init__(self, model, split: int, cache: bool, device):
        self.model, self.split, self.cache, self.device = model, split, cache, device
        self.layers = model.get_submodule(self.prefix)
        self.eager = model.config._attn_implementation == "eager"

    def describe(self) -> str:
        return _describe(type(self).__name__, self.split, len(self.layers), self.cache)

    def embed(self, ids):
        """(N, L) right-padded ids -> (N, L, d), the input of layer 0 (positions 0..L-1 in every row)."""
        raise NotImplementedError

    def final(self, h):
        """The final norm."""
        raise NotImplementedError

    def run(self, h, lengths, start: int, stop: int):
        """Blocks ``start`` to ``stop - 1`` on h (N, L, d)."""
        mask = padding_mask(lengths, h.shape[1], True, self.eager, h.dtype)
        for i in range(start, stop):
            h = self.layers[i](h, attention_mask=mask)
        return h

    def prepare(self, enc: Encoded, autocast) -> Split:
        split = to_split(enc, self.device)
        if self.cache:
            with torch.no_grad(), autocast:
                self._fill_cache(split)
        return split

    def _fill_cache(self, split: Split, chunk: int = 64) -> None:
        lengths = split.lengths
        split.offsets = torch.cumsum(lengths, 0) - lengths
        parts = []
        for start in range(0, len(lengths), chunk):
            rows = torch.arange(start, min(start + chunk, len(lengths)), device=self.device)
            ids, lens, _, width = split.rows(rows)
            h = self.run(self.embed(ids), lens, 0, self.split)
            parts.append(h.reshape(-1, h.shape[-1])[(torch.arange(width, device=self.device)[None, :]
                                                     < lens[:, None]).reshape(-1)])
        parts.append(torch.zeros_like(parts[0][:1]))  # the padding row
        split.hidden = torch.cat(parts)

    def losses(self, split: Split, rows: torch.Tensor, groups: int, want_margins: bool = False):
        ids, lengths, targets, width = split.rows(rows)
        if self.cache:
            pos = torch.arange(width, device=self.device)
            index = split.offsets[rows][:, None] + pos[None, :]
            h = split.hidden[torch.where(pos[None, :] < lengths[:, None], index, split.hidden.shape[0] - 1)]
        else:
            with torch.no_grad():
                h = self.run(self.embed(ids), lengths, 0, self.split)
        h = self.run(h, lengths, self.split, len(self.layers))
        # The first R completion positions of each row, in order (R = the most any row has), as (N, R): rows
        # stay adapter-major and equal in size, so a batched module may sit after this.
        valid = targets != IGNORE
        r = max(int(valid.sum(dim=1).max()), 1)
        pos = torch.argsort((~valid).to(torch.int8), dim=1, stable=True)[:, :r]
        picked = h.gather(1, pos[..., None].expand(-1, -1, h.shape[-1]))
        logits = self.model.lm_head(self.final(picked))
        loss = per_example_loss(logits, targets.gather(1, pos), "causal_lm")
        return loss, -loss if want_margins else None


class GPT2(CausalLM):
    prefix = "transformer.h"

    def embed(self, ids):
        t = self.model.transformer
        return t.wte(ids) + t.wpe(torch.arange(ids.shape[1], device=ids.device))[None]

    def final(self, h):
        return self.model.transformer.ln_f(h)

    @staticmethod
    def supports(model, task) -> bool:
        from transformers import GPT2LMHeadModel

        return task == "causal_lm" and type(model) is GPT2LMHeadModel and not model.config.add_cross_attention


class Llama(CausalLM):
    prefix = "model.layers"

    def embed(self, ids):
        return self.model.model.embed_tokens(ids)

    def run(self, h, lengths, start, stop):
        if start >= stop:
            return h
        mask = padding_mask(lengths, h.shape[1], True, self.eager, h.dtype)
        positions = torch.arange(h.shape[1], device=h.device)[None]
        rotary = self.model.model.rotary_emb(h, position_ids=positions)
        for i in range(start, stop):
            h = self.layers[i](h, attention_mask=mask, position_ids=positions, position_embeddings=rotary)
        return h

    def final(self, h):
        return self.model.model.norm(h)

    @staticmethod
    def supports(model, task) -> bool:
        from transformers import LlamaForCausalLM

        return task == "causal_lm" and type(model) is LlamaForCausalLM


RUNNERS = (BertRunner, GPT2, Llama)


class ModelRunner:
    """Any other model: the whole transformers forward, with the batched adapters and head swapped in."""

    def __init__(self, model, task: str):
        self.model, self.task = model, task

    def describe(self) -> str:
        return f"{type(self.model).__name__} run whole through transformers (no prefix cache)"

    def prepare(self, enc: Encoded, autocast) -> Split:
        return to_split(enc, self.model.device)

    def losses(self, split: Split, rows: torch.Tensor, groups: int, want_margins: bool = False):
        ids, lengths, targets, width = split.rows(rows)
        attention = (torch.arange(width, device=ids.device)[None, :] < lengths[:, None]).long()
        logits = self.model(input_ids=ids, attention_mask=attention).logits
        loss = per_example_loss(logits, targets, self.task)
        return loss, margins(logits, targets, self.task) if want_margins else None


# ------------------------------------------------------------------------------------------ the engine

class Engine:
    """The base model with batched adapters swapped in, the runner, and the encoded splits on the device."""

    def __init__(self, base, lora_cfg, task: str, opts: Settings):
        self.opts = opts
        self.targets = find_targets(base, lora_cfg)
        self.layout = Layout(self.targets, base)
        self.model = shared_copy(base, opts.device).eval()
        self.loras, self.heads = [], []
        for name in self.targets.names:
            module = BatchedLoRA(self.model.get_submodule(name))
            self.model.set_submodule(name, module)
            self.loras.append(module)
        for name in self.targets.head:
            module = BatchedLinear(self.model.get_submodule(name).bias is not None)
            self.model.set_submodule(name, module)
            self.heads.append(module)
        self.runner = self._runner(task)
        self.autocast = (torch.autocast(opts.device.type, dtype=opts.autocast) if opts.autocast is not None
                         else nullcontext())
        self._splits = {}

    def _runner(self, task):
        kind = next((r for r in RUNNERS if r.supports(self.model, task)), None)
        split, reason = None, None
        if self.model.config._attn_implementation not in ("sdpa", "eager"):
            reason = f"attention implementation {self.model.config._attn_implementation!r}"
        elif kind is None:
            reason = f"{type(self.model).__name__} has no layer-by-layer runner"
        else:
            split = split_layer(self.targets.names, kind.prefix, len(self.model.get_submodule(kind.prefix)),
                                kind.after)
            if split is None:
                reason = "a LoRA target lies outside the transformer layers and the head"
        if reason is not None:
            if self.opts.prefix_cache == "on":
                log.warning("train.prefix_cache=true but %s: training without prefix cache (same results)", reason)
            return ModelRunner(self.model, task)
        return kind(self.model, split, self.opts.prefix_cache != "off", self.opts.device)

    def split(self, enc: Encoded) -> Split:
        """``enc`` on the device (and its prefix cache), made once per Encoded object."""
        key = id(enc)
        if key not in self._splits or self._splits[key][0]() is not enc:
            self._splits[key] = (weakref.ref(enc), self.runner.prepare(enc, self.autocast))
        return self._splits[key][1]

    def bind(self, flat):
        self.layout.bind(flat, self.loras, self.heads)

    def train_group(self, train: Split, steps: list[list[np.ndarray]], seeds: list[int], train_cfg) -> torch.Tensor:
        """Train one adapter per entry of ``steps`` (its batches in order); returns their parameters (G, P)."""
        device = self.opts.device
        flat = self.layout.initial(seeds, device).requires_grad_(True)
        opt = BatchedAdamW(flat, train_cfg.lr, train_cfg.weight_decay)
        scaler = _LossScale(self.opts.autocast == torch.float16)
        for t in range(max(len(s) for s in steps)):
            active = [g for g, s in enumerate(steps) if t < len(s)]
            batches = [steps[g][t] for g in active]
            width = max(len(b) for b in batches)
            rows = np.empty((len(active), width), dtype=np.int64)
            weights = np.zeros((len(active), width), dtype=np.float32)
            for j, b in enumerate(batches):
                rows[j] = np.concatenate([b, np.repeat(b[:1], width - len(b))])  # pad with a zero-weight copy
                weights[j, : len(b)] = 1.0 / len(b)  # each adapter's own mean loss
            rows = torch.from_numpy(rows.reshape(-1)).to(device)
            weights = torch.from_numpy(weights.reshape(-1)).to(device)
            everyone = len(active) == len(steps)
            while True:
                self.bind(flat if everyone else flat[torch.tensor(active, device=device)])
                with self.autocast:
                    loss, _ = self.runner.losses(train, rows, len(active))
                flat.grad = None
                ((loss * weights).sum() * scaler.scale).backward()
                if scaler.check(flat.grad):
                    break
            opt.step(flat, flat.grad, None if everyone else active)
        flat.grad = None
        return flat.detach()

    @torch.no_grad()
    def evaluate(self, test: Split, flat: torch.Tensor, max_rows: int) -> tuple[np.ndarray, np.ndarray]:
        """Every adapter in ``flat`` (G, P) on every test example: losses and margins, each (G, n_test) float64."""
        g, n = flat.shape[0], len(test.lengths)
        self.bind(flat)
        chunk = max(1, max_rows // g)
        losses, margs = [], []
        for start in range(0, n, chunk):
            idx = torch.arange(start, min(start + chunk, n), device=flat.device)
            with self.autocast:
                loss, marg = self.runner.losses(test, idx.repeat(g), g, want_margins=True)
            losses.append(loss.float().view(g, -1))
            margs.append(marg.float().view(g, -1))
        return (torch.cat(losses, 1).double().cpu().numpy(), torch.cat(margs, 1).double().cpu().numpy())


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


# ----------------------------------------------------------------------------------------- scheduling

def auto_adapters(opts: Settings, engine: Engine, batch_size: int, mean_len: float) -> int:
    """Adapters per pass when ``train.adapters_per_pass=auto``.

    CPU: about 4k tokens' worth of full-layer work per pass (the matmuls then run near full speed and the
    per-step overhead is spread thin; fewer trained layers, more adapters), at most 16: larger passes were
    slower on CPU (top-layer demo, 1 and 2 threads: 16 adapters 24-26x naive, 32: 20-21x, 64: 18-19x;
    benchmarks/train_throughput.py --ks 8,16,32,64). GPU: as many as a
    quarter of the free memory holds (activations of the trained layers kept for the backward pass), at
    most 512, since small models leave a GPU latency-bound well before it is full."""
    tokens = max(1.0, batch_size * mean_len)  # per adapter and step
    d = engine.model.config.hidden_size
    n_layers = engine.model.config.num_hidden_layers
    trained = max(1, n_layers - (getattr(engine.runner, "split", 0) or 0))
    per_token = 4 * (trained * 24 * d + 2 * d)  # bytes kept for backward, generously
    if opts.device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(opts.device)
        return int(max(1, min(512, free / 4 / (per_token * tokens))))
    try:
        free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):
        free = 4 << 30
    by_memory = free / 4 / (per_token * tokens)
    return int(max(1, min(16, by_memory, round(4096 * n_layers / trained / tokens))))


def groups(kept_counts: list[int], per_pass: int) -> list[np.ndarray]:
    """Positions of the masks, cut into passes of at most ``per_pass`` with similar kept counts (so similar
    numbers of steps and batch sizes: little padding), passes as equal in size as possible."""
    order = np.argsort(np.asarray(kept_counts), kind="stable")
    n_groups = math.ceil(len(order) / per_pass)
    return [g for g in np.array_split(order, n_groups) if len(g)]


_LAST: dict = {}  # the last Engine, reused while the same base model and config come back (chunked calls)


def _engine(base, lora_cfg, task, opts: Settings) -> Engine:
    key = (repr(lora_cfg), task, str(opts.device), opts.autocast, opts.prefix_cache)
    if _LAST.get("key") == key and _LAST["base"]() is base:
        return _LAST["engine"]
    engine = Engine(base, lora_cfg, task, opts)
    _LAST.update(key=key, base=weakref.ref(base), engine=engine)
    return engine


def train_masks(base, lora_cfg, train_cfg, train: Encoded, test: Encoded, masks: np.ndarray, mask_ids):
    """Yield ``(mask_id, losses, margins)`` for each mask, in input order, as ``naive.train_masks`` does (losses
    and margins (n_test,) float64), training ``train.adapters_per_pass`` adapters per pass."""
    masks = np.asarray(masks)
    mask_ids = [int(m) for m in mask_ids]
    kept = [check_mask(mask, len(train), mask_id) for mask, mask_id in zip(masks, mask_ids)]
    if not kept:
        return
    opts = settings(train_cfg)
    try:
        engine = _engine(base, lora_cfg, train.task, opts)
    except Unsupported as exc:
        log.warning("batched engine: %s; running the naive loop instead (same results, slower)", exc)
        from dataspex.training.naive import train_masks as naive

        yield from naive(base, lora_cfg, train_cfg, train, test, masks, mask_ids)
        return
    batch_size, epochs = int(train_cfg.batch_size), int(train_cfg.epochs)
    mean_len = float(np.mean([len(s) for s in train.input_ids]))
    per_pass = opts.adapters_per_pass or auto_adapters(opts, engine, batch_size, mean_len)
    log.info("batched engine: %d masks, %d adapters per pass on %s; %s", len(kept), per_pass, opts.device,
             engine.runner.describe())
    train_split, test_split = engine.split(train), engine.split(test)
    done, next_out = {}, 0
    for group in groups([len(k) for k in kept], per_pass):
        seeds = [mask_seed(train_cfg.seed, mask_ids[i], train_cfg.seed_policy) for i in group]
        steps = [epoch_batches(kept[i], epochs, batch_size, s) for i, s in zip(group, seeds)]
        if max(len(s) for s in steps) == 0:
            flat = engine.layout.initial(seeds, opts.device)
        else:
            flat = engine.train_group(train_split, steps, seeds, train_cfg)
        losses, margs = engine.evaluate(test_split, flat, max_rows=per_pass * batch_size)
        for j, i in enumerate(group):
            check_finite(losses[j], mask_ids[i])
            done[i] = (losses[j], margs[j])
        while next_out in done:  # yield in input order: callers pair results with their rows
            loss, marg = done.pop(next_out)
            yield mask_ids[next_out], loss, marg
            next_out += 1
