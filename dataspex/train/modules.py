"""What peft would train, and the nn.Modules that train many LoRA adapters side by side on one frozen base.

``find_targets`` builds the peft model once and reads off the adapted linears and the trained head;
``BatchedLoRA`` wraps an adapted linear with one LoRA update per adapter, ``BatchedLinear`` replaces a trained
head linear with one per adapter. ``Layout`` says where each of an adapter's tensors sits in its flat parameter
vector and binds a (G, P) stack of adapters to the modules (it lives here, not with the token packing, because
``find_targets`` checks its size against peft's). ``linear_forward`` calls a plain or batched linear alike.
"""

from __future__ import annotations

import copy
import itertools
import math
from dataclasses import dataclass

import torch
from torch import nn

from dataspex.core.models import head_module_names, lora_config
from dataspex.train.common import lora_init


class Unsupported(Exception):
    """The batched layers cannot reproduce this LoRA setup exactly (the engine then runs the naive loop)."""


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
    from transformers.pytorch_utils import Conv1D  # lazy: transformers takes seconds to import

    return (nn.Linear, Conv1D)


def find_targets(base, lora_cfg) -> Targets:
    """Build the peft model on a shared copy of ``base`` and read off what it adapts and trains."""
    from peft import get_peft_model  # lazy: peft (with transformers) takes seconds to import
    from peft.tuners.lora import LoraLayer  # lazy: peft (with transformers) takes seconds to import

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

    def down(self, x, packing):
        """x A^T, each adapter's A on its own rows: packed tokens x (T, d_in) of a ``Packing`` -> (T, r). Ragged
        blocks go adapter by adapter, with no padded (G, Tmax, d_in) copy of the inputs."""
        g, r = self.A.shape[0], self.A.shape[1]
        if packing.uniform:
            return torch.bmm(x.reshape(g, -1, x.shape[-1]), self.A.transpose(1, 2)).reshape(-1, r)
        blocks = x.split(packing.lengths.view(g, -1).sum(1).tolist())
        return torch.cat([block @ a.T for block, a in zip(blocks, self.A)])


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


def linear_forward(module, x, packing=None, base_out=None):
    """``module(x)`` for a plain or batched linear; ``base_out``: the frozen part's output, already known."""
    if isinstance(module, BatchedLoRA):
        return module(x, packing, base_out)
    return module(x) if base_out is None else base_out
