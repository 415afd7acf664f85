"""The last layer's [CLS] attention alone, forward and backward: torch ops against the fused kernel.

One training step's attention at MiniLM sizes (12 heads of 32, value LoRA r = 8): 16 adapters x 16 rows drawn
from 256 cached examples of 10-52 tokens, keys, values and layer inputs in a prefix cache. The torch path gathers
them (``index_select``) and runs ``Packing.attend_first_packed``; the fused path runs ``attend_first_fused`` on the
cache in place. Interleaved rounds, milliseconds per step, and the largest output difference.

    python benchmarks/attention_kernel.py --rounds 3
"""

from __future__ import annotations

import argparse
import time

import torch


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--reps", type=int, default=30, help="steps per timing")
    parser.add_argument("--threads", type=int, default=2)
    opts = parser.parse_args(argv)

    from dataspex.train.modules import BatchedLoRA
    from dataspex.train.packing import CachedTokens, Packing

    torch.manual_seed(0)
    torch.set_num_threads(opts.threads)
    groups, per, heads, size, r, n_examples = 16, 16, 12, 32, 8, 256
    d = heads * size
    lengths = torch.randint(10, 53, (n_examples,))
    offsets = torch.cumsum(lengths, 0) - lengths
    keys, values, inputs = (torch.randn(int(lengths.sum()), d) for _ in range(3))
    lora = BatchedLoRA(torch.nn.Linear(d, d))
    a = torch.randn(groups, r, d, requires_grad=True)
    b = torch.randn(groups, d, r, requires_grad=True)

    def batch():
        rows = torch.randint(0, n_examples, (groups * per,))
        pk = Packing(lengths[rows], groups)
        tokens = (offsets[rows][:, None] + torch.arange(pk.valid.shape[1]))[pk.valid]
        return pk, tokens, torch.randn(groups * per, d, requires_grad=True)

    def step(fused, pk, tokens, q):
        lora.A, lora.B = a, b
        x = CachedTokens(inputs, tokens)
        if fused:
            out = pk.attend_first_fused(q, CachedTokens(keys, tokens), CachedTokens(values, tokens), heads, 0.17,
                                        lora, x)
        else:
            out = pk.attend_first_packed(q, keys.index_select(0, tokens), values.index_select(0, tokens), heads,
                                         0.17, lora, x)
        out.square().sum().backward()
        return out.detach()

    batches = [batch() for _ in range(4)]
    diff = max(float((step(True, *bt) - step(False, *bt)).abs().max()) for bt in batches)  # also warms up

    def ms(fused):
        start = time.perf_counter()
        for i in range(opts.reps):
            step(fused, *batches[i % len(batches)])
        return (time.perf_counter() - start) / opts.reps * 1e3

    rows = []
    for k in range(opts.rounds):
        rows.append({"round": k + 1, "torch_ms": ms(False), "fused_ms": ms(True)})
        print(f"round {k + 1}: torch ops {rows[-1]['torch_ms']:.1f} ms/step, fused kernel {rows[-1]['fused_ms']:.1f} "
              f"ms/step ({rows[-1]['torch_ms'] / rows[-1]['fused_ms']:.2f}x)", flush=True)
    print(f"max |fused - torch| over the outputs: {diff:.1e}; {opts.threads} thread(s)")
    return rows


if __name__ == "__main__":
    main()
