"""A fused CPU kernel (numba) for the last BERT layer's attention from each row's first token.

``first_token_attention(q, k, v, tokens, starts, heads, scale, xa)`` computes what
``Packing.attend_first_packed`` computes with torch ops, row by row in one pass over the row's keys and values:

    p_hj = softmax_j(scale * q_h . k_tj)      ctx_h = sum_j p_hj v_tj      summed_h = sum_j p_hj xa_j

for the packed tokens j of a row (``starts[n]`` to ``starts[n + 1]``) and t = ``tokens[j]``, their rows in ``k``
and ``v``. Why: with the prefix cache the keys and values are rows of the cache; torch needs them gathered into
(T, d) copies, a (T, H, dh) query copy, (T, H, dh) products for the scores and for the weighted values, and as
many again in the backward pass (about 15 passes over (T, d) per step, memory-bound: the attention took about a
third of a training step at n = 256 fortunes). Here each key and value row is read once in the forward pass and
once in the backward, straight from the cache, and nothing of size (T, d) is written unless k or v need a
gradient. Rows are split between threads (the kernels release the GIL); each thread writes only its rows.

numba comes with galois (a dependency); ``HAVE_NUMBA`` is False if it does not import, and the engine then uses
the torch ops and says so in its plan (``train.attention_kernel``).
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

try:  # pragma: no cover - exercised wherever numba is installed
    import numba as nb

    HAVE_NUMBA = True
except Exception:  # noqa: BLE001 - any import failure means "use the torch ops"
    nb = None
    HAVE_NUMBA = False

__all__ = ["HAVE_NUMBA", "first_token_attention"]


if HAVE_NUMBA:

    # Loops run token by token (j outer), heads and features inner: each key and value row (d contiguous
    # numbers) is read once per pass. fastmath lets numba vectorise the inner sums (it reorders them: float32
    # sums differ from torch's by rounding only, ~1e-6 relative).

    @nb.njit(cache=True, nogil=True, fastmath=True)
    def _forward(q, k, v, tokens, starts, xa, scale, lo, hi, p, ctx, summed):  # pragma: no cover - compiled
        """Rows lo..hi-1. q (N, H, dh); k, v (Tk, H, dh); xa (T, r); out: p (T, H), ctx (N, H, dh), summed (N, H, r)."""
        heads, size, r = q.shape[1], q.shape[2], xa.shape[1]
        zero = q[0, 0, 0] * 0
        top = np.empty(heads, dtype=q.dtype)
        for n in range(lo, hi):
            a, b = starts[n], starts[n + 1]
            top[:] = -np.inf
            for j in range(a, b):
                t = tokens[j]
                for h in range(heads):
                    s = zero
                    for e in range(size):
                        s += q[n, h, e] * k[t, h, e]
                    s *= scale
                    p[j, h] = s
                    if s > top[h]:
                        top[h] = s
            ctx[n] = zero
            summed[n] = zero
            for j in range(a, b):
                for h in range(heads):
                    p[j, h] = math.exp(p[j, h] - top[h])
            for h in range(heads):
                total = zero
                for j in range(a, b):
                    total += p[j, h]
                top[h] = 1 / total
            for j in range(a, b):
                t = tokens[j]
                for h in range(heads):
                    w = p[j, h] * top[h]
                    p[j, h] = w
                    for e in range(size):
                        ctx[n, h, e] += w * v[t, h, e]
                    for c in range(r):
                        summed[n, h, c] += w * xa[j, c]

    @nb.njit(cache=True, nogil=True, fastmath=True)
    def _backward(q, k, v, tokens, starts, xa, scale, p, d_ctx, d_summed, lo, hi, kv_grads,
                  d_q, d_xa, d_k, d_v):  # pragma: no cover - compiled
        """Gradients for rows lo..hi-1 of the forward's inputs, from d_ctx (N, H, dh), d_summed (N, H, r):
        d_q (N, H, dh), d_xa (T, r) and, with ``kv_grads`` (k and v are the packed tokens), d_k, d_v (T, H, dh).
        Softmax: d_s_j = p_j (d_p_j - sum_i p_i d_p_i), with d_p_j = d_ctx . v_j + d_summed . xa_j."""
        heads, size, r = q.shape[1], q.shape[2], xa.shape[1]
        zero = q[0, 0, 0] * 0
        mean = np.empty(heads, dtype=q.dtype)
        d_p = np.empty((starts[hi] - starts[lo], heads), dtype=q.dtype)
        for n in range(lo, hi):
            a, b = starts[n], starts[n + 1]
            o = a - starts[lo]
            mean[:] = zero
            for j in range(a, b):
                t = tokens[j]
                for h in range(heads):
                    s = zero
                    for e in range(size):
                        s += d_ctx[n, h, e] * v[t, h, e]
                    for c in range(r):
                        s += d_summed[n, h, c] * xa[j, c]
                    d_p[j - a + o, h] = s
                    mean[h] += p[j, h] * s
            d_q[n] = zero
            for j in range(a, b):
                t = tokens[j]
                d_xa[j] = zero
                for h in range(heads):
                    w = p[j, h]
                    ds = w * (d_p[j - a + o, h] - mean[h]) * scale
                    for e in range(size):
                        d_q[n, h, e] += ds * k[t, h, e]
                    for c in range(r):
                        d_xa[j, c] += w * d_summed[n, h, c]
                    if kv_grads:
                        for e in range(size):
                            d_k[j, h, e] = ds * q[n, h, e]
                            d_v[j, h, e] = w * d_ctx[n, h, e]


_POOL: ThreadPoolExecutor | None = None
_POOL_SIZE = 0


def _run(kernel, starts: np.ndarray, args_before: tuple, args_after: tuple) -> None:
    """``kernel(*args_before, lo, hi, *args_after)`` over all rows, split into ``torch.get_num_threads()``
    ranges of about equal token counts (a thread per range, the kernels release the GIL)."""
    global _POOL, _POOL_SIZE
    n = len(starts) - 1
    parts = max(1, min(torch.get_num_threads(), n))
    if parts == 1:
        kernel(*args_before, 0, n, *args_after)
        return
    if _POOL_SIZE < parts:
        _POOL, _POOL_SIZE = ThreadPoolExecutor(max_workers=parts), parts
    cuts = np.searchsorted(starts, np.linspace(0, starts[-1], parts + 1)).clip(0, n)
    cuts[0], cuts[-1] = 0, n
    jobs = [_POOL.submit(kernel, *args_before, int(lo), int(hi), *args_after)
            for lo, hi in zip(cuts[:-1], cuts[1:]) if hi > lo]
    for job in jobs:
        job.result()


def _arrays(q, k, v, xa, tokens, starts, heads: int) -> tuple:
    """NumPy views the kernels read: q (N, H, dh), k and v (Tk, H, dh), xa (T, r), tokens, starts."""
    size = q.shape[1] // heads
    return (q.detach().contiguous().view(q.shape[0], heads, size).numpy(),
            k.detach().contiguous().view(k.shape[0], heads, size).numpy(),
            v.detach().contiguous().view(v.shape[0], heads, size).numpy(),
            xa.detach().contiguous().numpy(), tokens.numpy(), starts.numpy())


class _FirstTokenAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, xa, tokens, starts, heads: int, scale: float):
        n, width = q.shape[0], q.shape[1]
        size = width // heads
        qn, kn, vn, xan, tok, st = _arrays(q, k, v, xa, tokens, starts, heads)
        p = np.empty((len(tok), heads), dtype=qn.dtype)
        out = np.empty((n, heads, size), dtype=qn.dtype)
        summed = np.empty((n, heads, xan.shape[1]), dtype=qn.dtype)
        _run(_forward, st, (qn, kn, vn, tok, st, xan, float(scale)), (p, out, summed))
        ctx.save_for_backward(q, k, v, xa, tokens, starts, torch.from_numpy(p))
        ctx.heads, ctx.scale = heads, float(scale)
        return torch.from_numpy(out).view(n, width), torch.from_numpy(summed)

    @staticmethod
    def backward(ctx, d_out, d_summed):
        q, k, v, xa, tokens, starts, p = ctx.saved_tensors
        heads, n, width = ctx.heads, q.shape[0], q.shape[1]
        size = width // heads
        kv_grads = ctx.needs_input_grad[1] or ctx.needs_input_grad[2]
        qn, kn, vn, xan, tok, st = _arrays(q, k, v, xa, tokens, starts, heads)
        if d_out is None:
            d_out = q.new_zeros(n, width)
        if d_summed is None:
            d_summed = q.new_zeros(n, heads, xa.shape[1])
        dc = d_out.contiguous().view(n, heads, size).numpy()
        ds = d_summed.contiguous().numpy()
        d_q = np.empty_like(qn)
        d_xa = np.empty_like(xan)
        shape = (len(tok), heads, size) if kv_grads else (0, heads, size)
        d_k, d_v = np.empty(shape, dtype=qn.dtype), np.empty(shape, dtype=qn.dtype)
        _run(_backward, st, (qn, kn, vn, tok, st, xan, ctx.scale, p.numpy(), dc, ds),
             (kv_grads, d_q, d_xa, d_k, d_v))
        grad_k = torch.from_numpy(d_k).view(len(tok), width) if ctx.needs_input_grad[1] else None
        grad_v = torch.from_numpy(d_v).view(len(tok), width) if ctx.needs_input_grad[2] else None
        grad_xa = torch.from_numpy(d_xa) if ctx.needs_input_grad[3] else None
        return torch.from_numpy(d_q).view(n, width), grad_k, grad_v, grad_xa, None, None, None, None


def first_token_attention(q, k, v, tokens, starts, heads: int, scale: float, xa=None):
    """Attention context (N, H*dh) of each row's first token and, with ``xa``, the weighted sums (N, H, r) of
    ``xa`` (T, r) under the same weights (see the module docstring), differentiable in q, xa and (when they are
    given as packed tokens) k and v.

    q (N, H*dh); k, v (Tk, H*dh): the keys and values, row ``tokens[j]`` for packed token j (int64 (T,)); rows
    of a cache need no gradient; ``tokens`` None: k and v are the packed tokens themselves (T, H*dh), and may
    need one. ``starts`` (N + 1,) int64: row n holds packed tokens starts[n] to starts[n + 1]. CPU tensors of one
    float dtype."""
    if not HAVE_NUMBA:
        raise RuntimeError("numba is not installed: the fused attention kernel is unavailable")
    if tokens is None:
        tokens = torch.arange(int(starts[-1]))
    elif k.requires_grad or v.requires_grad:
        raise ValueError("k and v can have a gradient only as packed tokens (tokens=None), not as cache rows")
    if xa is None:
        xa = q.new_zeros(len(tokens), 0)
    ctx, summed = _FirstTokenAttention.apply(q, k, v, xa, tokens, starts, heads, scale)
    return ctx, summed
