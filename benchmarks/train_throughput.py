"""Training throughput: the naive loop (one fresh peft model per mask) against the batched engine.

One process, default model, demo data and training recipe (``conf/``), for each LoRA layer setting. Naive and
engine runs are interleaved round by round, and each ratio compares runs of the same round, because the
machine may be shared. Prints fine-tunes per minute, the ratio to naive, the matmul FLOPs each fine-tune
costs (counted by ``torch.utils.flop_counter``) and the FLOP/s achieved against a dense fp32 matmul measured
here, and checks that the engine's test losses match naive's on the masks both ran.

    python benchmarks/train_throughput.py                 # the table in benchmarks/README.md
    python benchmarks/train_throughput.py --quick         # a smoke run (~1 minute)
    python benchmarks/train_throughput.py --masks 128 --layers top:2 --ks 16,auto
    python benchmarks/train_throughput.py --real fortunes --n-train 256 --masks 32 --naive-masks 2 --against 0733297

With ``--real``, the default engine trains on real texts (``benchmarks/realdata.py``: Debian's fortunes or
WordNet glosses) at ``--n-train`` examples and ``--max-length`` tokens, beside the naive loop and, with
``--against REV``, the engine of an earlier commit run from ``git archive REV`` in a child process on the same
data and masks, so that the speed-up is a ratio measured in one run. Seconds per retrain include building the
engine and its prefix cache, spread over the run's masks.
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


# --------------------------------------------------------------------------- real-size data (issue 15)

def real_layers(opts) -> str:
    """--real runs one layer setting: the default (top:1) unless --layers names one."""
    return "top:1" if opts.layers == "null,top:2,top:1" else opts.layers.split(",")[0]


def real_config(opts, folder: str):
    overrides = ["data=files", f"data.train_file={folder}/train.csv", f"data.test_file={folder}/test.csv",
                 f"model.max_length={opts.max_length}", *opts.set]
    return load_config(real_layers(opts), overrides)


def _against_child(argv) -> int:
    """``--child REV_DIR FOLDER MASKS.npy``: time the engine of an older checkout (``REV_DIR`` on sys.path
    first) on the same data and masks; prints one JSON line {seconds, losses, package}."""
    import json

    rev_dir, folder, masks_path, rest = argv[0], argv[1], argv[2], argv[3:]
    sys.path.insert(0, rev_dir)
    opts = _parser().parse_args(rest)
    torch.set_num_threads(opts.threads)
    import dataspex
    import transformers

    transformers.logging.set_verbosity_error()
    cfg = real_config(opts, folder)
    base, train, test = setup(cfg)
    masks = np.load(masks_path)
    seconds, out = run(engine_with("auto"), (base, cfg.lora, cfg.train, train, test, masks), np.arange(len(masks)))
    print(json.dumps({"seconds": seconds, "losses": {str(k): v.tolist() for k, v in out.items()},
                      "package": os.path.dirname(dataspex.__file__)}))
    return 0


def _run_against(rev_dir: str, folder: str, masks_path: str, argv_rest) -> tuple[float, dict]:
    import json
    import subprocess

    env = dict(os.environ, PYTHONPATH=rev_dir)
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", rev_dir, folder, masks_path,
                           *argv_rest], capture_output=True, text=True, env=env, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"the --against child failed:\n{proc.stderr[-3000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    if not result["package"].startswith(rev_dir):
        raise RuntimeError(f"the --against child imported dataspex from {result['package']}, not {rev_dir}")
    return result["seconds"], {int(k): np.array(v) for k, v in result["losses"].items()}


def bench_real(opts, argv_rest, peak: float) -> list[dict]:
    """The default engine on real texts (benchmarks/realdata.py) at ``--n-train``, beside the naive loop and,
    with ``--against REV``, the engine of commit REV, interleaved round by round."""
    import subprocess
    import tempfile

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import realdata
    from dataspex.train.naive import train_masks as naive

    work = tempfile.mkdtemp(prefix="dataspex-throughput-")
    folder = os.path.join(work, "data")
    realdata.write(realdata.build(opts.real, opts.n_train, n_test=opts.n_test, n_eval=0, seed=0,
                                  min_chars=opts.min_chars, max_chars=opts.max_chars), folder)
    cfg = real_config(opts, folder)
    base, train, test = setup(cfg)
    lengths = [len(ids) for ids in train.input_ids]
    print(f"  {opts.real}: n_train={len(train)}, n_test={len(test)}, tokens per text mean {np.mean(lengths):.1f}, "
          f"max {max(lengths)} (model.max_length={opts.max_length})", file=sys.stderr)
    rng = np.random.default_rng(0)
    masks = (rng.random((opts.masks, len(train))) < cfg.design.p).astype(np.uint8)
    masks[masks.sum(axis=1) == 0, 0] = 1
    masks_path = os.path.join(work, "masks.npy")
    np.save(masks_path, masks)
    rev_dir = None
    if opts.against:
        rev_dir = os.path.join(work, "rev")
        os.makedirs(rev_dir)
        archive = subprocess.run(["git", "-C", ROOT, "archive", opts.against, "dataspex"], capture_output=True,
                                 check=True).stdout
        subprocess.run(["tar", "-x", "-C", rev_dir], input=archive, check=True)
    args = (base, cfg.lora, cfg.train, train, test, masks)
    all_ids = np.arange(opts.masks)
    seconds = {"naive": [], "engine": [], "against": []}
    losses = {"naive": {}, "engine": {}, "against": {}}
    for r in range(opts.rounds):
        ids = all_ids[(r * opts.naive_masks + np.arange(opts.naive_masks)) % opts.masks]
        t, out = run(naive, args, ids)
        seconds["naive"].append(t / len(ids))
        losses["naive"].update(out)
        t, out = run(engine_with("auto"), args, all_ids)
        seconds["engine"].append(t / len(all_ids))
        losses["engine"].update(out)
        if rev_dir:
            t, out = _run_against(rev_dir, folder, masks_path, argv_rest)
            seconds["against"].append(t / len(all_ids))
            losses["against"].update(out)
        print(f"  round {r + 1}/{opts.rounds}: " + ", ".join(
            f"{k} {statistics.median(v):.3f} s/retrain" for k, v in seconds.items() if v), file=sys.stderr)
    flops = {"naive": count_flops(naive, args, all_ids[:1]),
             "engine": count_flops(engine_with("auto"), args, all_ids[: min(opts.masks, 16)])}
    rows = []
    for name in ("naive", "engine", "against"):
        if not seconds[name]:
            continue
        per = statistics.median(seconds[name])
        ratios = [n / e for n, e in zip(seconds["naive"], seconds[name])]
        row = {"engine": {"naive": "naive", "engine": "batched (this checkout)",
                          "against": f"batched at {opts.against}"}[name],
               "s_per": per, "x_naive": statistics.median(ratios), "gflop": flops.get(name, float("nan")) / 1e9,
               "diff": max((float(np.abs(losses[name][m] - losses["naive"][m]).max()) for m in losses["naive"]),
                           default=0.0)}
        if name == "engine" and seconds["against"]:
            row["x_against"] = statistics.median([a / e for a, e in zip(seconds["against"], seconds["engine"])])
        rows.append(row)
    for row in rows:
        row["gflops"] = row["gflop"] / row["s_per"]
        row["peak"] = row["gflops"] * 1e9 / peak
    return rows


def print_real(rows, opts, peak):
    print(f"\ntorch {torch.__version__}, {opts.threads} thread(s), dense fp32 matmul peak {peak / 1e9:.0f} GFLOP/s; "
          f"{opts.real} at n_train={opts.n_train} ({opts.min_chars}-{opts.max_chars} characters), "
          f"model.max_length={opts.max_length}, lora.layers="
          f"{real_layers(opts)}{''.join(' ' + o for o in opts.set)}; {opts.masks} masks per engine run, "
          f"{opts.naive_masks} per naive run, {opts.rounds} interleaved round(s)\n")
    print("| engine | s / retrain | x naive | x --against | GFLOP / retrain | GFLOP/s | % of peak "
          "| max abs diff vs naive |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['engine']} | {r['s_per']:.3f} | {r['x_naive']:.1f} | {_num(r.get('x_against', math.nan), '.2f')} "
              f"| {_num(r['gflop'], '.1f')} | {_num(r['gflops'], '.1f')} | {_num(100 * r['peak'], '.0f', '%')} "
              f"| {r['diff']:.1e} |")
    worst = max(r["diff"] for r in rows)
    print(f"\n{'OK' if worst <= opts.tolerance else 'FAIL'}: test losses within {worst:.1e} of naive's "
          f"(bound {opts.tolerance:g} nats)")
    return int(worst > opts.tolerance)


def _parser():
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
    parser.add_argument("--real", choices=("fortunes", "wordnet"), default=None,
                        help="real texts (benchmarks/realdata.py) instead of the demo; the default engine only")
    parser.add_argument("--n-train", type=int, default=256, help="with --real")
    parser.add_argument("--n-test", type=int, default=64, help="with --real")
    parser.add_argument("--max-length", type=int, default=64, help="with --real: model.max_length (tokens)")
    parser.add_argument("--min-chars", type=int, default=40, help="with --real: shortest text (characters)")
    parser.add_argument("--max-chars", type=int, default=400, help="with --real: longest text (characters)")
    parser.add_argument("--against", default=None, metavar="REV",
                        help="with --real: also time the engine of git commit REV, in a child process")
    parser.add_argument("--tolerance", type=float, default=1e-3,
                        help="with --real: max abs test-loss difference from naive (12 epochs amplify rounding)")
    return parser


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["--child"]:
        return _against_child(argv[1:])
    opts = _parser().parse_args(argv)
    opts.masks = opts.masks or (16 if opts.quick else 64)
    opts.naive_masks = opts.naive_masks or (2 if opts.quick else 6)
    opts.rounds = opts.rounds or (1 if opts.quick else 2)
    opts.ks = [k if k == "auto" else int(k) for k in opts.ks.split(",")]
    torch.set_num_threads(opts.threads)
    logging.basicConfig(level=logging.WARNING)
    import transformers

    transformers.logging.set_verbosity_error()
    peak = matmul_peak(opts.threads)
    if opts.real:
        rest = [a for a in argv if a != "--quick"]
        rows = bench_real(opts, rest, peak)
        peak = max(peak, matmul_peak(opts.threads))
        for r in rows:
            r["peak"] = r["gflops"] * 1e9 / peak
        return print_real(rows, opts, peak)
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
