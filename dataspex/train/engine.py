"""The batched retraining engine: many masks' LoRA adapters train in one pass, with the naive loop's results.

What each adapter gets is exactly what ``naive.finetune`` gives its peft model: its own kept examples in the
order ``mask_schedule`` draws, LoRA A from ``lora_init`` and B = 0, the base model's head, the mean loss over
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
  the [CLS] query alone: with its keys and values cached (the default, top layer only) one dot product per token
  and head, and the value's LoRA applied after the weighted sum (``Packing.attend_first_packed``; on CPU the
  fused kernel of ``kernels``, which reads the cached keys and values in place, ``attend_first_fused``); otherwise
  with its keys and values folded into per-row sums (``Packing.attend_first_folded``). Causal LMs compute
  logits only at completion positions.

All of it is exact algebra; float32 sums run in another order than in the naive loop, so losses agree to
rounding, amplified by training (``benchmarks/train_throughput.py`` measures both against naive, and naive
against itself with eager attention instead of SDPA).

Architectures run layer by layer: BERT-style sequence classifiers, GPT-2 and Llama causal LMs. Any other
model runs whole through transformers with the same batched adapters and head (no prefix cache). A LoRA
setup the batched layers cannot reproduce (a target that is not a linear layer, a head with non-linear
parameters, DoRA...) falls back to the naive loop, with a warning.

Config (``conf/train/default.yaml``): ``adapters_per_pass`` (auto or an int), ``prefix_cache``
(auto/true/false), ``device`` (auto/cpu/cuda), ``precision`` (fp32/bf16/fp16; GPU only, CPU stays fp32),
``attention_kernel`` (auto/fused/torch: auto is the fused kernel on CPU when numba imports).

Where the pieces live: ``modules`` (what peft trains, the batched nn.Modules, the parameter layout),
``optimizer`` (batched AdamW, fp16 loss scaling), ``packing`` (splits on the device, packed tokens,
attention masks), ``kernels`` (the fused CPU attention), ``runners`` (one per architecture). This module
holds the settings, the ``Engine`` that puts them together, the scheduling of masks into passes, and
``train_masks``.
"""

from __future__ import annotations

import logging
import math
import os
import weakref
from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np
import torch

from dataspex.core.errors import DataspexError
from dataspex.train.common import (Encoded, check_finite, check_mask, epoch_ended, loss_record, mask_schedule,
                                   plateau_tol, plateaued)
from dataspex.train import kernels
from dataspex.train.modules import BatchedLinear, BatchedLoRA, Layout, Unsupported, find_targets, shared_copy
from dataspex.train.naive import train_masks as naive_train_masks
from dataspex.train.optimizer import BatchedAdamW, _LossScale
from dataspex.train.packing import DeviceSplit
from dataspex.train.runners import RUNNERS, BertRunner, ModelRunner, split_layer

log = logging.getLogger("dataspex")


# ---------------------------------------------------------------------------------------------- settings

@dataclass
class Settings:
    device: torch.device
    autocast: torch.dtype | None  # None: fp32
    adapters_per_pass: int | None  # None: chosen from the device and memory
    prefix_cache: str  # "auto", "on" or "off"
    attention_kernel: str = "torch"  # "fused" or "torch": the BERT runner's [CLS] attention (train/kernels.py)


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

    kernel = str(train_cfg.get("attention_kernel", "auto") or "auto")
    if kernel not in ("auto", "fused", "torch"):
        raise DataspexError(f"train.attention_kernel={kernel!r} is not one of: auto, fused, torch")
    if kernel == "fused" and device.type != "cpu":
        raise DataspexError("train.attention_kernel=fused runs on CPU only: use auto or torch on a GPU")
    if kernel == "fused" and not kernels.HAVE_NUMBA:
        raise DataspexError("train.attention_kernel=fused needs numba, which does not import here: "
                            "pip install numba, or use train.attention_kernel=torch")
    if kernel == "auto":
        kernel = "fused" if device.type == "cpu" and kernels.HAVE_NUMBA else "torch"
    return Settings(device, autocast, k, cache, kernel)


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
        first_trained, reason = None, None
        if self.model.config._attn_implementation not in ("sdpa", "eager"):
            reason = f"attention implementation {self.model.config._attn_implementation!r}"
        elif kind is None:
            reason = f"{type(self.model).__name__} has no layer-by-layer runner"
        else:
            first_trained = split_layer(self.targets.names, kind.prefix, len(self.model.get_submodule(kind.prefix)),
                                        kind.after)
            if first_trained is None:
                reason = "a LoRA target lies outside the transformer layers and the head"
        if reason is not None:
            if self.opts.prefix_cache == "on":
                log.warning("train.prefix_cache=true but %s: training without prefix cache (same results)", reason)
            return ModelRunner(self.model, task)
        cache = self.opts.prefix_cache != "off"
        if kind is BertRunner:
            return kind(self.model, first_trained, cache, self.opts.device, self.opts.attention_kernel == "fused")
        return kind(self.model, first_trained, cache, self.opts.device)

    def split(self, enc: Encoded) -> DeviceSplit:
        """``enc`` on the device (and its prefix cache), made once per Encoded object."""
        key = id(enc)
        if key not in self._splits or self._splits[key][0]() is not enc:
            self._splits[key] = (weakref.ref(enc), self.runner.prepare(enc, self.autocast))
        return self._splits[key][1]

    def bind(self, flat):
        self.layout.bind(flat, self.loras, self.heads)

    def train_group(self, train: DeviceSplit, steps: list[list[np.ndarray]], seeds: list[int],
                    train_cfg) -> tuple[torch.Tensor, np.ndarray]:
        """Train one adapter per entry of ``steps`` (its batches in order); returns their parameters (G, P) and
        their training-loss records (G, 1 + epochs) float64 (``common.loss_record``).

        With ``train.plateau_tol`` an adapter whose epoch's training loss plateaued (``common.plateaued``) leaves
        the pass after that epoch's last step, as an adapter with fewer steps does; checking reads the epoch's
        sums back from the device, once per step at which some adapter ends an epoch (never without the stop)."""
        device = self.opts.device
        tol = plateau_tol(train_cfg)
        steps = list(steps)  # a stopped adapter's list is cut short
        flat = self.layout.initial(seeds, device).requires_grad_(True)
        opt = BatchedAdamW(flat, train_cfg.lr, train_cfg.weight_decay)
        scaler = _LossScale(self.opts.autocast == torch.float16)
        records = [loss_record(s, int(train_cfg.epochs)) for s in steps]  # (column of each step, divisors)
        width_r = len(records[0][1])
        sums = torch.zeros(len(steps) * width_r, dtype=torch.float64, device=device)  # (adapter, column) sums
        divisors = np.array([d for _, d in records])
        t = 0
        while any(t < len(s) for s in steps):
            active = [g for g, s in enumerate(steps) if t < len(s)]
            batches = [steps[g][t] for g in active]
            width = max(len(b) for b in batches)
            rows = np.empty((len(active), width), dtype=np.int64)
            weights = np.zeros((len(active), width), dtype=np.float32)
            for j, b in enumerate(batches):
                rows[j] = np.concatenate([b, np.repeat(b[:1], width - len(b))])  # pad with a zero-weight copy
                weights[j, : len(b)] = 1.0 / len(b)  # each adapter's own mean loss
            slots = np.array([g * width_r + records[g][0][t] for g in active])
            real = torch.from_numpy((weights > 0).astype(np.float32)).to(device)
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
            with torch.no_grad():  # each adapter's summed batch loss, kept on the device (no sync per step)
                summed = (loss.detach().float().view(len(active), width) * real).sum(1).double()
                if t == 0:  # every adapter's first step: the untrained model (column 0)
                    slots = np.concatenate([slots, np.array(active) * width_r])
                    summed = torch.cat([summed, summed])
                sums.index_add_(0, torch.from_numpy(slots).to(device), summed)
            opt.step(flat, flat.grad, None if everyone else active)
            ending = {g: e for g in active if (e := epoch_ended(records[g][0], t)) >= 2} if tol is not None else {}
            if ending:
                means = sums.view(len(steps), width_r).cpu().numpy() / divisors
                for g, epoch in ending.items():
                    if plateaued(means[g], epoch, tol):
                        steps[g] = steps[g][: t + 1]
                        sums.view(len(steps), width_r)[g, epoch + 1:] = float("nan")  # the epochs it skips
            t += 1
        flat.grad = None
        return flat.detach(), sums.view(len(steps), width_r).cpu().numpy() / divisors

    @torch.no_grad()
    def evaluate(self, test: DeviceSplit, flat: torch.Tensor, max_rows: int) -> tuple[np.ndarray, np.ndarray]:
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
    trained = max(1, n_layers - (getattr(engine.runner, "first_trained", 0) or 0))
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


def pass_groups(kept_counts: list[int], per_pass: int) -> list[np.ndarray]:
    """Positions of the masks, cut into passes of at most ``per_pass`` with similar kept counts (so similar
    numbers of steps and batch sizes: little padding), passes as equal in size as possible."""
    order = np.argsort(np.asarray(kept_counts), kind="stable")
    n_groups = math.ceil(len(order) / per_pass)
    return [g for g in np.array_split(order, n_groups) if len(g)]


# The last Engine built (its peft probe, device copy of the model and splits with their prefix caches), kept
# because building one can cost more than training a few masks: a caller that calls train_masks chunk by chunk
# with the same base model object and config reuses it; another base or config builds a new one. Holds the
# base by weak reference; tests and benchmarks clear it to time or check a fresh build.
_ENGINE_CACHE: dict = {}


def _engine(base, lora_cfg, task, opts: Settings) -> Engine:
    key = (repr(lora_cfg), task, str(opts.device), opts.autocast, opts.prefix_cache, opts.attention_kernel)
    if _ENGINE_CACHE.get("key") == key and _ENGINE_CACHE["base"]() is base:
        return _ENGINE_CACHE["engine"]
    engine = Engine(base, lora_cfg, task, opts)
    _ENGINE_CACHE.update(key=key, base=weakref.ref(base), engine=engine)
    return engine


def train_masks(base, lora_cfg, train_cfg, train: Encoded, test: Encoded, masks: np.ndarray, mask_ids):
    """Yield ``(mask_id, losses, margins, train_losses)`` for each mask as ``naive.train_masks`` does (losses and
    margins (n_test,) float64, train_losses (1 + epochs,) float64: ``common.loss_record``), training
    ``train.adapters_per_pass`` adapters per pass. Each pass's masks are yielded as soon as the pass is done, so
    results come in pass order (masks of similar kept counts together), not input order: callers pair results
    with masks by id."""
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
        yield from naive_train_masks(base, lora_cfg, train_cfg, train, test, masks, mask_ids)
        return
    batch_size = int(train_cfg.batch_size)
    mean_len = float(np.mean([len(s) for s in train.input_ids]))
    per_pass = opts.adapters_per_pass or auto_adapters(opts, engine, batch_size, mean_len)
    log.info("batched engine: %d masks, %d adapters per pass on %s; %s", len(kept), per_pass, opts.device,
             engine.runner.describe())
    train_split, test_split = engine.split(train), engine.split(test)
    for group in pass_groups([len(k) for k in kept], per_pass):
        schedules = [mask_schedule(kept[i], train_cfg, mask_ids[i], len(train)) for i in group]
        seeds, steps = [seed for seed, _ in schedules], [batches for _, batches in schedules]
        if max(len(s) for s in steps) == 0:
            flat, curves = engine.layout.initial(seeds, opts.device), np.full((len(group), 1), np.nan)
        else:
            flat, curves = engine.train_group(train_split, steps, seeds, train_cfg)
        losses, margs = engine.evaluate(test_split, flat, max_rows=per_pass * batch_size)
        for j, i in enumerate(group):
            check_finite(losses[j], mask_ids[i])
        for j, i in enumerate(group):  # the whole pass at once, as soon as it is done (a crash loses one pass)
            yield mask_ids[i], losses[j], margs[j], curves[j]
