"""Token data on the device for the batched engine: an encoded split moved there once (``DeviceSplit``, with
room for the prefix cache), attention masks of right-padded rows (``padding_mask``), and packed tokens
(``Packing``: a batch held without padding, re-padded for attention only)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from dataspex.train.common import Encoded
from dataspex.train.kernels import first_token_attention
from dataspex.train.modules import BatchedLoRA


@dataclass
class DeviceSplit:
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


def to_device_split(enc: Encoded, device) -> DeviceSplit:
    lengths = torch.tensor([len(s) for s in enc.input_ids], dtype=torch.long)
    full = enc.batch(range(len(enc)))
    return DeviceSplit(full["input_ids"].to(device), lengths.to(device), full["targets"].to(device))


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


class CachedTokens:
    """Packed tokens (T, d) of a batch's rows held as positions in a prefix cache and gathered only where used:
    the last layer, run on first tokens only, reads its input at the first tokens and, for a LoRA on the
    value, in the adapters' blocks (``Packing.gather``), never as one (T, d) copy."""

    def __init__(self, cache: torch.Tensor, tokens: torch.Tensor):
        self.cache, self.tokens = cache, tokens
        self._packed = None

    def packed(self) -> torch.Tensor:
        if self._packed is None:
            self._packed = self.cache.index_select(0, self.tokens)
        return self._packed

    def at(self, index: torch.Tensor) -> torch.Tensor:
        """The tokens at packed positions ``index`` (any shape) -> (*index.shape, d)."""
        flat = self.cache.index_select(0, self.tokens[index.reshape(-1)])
        return flat.view(*index.shape, -1)


def packed(x) -> torch.Tensor:
    """Packed tokens (T, d) of a tensor or ``CachedTokens``."""
    return x.packed() if isinstance(x, CachedTokens) else x


def take(x, index: torch.Tensor) -> torch.Tensor:
    """Tokens at packed positions ``index`` of a tensor or ``CachedTokens``."""
    return x.at(index) if isinstance(x, CachedTokens) else x[index]


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
        self._row = None
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

    @property
    def row(self) -> torch.Tensor:
        """(T,) the row of each packed token."""
        if self._row is None:
            self._row = torch.repeat_interleave(torch.arange(len(self.lengths), device=self.lengths.device),
                                                self.lengths)
        return self._row

    def padded(self, t):
        """Packed (T, c) -> right-padded (N, L, c), zeros at padding (masked as keys, discarded as queries)."""
        n, width = self.valid.shape
        return t.new_zeros(n * width, t.shape[-1]).index_copy(0, self.unpad, t).view(n, width, -1)

    def attend(self, q, k, v, heads: int, scale: float):
        """Self-attention of packed q, k, v (T, H*dh) -> (T, H*dh)."""
        n, width = self.valid.shape
        size = k.shape[-1] // heads
        kp, vp, qp = (self.padded(t).view(n, width, heads, size).transpose(1, 2) for t in (k, v, q))
        ctx = F.scaled_dot_product_attention(qp, kp, vp, attn_mask=self.key_mask, scale=scale)
        return ctx.transpose(1, 2).reshape(-1, heads * size).index_select(0, self.unpad)

    def attend_first_packed(self, q, k, v, heads: int, scale: float, lora=None, x=None):
        """Attention context of each row's first token, (N, H*dh), from its query q (N, H*dh) and the packed keys
        and values k, v (T, H*dh; tensors or ``CachedTokens``): scores token by token (one dot product per token
        and head), a softmax per row on the (N, L, H) scores alone, and the weighted values summed into their
        rows. No (N, L, d) padded copy and no attention kernel for one query.

        ``lora``: a BatchedLoRA on the value whose frozen output ``v`` is; its update is applied after the
        weighted sum, sum_j p_hj B A x_j = B_h (sum_j p_hj A x_j), so per token only A x_j (r numbers) is formed
        from the packed inputs ``x`` (T, d) (a tensor or ``CachedTokens``), never a (T, d) update. Exact algebra."""
        n, width = self.valid.shape
        k, v = packed(k), packed(v)
        t, size = k.shape[0], k.shape[-1] // heads
        row = self.row
        qt = q.view(n, heads, size).index_select(0, row)  # (T, H, dh)
        scores = (qt * k.view(t, heads, size)).sum(-1) * scale  # (T, H)
        padded = scores.new_full((n * width, heads), float("-inf")).index_copy(0, self.unpad, scores)
        weights = torch.softmax(padded.view(n, width, heads), dim=1).view(n * width, heads).index_select(0, self.unpad)
        weighted = weights[..., None] * v.view(t, heads, size)  # (T, H, dh)
        ctx = v.new_zeros(n, heads, size).index_add(0, row, weighted)
        if lora is not None:
            r = lora.A.shape[1]
            xa = lora.down(packed(x), self)  # (T, r)
            summed = v.new_zeros(n, heads, r).index_add(0, row, weights[..., None] * xa[:, None, :])  # (N, H, r)
            ctx = ctx + _value_update(lora, summed, size)
        return ctx.view(n, heads * size)

    def attend_first_fused(self, q, k, v, heads: int, scale: float, lora=None, x=None):
        """``attend_first_packed`` through the fused CPU kernel (``kernels.first_token_attention``), the same
        numbers up to float rounding. k, v: packed tokens (T, H*dh) (tensors, which may need a gradient) or,
        both, ``CachedTokens`` of one batch (rows of the prefix cache, read in place: no gathered copy)."""
        n = self.valid.shape[0]
        size = q.shape[-1] // heads
        if isinstance(k, CachedTokens) and isinstance(v, CachedTokens) and k.tokens is v.tokens:
            k, v, tokens = k.cache, v.cache, k.tokens
        else:
            k, v, tokens = packed(k), packed(v), None
        starts = torch.cat([self.first, self.first.new_tensor([int(self.lengths.sum())])])
        xa = lora.down(packed(x), self) if lora is not None else None
        ctx, summed = first_token_attention(q, k, v, tokens, starts, heads, scale, xa)
        if lora is not None:
            ctx = (ctx.view(n, heads, size) + _value_update(lora, summed, size)).view(n, heads * size)
        return ctx

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


def _value_update(lora, summed, size: int):
    """The value LoRA's share of the first tokens' context, B_h (sum_j p_hj A x_j): (N, H, dh) from the
    weighted sums ``summed`` (N, H, r), adapter-major rows."""
    g, heads, r = lora.A.shape[0], summed.shape[1], summed.shape[2]
    update = torch.einsum("gbhr,gher->gbhe", summed.view(g, -1, heads, r), lora.B.view(g, heads, size, r))
    return update.reshape(-1, heads, size)
