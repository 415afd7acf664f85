"""The batched engine on a CUDA GPU: equivalence with the naive loop, and throughput in fp32 and bf16.

    python benchmarks/engine_gpu.py [--masks 256] [--random-weights]

Uses the bundled MiniLM when its package is installed, else (``--random-weights``, or on a machine without the
package) a randomly initialised BERT of the same shape - the speed and the equivalence do not depend on the
weights. The naive reference runs on the CPU in fp32; the engine's fp32 losses must match it to 1e-4.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from dataspex.train.common import Encoded, encode
from dataspex.train.engine import train_masks as engine_train
from dataspex.train.naive import train_masks as naive_train


class Cfg(dict):
    """A dict with attribute access: enough of OmegaConf's interface for the training code."""

    __getattr__ = dict.__getitem__


LORA = Cfg(r=8, alpha=16, dropout=0.0, target_modules=["query", "value"], layers=None, train_head=True)


def train_cfg(**kw) -> Cfg:
    base = dict(epochs=12, batch_size=16, lr=5e-3, weight_decay=0.0, seed=0, seed_policy="per_mask",
                adapters_per_pass="auto", prefix_cache="auto", device="cpu", precision="fp32")
    return Cfg(base, **kw)


def model_and_data(random_weights: bool):
    from dataspex.core.data import Split
    from dataspex.core.demo import make_demo

    demo = make_demo()
    if not random_weights:
        try:
            from omegaconf import OmegaConf

            from dataspex.core.models import load_base_model, load_tokenizer

            mc = OmegaConf.create({"name_or_path": "bundled:all-minilm-l6-v2", "task": "classification"})
            tok = load_tokenizer(mc)
            return (load_base_model(mc, 2, 0), encode(Split(demo.train_texts, demo.train_labels), tok,
                                                     "classification", 64),
                    encode(Split(demo.test_texts, demo.test_labels), tok, "classification", 64), "bundled MiniLM")
        except Exception as exc:  # no package / no omegaconf on this machine
            print(f"bundled model unavailable ({exc.__class__.__name__}); using random weights")
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=30522, hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
                     intermediate_size=1536, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                     num_labels=2)
    model = BertForSequenceClassification(cfg).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    rng = np.random.default_rng(0)

    def fake(n):  # ~13-token sentences: [CLS] words [SEP]
        ids = [torch.tensor([101, *rng.integers(1000, 30000, size=rng.integers(6, 12)), 102]) for _ in range(n)]
        return Encoded(ids, "classification", targets=torch.as_tensor(rng.integers(0, 2, n)), pad_id=0)

    return model, fake(len(demo.train_texts)), fake(len(demo.test_texts)), "random-weight MiniLM-shaped BERT"


def timed(fn, *args):
    start = time.perf_counter()
    out = {i: (loss, m) for i, loss, m, _ in fn(*args)}
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return out, time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--masks", type=int, default=256)
    ap.add_argument("--naive-masks", type=int, default=8)
    ap.add_argument("--random-weights", action="store_true")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("no CUDA device: this benchmark is for GPU machines")
    base, train, test, what = model_and_data(args.random_weights)
    n = len(train)
    masks = (np.random.default_rng(1).random((args.masks, n)) < 0.5).astype(np.uint8)
    ids = np.arange(args.masks)
    print(f"model: {what}; {n} training, {len(test)} test examples; GPU {torch.cuda.get_device_name()}")

    k = args.naive_masks
    naive, t_naive = timed(naive_train, base, LORA, train_cfg(), train, test, masks[:k], ids[:k])
    gpu_base = base  # the engine moves what it needs to the device itself
    rows = [("naive loop, CPU fp32", k, t_naive, None)]
    for precision in ("fp32", "bf16"):
        cfg = train_cfg(device="cuda", precision=precision)
        timed(engine_train, gpu_base, LORA, cfg, train, test, masks[:k], ids[:k])  # warm-up (caches, kernels)
        out, secs = timed(engine_train, gpu_base, LORA, cfg, train, test, masks, ids)
        diff = max(float(np.abs(out[i][0] - naive[i][0]).max()) for i in range(k))
        rows.append((f"batched engine, CUDA {precision}", args.masks, secs, diff))
    per_min_naive = k / t_naive * 60
    print(f"\n| engine | masks | seconds | fine-tunes/min | x naive | max abs loss diff vs naive |")
    print("|---|---|---|---|---|---|")
    for name, m, secs, diff in rows:
        rate = m / secs * 60
        d = "-" if diff is None else f"{diff:.2e}"
        print(f"| {name} | {m} | {secs:.1f} | {rate:.0f} | {rate / per_min_naive:.1f} | {d} |")


if __name__ == "__main__":
    main()
