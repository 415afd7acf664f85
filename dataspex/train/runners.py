"""The batched engine's architecture runners: each turns rows of a ``DeviceSplit`` into per-example losses
through the model with the batched modules swapped in.

Layer by layer, with the frozen layers below the first trained one (``split_layer``) optionally cached once per
run: ``BertRunner`` (packed tokens, the last layer on [CLS] queries only), and the causal LMs ``GPT2`` and
``Llama`` (``CausalLM``: their own blocks, our masks). ``RUNNERS`` lists them in the order tried;
``ModelRunner`` runs any other model whole through transformers. ``_cache_budget``, the prefix cache's memory
allowance, sits here with its one user (so the engine imports the runners, never the other way round).
"""

from __future__ import annotations

import os

import torch
from torch import nn

from dataspex.train.common import IGNORE, Encoded, margins, per_example_loss
from dataspex.train.modules import BatchedLoRA, linear_forward
from dataspex.train.packing import CachedTokens, DeviceSplit, Packing, packed, padding_mask, take, to_device_split


def split_layer(names: list[str], prefix: str, n_layers: int, after: tuple[str, ...]) -> int | None:
    """The lowest layer (under module path ``prefix``) holding a LoRA target, ``n_layers`` if none does; None
    if a target sits anywhere but in the layers or the modules ``after`` them."""
    first_trained = n_layers
    for name in names:
        if name.startswith(prefix + "."):
            first_trained = min(first_trained, int(name[len(prefix) + 1:].split(".")[0]))
        elif not any(name == a or name.startswith(a + ".") for a in after):
            return None
    return first_trained


def _plan_text(kind: str, first_trained: int, n_layers: int, cache: bool, extra: str = "") -> str:
    below = "embeddings" + (f" + layers 0-{first_trained - 1}" if first_trained else "")
    how = "computed once per run (prefix cache)" if cache else "recomputed per batch without gradients"
    return f"{kind}: {below} {how}; layers {first_trained}-{n_layers - 1} trained{extra}"


def _cache_budget(device) -> int:
    """Bytes the prefix cache may take: a quarter of the free memory."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0] // 4
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 4
    except (ValueError, OSError):
        return 1 << 30


# -------------------------------------------------------------------------------- BERT, packed

def _packed(t):
    """``packed(t)``, None staying None."""
    return None if t is None else packed(t)


def _known(module, base_out) -> bool:
    """A frozen plain linear whose output is already known (cached): its input is not needed."""
    return base_out is not None and not isinstance(module, BatchedLoRA)


class BertRunner:
    """BertForSequenceClassification, run on packed tokens: no linear layer ever sees a padding token.

    The classifier reads the pooled [CLS] row only, so the last layer computes keys and values for every token
    and everything else for [CLS] alone. With the prefix cache, the input of layer ``first_trained`` (the lowest
    adapted layer) and the frozen base outputs of that layer's query/key/value are computed once per example.
    """

    prefix, after = "bert.encoder.layer", ("bert.pooler", "classifier")

    def __init__(self, model, first_trained: int, cache: bool, device, fused: bool = False):
        self.model, self.first_trained, self.cache, self.device = model, first_trained, cache, device
        self.layers = model.bert.encoder.layer
        self.fused = fused  # the last layer's [CLS] attention through the fused CPU kernel (train/kernels.py)

    @staticmethod
    def supports(model, task) -> bool:
        from transformers import BertForSequenceClassification  # lazy: transformers takes seconds to import

        cfg = model.config
        return (task == "classification" and type(model) is BertForSequenceClassification
                and not cfg.is_decoder and not cfg.add_cross_attention and not cfg.chunk_size_feed_forward
                and getattr(cfg, "position_embedding_type", "absolute") == "absolute"
                and model.bert.pooler is not None)

    def describe(self) -> str:
        how = "the fused kernel" if self.fused else "torch ops"
        return _plan_text("BERT, packed tokens", self.first_trained, len(self.layers), self.cache,
                          f"; last layer on [CLS] queries only, its attention by {how}")

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
        ``qkv``: the base query/key/value outputs when already known (cached): (T, d) each, but the query (N, d)
        at the first tokens only when ``first_only``.

        With ``first_only``, keys and values known (cached) cost one dot product per token, so they are used
        as they are (``attend_first_packed``); otherwise, when they can be, they are folded into per-row sums
        (``attend_first_folded``), which saves projecting every token by two d x d matrices."""
        layer = self.layers[i]
        sa = layer.attention.self
        base_q, base_k, base_v = qkv if qkv is not None else (None, None, None)
        if not first_only:
            x = packed(x)
        residual = take(x, pk.first) if first_only else x
        q = linear_forward(sa.query, residual, None if first_only else pk, base_q)  # (N, d) rows are adapter-major too
        if first_only and base_k is None and self._foldable(sa):
            ctx = pk.attend_first_folded(q, packed(x), sa.key, sa.value, sa.num_attention_heads, sa.scaling)
        else:
            # cached keys and values may come as CachedTokens (rows of the cache): the fused kernel reads them
            # in place, everything else gathers them (packed)
            k = base_k if _known(sa.key, base_k) else linear_forward(sa.key, packed(x), pk, _packed(base_k))
            if first_only:
                lora = sa.value if isinstance(sa.value, BatchedLoRA) else None  # applied after the weighted sum
                frozen = sa.value.base if lora is not None else sa.value
                v = base_v if base_v is not None else frozen(packed(x))
                attend = pk.attend_first_fused if self.fused else pk.attend_first_packed
                ctx = attend(q, k, v, sa.num_attention_heads, sa.scaling, lora, x)
            else:
                v = linear_forward(sa.value, x, pk, _packed(base_v))
                ctx = pk.attend(q, packed(k), v, sa.num_attention_heads, sa.scaling)
        block = pk if not first_only else None
        out = layer.attention.output
        a = out.LayerNorm(linear_forward(out.dense, ctx, block) + residual)
        h = layer.intermediate.intermediate_act_fn(linear_forward(layer.intermediate.dense, a, block))
        return layer.output.LayerNorm(linear_forward(layer.output.dense, h, block) + a)

    @staticmethod
    def _foldable(sa) -> bool:
        """Keys and values can be folded into per-row sums (attend_first_folded): the key is frozen, the value
        frozen or LoRA-adapted, both plain linears."""
        value = sa.value.base if isinstance(sa.value, BatchedLoRA) else sa.value
        return type(sa.key) is nn.Linear and type(value) is nn.Linear

    # -- data

    def prepare(self, enc: Encoded, autocast) -> DeviceSplit:
        split = to_device_split(enc, self.device)
        if self.cache:
            with torch.no_grad(), autocast:
                self._fill_cache(split)
        return split

    def _fill_cache(self, split: DeviceSplit, chunk: int = 256) -> None:
        lengths = split.lengths
        n, total = len(lengths), int(lengths.sum())
        d = self.model.config.hidden_size
        with_qkv = self.first_trained < len(self.layers) and 4 * total * d * 4 <= _cache_budget(self.device)
        split.offsets = torch.cumsum(lengths, 0) - lengths
        parts, qkv_parts = [], []
        for start in range(0, n, chunk):  # packed in example order, so chunks concatenate into the cache
            rows = torch.arange(start, min(start + chunk, n), device=self.device)
            x = self._bottom(split, rows)
            parts.append(x)
            if with_qkv:
                qkv_parts.append(self.qkv(self.first_trained, x))
        split.hidden = torch.cat(parts)
        if with_qkv:
            split.qkv = tuple(torch.cat(p) for p in zip(*qkv_parts))

    def _bottom(self, split: DeviceSplit, rows):
        """Packed input of layer ``first_trained`` for ``rows``, from the embeddings up (frozen)."""
        ids, lengths, _, _ = split.rows(rows)
        pk = Packing(lengths)
        x = self.embed(ids, pk)
        for i in range(self.first_trained):
            x = self.layer(i, x, pk)
        return x

    def losses(self, split: DeviceSplit, rows: torch.Tensor, groups: int, want_margins: bool = False):
        """Per-example loss (N,) (and margin) of ``rows`` (N,) of ``split``, adapter-major, ``groups`` adapters."""
        lengths = split.lengths[rows]
        pk = Packing(lengths, groups)
        qkv = None
        n = len(self.layers)
        if self.cache:
            tokens = (split.offsets[rows][:, None] + torch.arange(pk.valid.shape[1], device=rows.device))[pk.valid]
            x = CachedTokens(split.hidden, tokens)
            if split.qkv is not None:
                qkv = tuple(CachedTokens(t, tokens) for t in split.qkv[1:])  # gathered where read
                # the last layer, run on first tokens only, needs its query there alone
                at = split.offsets[rows] if self.first_trained == n - 1 else tokens
                qkv = (split.qkv[0].index_select(0, at), *qkv)
        else:
            with torch.no_grad():
                x = self._bottom(split, rows)
        if self.first_trained == n:
            cls = take(x, pk.first)
        else:
            for i in range(self.first_trained, n - 1):
                x = self.layer(i, x, pk, qkv if i == self.first_trained else None)
            cls = self.layer(n - 1, x, pk, qkv if self.first_trained == n - 1 else None, first_only=True)
        pooler = self.model.bert.pooler
        pooled = pooler.activation(linear_forward(pooler.dense, cls))
        logits = self.model.classifier(self.model.dropout(pooled))
        targets = split.targets[rows]
        loss = per_example_loss(logits, targets, "classification")
        return loss, margins(logits, targets, "classification") if want_margins else None


# ------------------------------------------------------------------- causal LMs, through their own blocks

class CausalLM:
    """A decoder-only LM run block by block on right-padded rows (its transformers blocks, our masks);
    logits only at completion positions."""

    prefix, after = "", ("lm_head",)

    def __init__(self, model, first_trained: int, cache: bool, device):
        self.model, self.first_trained, self.cache, self.device = model, first_trained, cache, device
        self.layers = model.get_submodule(self.prefix)
        self.eager = model.config._attn_implementation == "eager"

    def describe(self) -> str:
        return _plan_text(type(self).__name__, self.first_trained, len(self.layers), self.cache)

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

    def prepare(self, enc: Encoded, autocast) -> DeviceSplit:
        split = to_device_split(enc, self.device)
        if self.cache:
            with torch.no_grad(), autocast:
                self._fill_cache(split)
        return split

    def _fill_cache(self, split: DeviceSplit, chunk: int = 64) -> None:
        lengths = split.lengths
        split.offsets = torch.cumsum(lengths, 0) - lengths
        parts = []
        for start in range(0, len(lengths), chunk):
            rows = torch.arange(start, min(start + chunk, len(lengths)), device=self.device)
            ids, lens, _, width = split.rows(rows)
            h = self.run(self.embed(ids), lens, 0, self.first_trained)
            parts.append(h.reshape(-1, h.shape[-1])[(torch.arange(width, device=self.device)[None, :]
                                                     < lens[:, None]).reshape(-1)])
        parts.append(torch.zeros_like(parts[0][:1]))  # the padding row
        split.hidden = torch.cat(parts)

    def losses(self, split: DeviceSplit, rows: torch.Tensor, groups: int, want_margins: bool = False):
        ids, lengths, targets, width = split.rows(rows)
        if self.cache:
            pos = torch.arange(width, device=self.device)
            index = split.offsets[rows][:, None] + pos[None, :]
            h = split.hidden[torch.where(pos[None, :] < lengths[:, None], index, split.hidden.shape[0] - 1)]
        else:
            with torch.no_grad():
                h = self.run(self.embed(ids), lengths, 0, self.first_trained)
        h = self.run(h, lengths, self.first_trained, len(self.layers))
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
        from transformers import GPT2LMHeadModel  # lazy: transformers takes seconds to import

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
        from transformers import LlamaForCausalLM  # lazy: transformers takes seconds to import

        return task == "causal_lm" and type(model) is LlamaForCausalLM


RUNNERS = (BertRunner, GPT2, Llama)


class ModelRunner:
    """Any other model: the whole transformers forward, with the batched adapters and head swapped in."""

    def __init__(self, model, task: str):
        self.model, self.task = model, task

    def describe(self) -> str:
        return f"{type(self.model).__name__} run whole through transformers (no prefix cache)"

    def prepare(self, enc: Encoded, autocast) -> DeviceSplit:
        return to_device_split(enc, self.model.device)

    def losses(self, split: DeviceSplit, rows: torch.Tensor, groups: int, want_margins: bool = False):
        ids, lengths, targets, width = split.rows(rows)
        attention = (torch.arange(width, device=ids.device)[None, :] < lengths[:, None]).long()
        logits = self.model(input_ids=ids, attention_mask=attention).logits
        loss = per_example_loss(logits, targets, self.task)
        return loss, margins(logits, targets, self.task) if want_margins else None
