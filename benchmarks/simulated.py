"""Does a simulated retrain explain what the pair model leaves? A cheap stand-in for the fine-tune as a feature.

``gap.py`` found the loss the quadratic model misses to be a dense, nonlinear function of the mask that no model
of the 0/1 mask alone (ridge, all-order kernels, trees, a monotone link) explains. A learner knows something those
models do not: which training texts resemble which test texts. This script gives the datamodel that knowledge as
one extra input per test example: a softmax regression on the frozen base model's text embeddings (the mean of
the last hidden layer, as ``design.units=cluster:K`` uses), trained to convergence on each mask's kept examples
(L2 strength 1 / C, intercept free), and its cross-entropy on each test text. It retrains in milliseconds, so it
can be evaluated on any mask, and it is nonlinear in the mask the way a fitted classifier is (a test text's loss
depends on which of its near neighbours are kept, and on what else competes with them).

At a budget of m fit masks (the first m of the run's), per test example t:

* ``simulated``: y_t ~ a_t + b_t s_t(mask), least squares on the fit masks (the stand-in alone);
* ``quadratic + simulated``: the quadratic model's prediction plus a_t + b_t s_t fitted on its fit-mask
  residuals (the stand-in as a correction of the pair model);

scored by pooled held-out R^2 on the run's held-out masks beside the run's noise ceiling. C is chosen per run from
``--C`` by the fit masks alone (the residual fit's pooled R^2 on a fixed fifth of them, the rest fitting a_t, b_t).

``--features finetuned`` uses, instead of the base model's embeddings, the classifier's input under one model
fine-tuned by the run's recipe on the full training set (features the top layer has adapted to the task).

    python benchmarks/simulated.py --run /tmp/runs/f256p_4096 --m 1024     # and w256p_4096, f256u_m1024, w256u_m1024
    python benchmarks/simulated.py --run /tmp/runs/f256p_4096 --m 1024 --features finetuned
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from budget import estimator_config, run_splits  # noqa: E402


def simulated_losses(train_vectors: np.ndarray, train_labels: np.ndarray, test_vectors: np.ndarray,
                     test_labels: np.ndarray, masks: np.ndarray, C: float, n_classes: int,
                     chunk: int = 512) -> np.ndarray:
    """(M, T) cross-entropy (nats) of each test text under a softmax regression trained on each mask's kept
    training texts: per mask, minimise sum over kept i of CE(W x_i + b, y_i) + ||W||^2 / (2 C) (b unpenalised),
    the objective of scikit-learn's multinomial ``LogisticRegression(C=C)``. Inputs are standardised with the
    training texts' mean and standard deviation first. Shapes: vectors (n, d) and (T, d), labels (n,) and (T,)
    ints in [0, n_classes), masks (M, n) 0/1. Masks are solved ``chunk`` at a time, jointly by L-BFGS in float64
    (their objectives are separate, so the joint minimum is each mask's minimum)."""
    import torch

    mean, scale = train_vectors.mean(0), train_vectors.std(0) + 1e-6
    A = torch.tensor((train_vectors - mean) / scale, dtype=torch.float64)
    B = torch.tensor((test_vectors - mean) / scale, dtype=torch.float64)
    y_train, y_test = torch.as_tensor(np.asarray(train_labels)), torch.as_tensor(np.asarray(test_labels))
    out = np.empty((len(masks), len(test_labels)))
    for start in range(0, len(masks), chunk):
        keep = torch.tensor(masks[start:start + chunk], dtype=torch.float64)
        M = len(keep)
        W = torch.zeros(M, A.shape[1], n_classes, dtype=torch.float64, requires_grad=True)
        b = torch.zeros(M, n_classes, dtype=torch.float64, requires_grad=True)
        opt = torch.optim.LBFGS([W, b], lr=1.0, max_iter=2000, history_size=20, tolerance_grad=1e-10,
                                tolerance_change=1e-14, line_search_fn="strong_wolfe")

        def objective():
            opt.zero_grad()
            logits = torch.einsum("nd,mdk->mnk", A, W) + b[:, None]
            nll = torch.nn.functional.cross_entropy(logits.reshape(-1, n_classes), y_train.repeat(M),
                                                    reduction="none").reshape(M, -1)
            total = (nll * keep).sum() + (W ** 2).sum() / (2.0 * C)
            total.backward()
            return total

        opt.step(objective)
        with torch.no_grad():
            logits = torch.einsum("td,mdk->mtk", B, W) + b[:, None]
            out[start:start + M] = torch.nn.functional.cross_entropy(
                logits.reshape(-1, n_classes), y_test.repeat(M), reduction="none").reshape(M, -1).numpy()
    return out


def line_fit(S: np.ndarray, Y: np.ndarray) -> np.ndarray:
    """(2, T): per column t the least-squares a_t, b_t of Y[:, t] ~ a_t + b_t S[:, t]. S, Y: (m, T)."""
    S_c, Y_c = S - S.mean(0), Y - Y.mean(0)
    var = (S_c ** 2).sum(0)
    slope = np.where(var > 0, (S_c * Y_c).sum(0) / np.where(var > 0, var, 1.0), 0.0)
    return np.stack([Y.mean(0) - slope * S.mean(0), slope])


def text_embeddings(cfg, features: str = "base") -> tuple:
    """The run's training and test texts as vectors, and their labels and class count. ``base``: the frozen base
    model's mean-pooled last layer; ``finetuned``: the input of the classifier (the pooled [CLS]) of one model
    fine-tuned by the run's recipe on the full training set, i.e. features the top layer has adapted to the task."""
    import torch

    from dataspex.core.data import load_data
    from dataspex.core.models import load_base_model, load_tokenizer
    from dataspex.train.common import encode
    from dataspex.train.embed import embed
    from dataspex.train.naive import finetune

    data = load_data(cfg.data, cfg.model.task)
    if data.task != "classification":
        raise SystemExit("error: the simulated retrain is a softmax regression: classification runs only")
    tokenizer = load_tokenizer(cfg.model)
    base = load_base_model(cfg.model, len(data.label_names), int(cfg.train.seed))
    splits = [encode(split, tokenizer, data.task, cfg.model.max_length) for split in (data.train, data.test)]
    if features == "base":
        vectors = [embed(base, split) for split in splits]
    elif features == "finetuned":
        # a mask id far from any design's, as the TRAK stage's full-set models use
        model = finetune(base, cfg.lora, cfg.train, splits[0], np.ones(len(splits[0]), dtype=np.uint8), 2**31 - 1)
        model.eval()
        head = [m for name, m in model.named_modules() if name.endswith("classifier")][0]
        caught = []
        hook = head.register_forward_hook(lambda module, args, output: caught.append(args[0].detach().clone()))
        vectors = []
        with torch.no_grad():
            for split in splits:
                caught.clear()
                for start in range(0, len(split), 64):
                    batch = split.batch(list(range(start, min(start + 64, len(split)))))
                    model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
                vectors.append(torch.cat(caught).double().numpy())
        hook.remove()
    else:
        raise SystemExit(f"error: --features {features!r}: base or finetuned")
    return vectors[0], np.asarray(data.train.labels), vectors[1], np.asarray(data.test.labels), len(data.label_names)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", required=True, help="a finished run with held-out masks and seed replicates")
    parser.add_argument("--m", type=int, default=None, help="fit masks (the first m of the run's; default 4n)")
    parser.add_argument("--C", default="0.03,0.1,0.3,1", help="inverse L2 strengths tried, comma-separated")
    parser.add_argument("--estimator", default="quadratic", help="budget.estimator_config spec of the pair model")
    parser.add_argument("--features", default="base", choices=("base", "finetuned"),
                        help="text vectors of the stand-in: the frozen base model's, or a full-set fine-tune's")
    opts = parser.parse_args(argv)

    from hydra.utils import instantiate

    from dataspex.core.metrics import pooled_r2
    from dataspex.fit.faithfulness import noise_ceiling

    run = run_splits(opts.run)
    cfg, T, n = run["cfg"], run["T"], run["n"]
    m = opts.m or 4 * n
    if m > len(run["X_fit"]):
        raise SystemExit(f"error: {opts.run} has {len(run['X_fit'])} fit masks, --m {m} asks more")
    X_fit, Y_fit = run["X_fit"][:m], run["Y_fit"][:m, :T]
    X_ho, Y_ho = run["X_ho"], run["Y_ho"][:, :T]
    ceiling = noise_ceiling(run["design"], run["results"], "loss")["pooled"]
    started = time.perf_counter()
    train_vectors, train_labels, test_vectors, test_labels, n_classes = text_embeddings(cfg, opts.features)
    print(f"{opts.run}: n={n}, T={T}, m={m}, {len(X_ho)} held-out masks, ceiling {ceiling}; embedded in "
          f"{time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pair_model = instantiate(estimator_config(cfg, opts.estimator)).fit(X_fit, Y_fit)
    q_fit, q_ho = pair_model.predict(X_fit), pair_model.predict(X_ho)
    # C by the fit masks alone: the residual line fitted on four fifths, scored on the last fifth
    order = np.random.default_rng(0).permutation(m)
    check, rest = order[: m // 5], order[m // 5:]
    best, results = None, {}
    for C in (float(c) for c in opts.C.split(",") if c):
        started = time.perf_counter()
        S = simulated_losses(train_vectors, train_labels, test_vectors, test_labels, np.vstack([X_fit, X_ho]),
                             C, n_classes)
        S_fit, S_ho = S[:m], S[m:]
        line = line_fit(S_fit[rest], Y_fit[rest] - q_fit[rest])
        on_check = pooled_r2(Y_fit[check] - q_fit[check], line[0] + line[1] * S_fit[check])
        results[C] = (S_fit, S_ho)
        alone = line_fit(S_fit, Y_fit)
        print(f"C={C}: {time.perf_counter() - started:.0f} s; residual fit on the held-back fifth of the fit masks "
              f"{on_check:.4f}; (held-out, for the record) simulated alone "
              f"{pooled_r2(Y_ho, alone[0] + alone[1] * S_ho):.3f}", file=sys.stderr, flush=True)
        if best is None or on_check > best[0]:
            best = (on_check, C)
    C = best[1]
    S_fit, S_ho = results[C]
    alone, line = line_fit(S_fit, Y_fit), line_fit(S_fit, Y_fit - q_fit)

    def corr(a, b):
        a, b = a - a.mean(0), b - b.mean(0)
        return (a * b).sum(0) / np.sqrt((a ** 2).sum(0) * (b ** 2).sum(0) + 1e-300)

    out = {"run": opts.run, "m": m, "C": C, "features": opts.features, "ceiling": ceiling,
           "pair_model": pooled_r2(Y_ho, q_ho),
           "simulated": pooled_r2(Y_ho, alone[0] + alone[1] * S_ho),
           "pair_model_plus_simulated": pooled_r2(Y_ho, q_ho + line[0] + line[1] * S_ho),
           "median_corr_with_loss": float(np.median(corr(S_ho, Y_ho))),
           "median_corr_with_residual": float(np.median(corr(S_ho, Y_ho - q_ho)))}
    print(f"| run | m | C | {opts.estimator} | simulated alone | {opts.estimator} + simulated | median corr: loss "
          f"/ {opts.estimator}'s residual (held-out) |")
    print("|---|---:|---:|---:|---:|---:|---|")
    share = (lambda r: f"{r:.3f} ({r / ceiling:.0%})") if ceiling else (lambda r: f"{r:.3f}")
    name = f"{os.path.basename(opts.run.rstrip('/'))} ({opts.features} features)"
    print(f"| {name} | {m} | {C:g} | {share(out['pair_model'])} | "
          f"{share(out['simulated'])} | {share(out['pair_model_plus_simulated'])} | "
          f"{out['median_corr_with_loss']:.2f} / {out['median_corr_with_residual']:.2f} |")
    return out


if __name__ == "__main__":
    main()
