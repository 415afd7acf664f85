"""Training throughput: the naive loop (one fresh peft model per mask) against the batched engine.

One process, default model, demo data and training recipe (``conf/``), for each LoRA layer setting. Naive and
engine runs are interleaved round by round, and each ratio compares runs of the same round, because the
machine may be shared. Prints fine-tunes per minute, the ratio to naive, the matmul FLOPs each fine-tune
costs (counted by ``torch.utils.flop_counter``) and the FLOP/s achieved against a dense fp32 matmul measured
here, and checks that the engine's test losses match naive's on the masks both ran.

    python benchmarks/train_throughput.py                 # the table in benchmarks/README.md
    python benchmarks/train_throughput.py --quick         # a smoke run (~1 minute)
    python benchmarks/train_throughput.py --masks 128 --layers top:2 --ks 16,auto
"""

from __future__ import annotations

import argparse
import copy
import logging
import math
import os
import statistics
import sys
import time

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOLERANCE = 1e-4


def load_config(layers: str, overrides=()):
    """The default run config (hydra compose over ``conf/``) with ``lora.layers`` set, plus ``overrides``."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(version_base=None, config_dir=os.path.join(ROOT, "conf")):
        return compose(config_name="config", overrides=[f"lora.layers={layers}", *overrides])


def setup(cfg):
    """Base model and encoded splits, as the train stage builds them."""
    from dataspex.core.data import load_data
    from dataspex.core.models import load_base_model, load_tokenizer
    from dataspex.train.common import encode

    data = load_data(cfg.data, cfg.model.task)
    tokenizer = load_tokenizer(cfg.model)
    base = load_base_model(cfg.model, len(data.label_names) if data.label_names else None, cfg.train.seed)
    train = encode(data.train, tokenizer, data.task, cfg.model.max_length)
    test = encode(data.test, tokenizer, data.task, cfg.model.max_length)
    return base, train, test


def run(fn, args, ids):
    """Time one call of an engine's train_masks over the masks ``ids``; returns (seconds, {id: losses})."""
    base, lora, train_cfg, train, test, masks = args
    start = time.perf_counter()
    out = {m: loss for m, loss, *_ in fn(base, lora, train_cfg, train, test, masks[ids], ids)}
    return time.perf_counter() - start, out


def count_flops(fn, args, ids) -> float:
    """Matmul FLOPs (forward and backward) per mask of one untimed run."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        run(fn, args, ids)
    return counter.get_total_flops() / len(ids)


def matmul_peak(threads: int, n: int = 2048, reps: int = 5) -> float:
    """Best dense fp32 matmul FLOP/s on this machine with ``threads`` threads."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = 0.0
    for _ in range(reps):
        start = time.perf_counter()
        a @ b
        best = max(best, 2 * n ** 3 / (time.perf_counter() - start))
    return best


def engine_with(k):
    """The batched engine's train_masks at ``adapters_per_pass=k``, set up afresh each call (so every timed
    run pays for building its engine and prefix cache, as the naive loop pays for its peft models)."""
    from dataspex.train import engine

    def fn(base, lora, train_cfg, train, test, masks, ids):
        engine._ENGINE_CACHE.clear()
        cfg = train_cfg.copy()
        cfg.adapters_per_pass = k
        yield from engine.train_masks(base, lora, cfg, train, test, masks, ids)

    return fn


def bench_layers(layers: str, opts, peak: float) -> list[dict]:
    from dataspex.train.naive import train_masks as naive

    cfg = load_config(layers, opts.set)
    base, train, test = setup(cfg)
    rng = np.random.default_rng(0)
    masks = (rng.random((opts.masks, len(train))) < cfg.design.p).astype(np.uint8)
    masks[masks.sum(axis=1) == 0, 0] = 1
    args = (base, cfg.lora, cfg.train, train, test, masks)
    all_ids = np.arange(opts.masks)
    engines = {str(k): engine_with(k) for k in opts.ks}
    rates = {name: [] for name in ["naive", *engines]}
    naive_losses, engine_losses = {}, {name: {} for name in engines}
    for r in range(opts.rounds):
        ids = all_ids[(r * opts.naive_masks + np.arange(opts.naive_masks)) % opts.masks]
        seconds, out = run(naive, args, ids)
        rates["naive"].append(len(ids) / seconds)
        naive_losses.update(out)
        for name, fn in engines.items():
            seconds, out = run(fn, args, all_ids)
            rates[name].append(len(all_ids) / seconds)
            engine_losses[name].update(out)
        print(f"  [{layers}] round {r + 1}/{opts.rounds}: " + ", ".join(
            f"{n} {statistics.median(t) * 60:.0f}/min" for n, t in rates.items()), file=sys.stderr)
    # The reference's own float32 noise: naive again with eager attention instead of SDPA - the same math in
    # another summation order - on every mask naive ran.
    eager = copy.deepcopy(base)
    eager.set_attn_implementation("eager")
    ids = sorted(naive_losses)
    seconds, again = run(naive, (eager, *args[1:]), np.array(ids))
    flops = {"naive": count_flops(naive, args, all_ids[:1])}
    for name, fn in engines.items():  # per fine-tune FLOPs barely depend on how masks are grouped
        flops[name] = count_flops(fn, args, all_ids[: min(opts.masks, 16)])

    def diffs(losses, ids):
        return (max(float(np.abs(losses[m] - naive_losses[m]).max()) for m in ids),
                max(float((np.abs(losses[m] - naive_losses[m]) / np.maximum(1, np.abs(naive_losses[m]))).max())
                    for m in ids))

    rows = [{"layers": layers, "engine": "naive, eager attention", "K": "-", "masks": len(ids),
             "per_min": 60 * len(ids) / seconds, "ratio": float("nan"), "gflop": flops["naive"] / 1e9,
             "gflops": float("nan"), "peak": float("nan"), "diff": diffs(again, ids), "reference": True}]
    for name, rate_list in rates.items():
        ratios = [e / n for e, n in zip(rate_list, rates["naive"])]
        rate = statistics.median(rate_list)
        rows.insert(len(rows) - 1 if name == "naive" else len(rows), {
            "layers": layers, "engine": "naive" if name == "naive" else "batched", "K": "-" if name == "naive" else name,
            "masks": opts.naive_masks * opts.rounds if name == "naive" else opts.masks * opts.rounds,
            "per_min": rate * 60, "ratio": statistics.median(ratios), "gflop": flops[name] / 1e9,
            "gflops": flops[name] * rate / 1e9, "peak": flops[name] * rate / peak,
            "diff": (0.0, 0.0) if name == "naive" else diffs(engine_losses[name], list(naive_losses)),
            "reference": name == "naive"})
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--masks", type=int, default=None, help="masks per engine run (default 64; quick 16)")
    parser.add_argument("--naive-masks", type=int, default=None, help="masks per naive run (default 6; quick 2)")
    parser.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 2; quick 1)")
    parser.add_argument("--layers", default="null,top:2,top:1", help="lora.layers settings, comma-separated")
    parser.add_argument("--ks", default="1,4,16,auto", help="adapters per pass, comma-separated")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="a smoke run: fewer masks, one round")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a config override, e.g. --set train.epochs=4 (repeatable)")
    opts = parser.parse_args(argv)
    opts.masks = opts.masks or (16 if opts.quick else 64)
    opts.naive_masks = opts.naive_masks or (2 if opts.quick else 6)
    opts.rounds = opts.rounds or (1 if opts.quick else 2)
    opts.ks = [k if k == "auto" else int(k) for k in opts.ks.split(",")]
    torch.set_num_threads(opts.threads)
    logging.basicConfig(level=logging.WARNING)
    import transformers

    transformers.logging.set_verbosity_error()
    peak = matmul_peak(opts.threads)
    rows = []
    for layers in opts.layers.split(","):
        rows += bench_layers(layers, opts, peak)
    peak = max(peak, matmul_peak(opts.threads))  # measured before and after, the machine may be shared
    for r in rows:
        r["peak"] = r["gflops"] * 1e9 / peak
    print(f"\ntorch {torch.__version__}, {opts.threads} thread(s), dense fp32 matmul peak {peak / 1e9:.0f} GFLOP/s; "
          f"default config (conf/){''.join(' ' + o for o in opts.set)}, demo data; {opts.masks} masks per engine "
          f"run, {opts.naive_masks} per naive run, {opts.rounds} interleaved round(s)\n")
    print("| lora.layers | engine | K | fine-tunes/min | x naive | GFLOP/fine-tune | GFLOP/s | % of peak "
          "| max abs diff vs naive | max rel diff |")
    print("|---|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['layers']} | {r['engine']} | {r['K']} | {r['per_min']:.1f} | {_num(r['ratio'], '.1f')} | "
              f"{r['gflop']:.1f} | {_num(r['gflops'], '.1f')} | {_num(100 * r['peak'], '.0f', '%')} | "
              f"{r['diff'][0]:.1e} | {r['diff'][1]:.1e} |")
    print()
    status = 0
    for layers in opts.layers.split(","):
        mine = [r for r in rows if r["layers"] == layers]
        worst = max(r["diff"][1] for r in mine if not r["reference"])
        floor = max(r["diff"][1] for r in mine if r["reference"])
        bound = max(TOLERANCE, 2 * floor)
        verdict = "OK" if worst <= bound else "FAIL"
        status |= worst > bound
        print(f"{verdict} [{layers}]: engine vs naive test losses differ by up to {worst:.1e} relative "
              f"(|diff| / max(1, |loss|)); naive itself moves by {floor:.1e} with eager attention instead of SDPA; "
              f"bound max({TOLERANCE:g}, 2 x that) = {bound:.1e}")
    return int(status)


def _num(x: float, fmt: str, unit: str = "") -> str:
    return "-" if math.isnan(x) else f"{x:{fmt}}{unit}"


if __name__ == "__main__":
    sys.exit(main())
