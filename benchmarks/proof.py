"""Proof on real retraining (issue 8): every estimator against exact ground truth and planted pairs.

Three experiments, all on real LoRA fine-tunes of the bundled MiniLM with the default recipe
(``conf/train/default.yaml``: 12 epochs, batch 16, lr 5e-3, seed_policy=per_mask; ``conf/lora/default.yaml``:
r=8 on query/value of the top layer, head trained) and the batched engine; the output is the test loss (nats):

* ``exact``: a demo task with n = 10 training examples (1 harmful + 1 redundant planted pair, 6 bulk). All
  2^10 - 1 non-empty subsets are retrained; f(empty) is the base model with its untrained head (no fine-tune:
  LoRA B = 0). So the true Fourier / Moebius spectrum of this training process (one fixed per-mask seed each)
  is known exactly (``fwht``). For budgets m, each estimator fits m masks drawn from the cache (several
  repetitions); scored on every subset it did not see (R^2), by Spearman correlation of its pair scores with
  the true ones (estimand "uniform" = 4 F[{i,j}], and "full" = second difference at the full set) and by
  top-5 pair recovery (|top-5 estimated ∩ top-5 true| / 5, by |score|, averaged over test examples).
* ``planted``: the demo generator at n = 64 (default demo) and n = 256 (``--parts planted256``); recall@10 of
  the planted harmful and redundant pairs (distinct pairs ranked over all test outputs, as the report does)
  against the number of retrains, plus held-out R^2 on random masks.
* ``noise``: the same masks retrained with other per-mask seeds (mask ids offset, so new LoRA inits and data
  orders, same head init); the R^2 ceiling 1 - sigma^2 / Var(y) that seed noise implies.

Every retrain is cached in a RunStore under ``--cache`` (default ``benchmarks/.cache``), keyed by a hash of the
mask, so any run resumes where it stopped and every estimator reuses the same retrains.

    python -m benchmarks.proof                      # everything (exact, planted n=64, noise, planted n=256)
    python -m benchmarks.proof --parts exact,noise  # a subset
    python -m benchmarks.proof --quick --cache /tmp/q --out /tmp/q/fig   # smoke run (< 2 minutes)

Writes ``<out>/proof_results.json``, ``<out>/proof_*.png`` and prints the markdown tables.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import sys
import time
import warnings

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
log = logging.getLogger("proof")

ESTIMATORS = ("linear", "trak", "quadratic", "proxyspex", "spex", "pairwise_linear", "pairwise_trak")


# ---------------------------------------------------------------------------------------------- config

def compose(overrides: list[str]):
    from hydra import compose as hcompose, initialize_config_dir

    with initialize_config_dir(version_base=None, config_dir=os.path.join(ROOT, "conf")):
        return hcompose(config_name="config", overrides=["train.engine=batched", *overrides])


def mask_id(mask: np.ndarray, rep: int = 0) -> int:
    """A content hash of the mask (56 bits), shifted per noise replicate: the same mask always gets the same
    id (hence the same per-mask training seed) in every design of this benchmark."""
    digest = hashlib.sha256(np.packbits(np.asarray(mask, dtype=np.uint8)).tobytes()).digest()
    return int.from_bytes(digest[:7], "little") + (int(rep) << 57)


class Task:
    """A data set + model + recipe, with a resumable retraining cache (one RunStore per noise replicate)."""

    def __init__(self, name: str, cache: str, overrides: list[str], chunk: int = 64):
        import torch

        from dataspex.core.data import load_data
        from dataspex.core.models import load_base_model, load_tokenizer
        from dataspex.train import get_engine
        from dataspex.train.common import encode

        self.name, self.cache, self.chunk = name, cache, chunk
        self.cfg = compose(overrides)
        self.data = load_data(self.cfg.data, self.cfg.model.task)
        tok = load_tokenizer(self.cfg.model)
        n_labels = len(self.data.label_names) if self.data.label_names else None
        self.base = load_base_model(self.cfg.model, n_labels, self.cfg.train.seed)
        self.train = encode(self.data.train, tok, self.data.task, self.cfg.model.max_length)
        self.test = encode(self.data.test, tok, self.data.task, self.cfg.model.max_length)
        self.engine = get_engine(self.cfg.train.engine)
        self.n, self.T = self.data.n_train, self.data.n_test
        with torch.no_grad():
            self.empty = self._untrained()
        self.n_trained = 0
        self.train_seconds = 0.0

    def _untrained(self):
        """f(empty): the base model with its initial head (what every fine-tune starts from)."""
        from dataspex.train.common import margins, per_example_loss

        b = self.test.batch(list(range(len(self.test))))
        logits = self.base(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
        return (per_example_loss(logits, b["targets"], self.data.task).double().numpy(),
                margins(logits, b["targets"], self.data.task).double().numpy())

    def _store(self, rep: int):
        from dataspex.stages.rundir import fingerprint
        from dataspex.store import RunStore

        store = RunStore(os.path.join(self.cache, self.name if rep == 0 else f"{self.name}-seedrep{rep}"))
        store.check_fingerprint(fingerprint(self.cfg, self.data), create=True)
        return store

    def outputs(self, masks: np.ndarray, rep: int = 0, kind: str = "loss") -> np.ndarray:
        """(m, T) outputs of ``masks``, retraining (and caching) whatever is missing."""
        from dataspex.core.outputs import modelled_output
        from dataspex.design import Design

        masks = np.asarray(masks, dtype=np.uint8)
        store = self._store(rep)
        ids = np.array([mask_id(x, rep) for x in masks], dtype=np.int64)
        nonempty = masks.any(axis=1)
        want = {}
        for i, x, ok in zip(ids, masks, nonempty):
            if ok:
                want[int(i)] = x
        design = store.load_design() if store.has_design() else Design(np.zeros((0, self.n), np.uint8),
                                                                      np.zeros(0, np.int64), np.zeros(0, str))
        known = set(design.mask_ids.tolist())
        new = [i for i in want if i not in known]
        if new:
            design = Design(np.vstack([design.masks, np.array([want[i] for i in new])]),
                            np.concatenate([design.mask_ids, np.array(new, dtype=np.int64)]),
                            np.concatenate([design.roles, np.full(len(new), "proof")]), {"kind": "proof"})
            store.save_design(design)
        done = store.done_ids()
        todo = np.array(sorted(i for i in want if i not in done), dtype=np.int64)
        if len(todo):
            started = time.perf_counter()
            log.info("%s rep %d: retraining %d masks (%d cached)", self.name, rep, len(todo), len(want) - len(todo))
            for s in range(0, len(todo), self.chunk):
                chunk_ids = todo[s: s + self.chunk]
                chunk_masks = np.array([want[int(i)] for i in chunk_ids])
                out_ids, losses, margs = [], [], []
                for mid, loss, marg, _ in self.engine(self.base, self.cfg.lora, self.cfg.train, self.train,
                                                      self.test, chunk_masks, chunk_ids):
                    out_ids.append(mid)
                    losses.append(loss)
                    margs.append(marg)
                store.write_results(out_ids, np.array([want[int(i)] for i in out_ids]), np.array(losses),
                                    np.array(margs), {"engine": "batched"})  # engines yield in pass order
                log.info("%s rep %d: %d/%d retrained (%.2f s/mask)", self.name, rep, min(s + self.chunk, len(todo)),
                         len(todo), (time.perf_counter() - started) / min(s + self.chunk, len(todo)))
            self.n_trained += len(todo)
            self.train_seconds += time.perf_counter() - started
        res = store.load_results(design)
        table = dict(zip(res.mask_ids.tolist(), range(len(res))))
        Y = res.outputs(kind)
        empty = modelled_output(kind, *self.empty)  # f(empty) as the same output (a cost, like Y)
        return np.array([Y[table[int(i)]] if ok else empty for i, ok in zip(ids, nonempty)])


# ------------------------------------------------------------------------------------------ estimators

def trak_scores(task: Task, cache: str) -> np.ndarray | None:
    """TRAK scores (n, T) of the task's model (cached); None (with a warning) when the TRAK stage fails."""
    path = os.path.join(cache, f"{task.name}-trak.npy")
    if os.path.exists(path):
        return np.load(path)
    try:
        from dataspex.fit.trak.gradients import compute_trak_scores

        scores = np.asarray(compute_trak_scores(task.cfg, data=task.data, base=task.base), dtype=np.float64)
    except Exception as exc:  # TRAK is optional here: the benchmark reports it as missing
        log.warning("TRAK unavailable (%s: %s); skipping it", type(exc).__name__, exc)
        return None
    os.makedirs(cache, exist_ok=True)
    np.save(path, scores)
    return scores


def trak_loss_weights(scores, masks, Y):
    """TRAK scores mapped to per-example loss effects (n, T) by the calibration on (masks, Y)."""
    from dataspex.fit.trak import fit_calibration

    cal = fit_calibration(scores, masks, Y)
    return cal, scores * cal.scale[None, :]


def first_order_result(weights: np.ndarray, intercept: np.ndarray, name: str):
    """An InteractionResult of a first-order model f = c + sum_i w_i x_i (no pairs)."""
    from dataspex.estimators import InteractionResult

    n = weights.shape[0]
    keys = [()] + [(i,) for i in range(n)]
    fourier = np.vstack([intercept + weights.sum(axis=0) / 2, -weights / 2])
    return InteractionResult(n, keys, fourier, estimator=name)


def estimator_factory(quick: bool):
    from dataspex.estimators import LinearDatamodel, ProxySPEX, QuadraticProxy

    if quick:
        return {"linear": lambda: LinearDatamodel(cv=3, n_alphas=10),
                "quadratic": lambda: QuadraticProxy(cv=3, n_alphas=10),
                "proxyspex": lambda: ProxySPEX(max_depth=(3,), n_estimators=(100,), learning_rate=(0.1,),
                                               search="none", cv=3)}
    return {"linear": LinearDatamodel, "quadratic": QuadraticProxy, "proxyspex": ProxySPEX}


def pairwise_K(budget: int, n: int) -> int:
    K = 1
    while K + 1 <= n and 1 + (K + 1) + (K + 1) * K // 2 <= budget:
        K += 1
    return K


def fit_all(task: Task, pool: np.ndarray, m: int, which, scores, quick: bool, seed: int, Y_pool=None):
    """Fit every estimator at budget m. Returns {name: (result, masks_used)}: random-mask estimators use the
    first m pool rows; SPEX its own design (<= m masks); pairwise_* the full-set pair design of the top-K
    screened examples (linear screen: m/2 random masks + K from the rest; TRAK screen: all m)."""
    from dataspex.estimators import SPEX, Pairwise, SpexDesign, screen_candidates

    names = [f"test_{t}" for t in range(task.T)]
    fx = estimator_factory(quick)
    out = {}
    X = pool[:m]
    Y = task.outputs(X) if Y_pool is None else Y_pool[:m]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in ("linear", "quadratic", "proxyspex"):
            if name in which:
                started = time.perf_counter()
                est = fx[name]().fit(X, Y)
                out[name] = (est.result_, m, time.perf_counter() - started)
        if "trak" in which and scores is not None:
            cal, w = trak_loss_weights(scores, X, Y)
            out["trak"] = (first_order_result(w, cal.intercept, "TRAK"), m, 0.0)
        if "spex" in which:
            try:
                design = SpexDesign(task.n, budget=m, max_degree=2, random_state=seed)
            except Exception as exc:
                log.info("spex at m=%d: %s", m, exc)
            else:
                masks = design.masks()
                started = time.perf_counter()
                est = SPEX(design=design).fit(masks, task.outputs(masks))
                out["spex"] = (est.result_, design.n_masks, time.perf_counter() - started)
        for screen in ("linear", "trak"):
            name = f"pairwise_{screen}"
            if name not in which or (screen == "trak" and scores is None):
                continue
            if screen == "linear":
                half = m // 2
                lin = fx["linear"]().fit(X[:half], Y[:half])
                s, rest = lin.coef_, m - half
            else:
                s, rest = scores, m
            K = pairwise_K(rest, task.n)
            cand = screen_candidates(s, K)
            masks = Pairwise.design(task.n, cand)
            started = time.perf_counter()
            est = Pairwise().fit(masks, task.outputs(masks))
            out[name] = (est.result_, (m - rest) + len(masks), time.perf_counter() - started)
    for res, _, _ in out.values():
        res.output_names = names
    return out


# ---------------------------------------------------------------------------------------------- metrics

def _spearman(a, b) -> float:
    from scipy.stats import spearmanr

    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    return float(spearmanr(a, b).statistic)


def pair_metrics(result, truth, T: int, estimand: str, k: int = 5) -> tuple[float, float]:
    """Mean over test outputs of Spearman(est, true pair scores) and top-k overlap by |score|."""
    iu = np.triu_indices(truth.n_features, 1)
    rhos, tops = [], []
    for t in range(T):
        est = result.pair_scores(estimand, output=t)[iu]
        tru = truth.pair_scores(estimand, output=t)[iu]
        rhos.append(_spearman(est, tru))
        top_true = set(np.argsort(-np.abs(tru), kind="stable")[:k].tolist())
        top_est = set(np.argsort(-np.abs(est), kind="stable")[:k].tolist()) if np.any(est) else set()
        tops.append(len(top_true & top_est) / k)
    rhos = [r for r in rhos if np.isfinite(r)]
    return (float(np.mean(rhos)) if rhos else float("nan")), float(np.mean(tops))


def planted_recall(result, planted, T: int, estimand: str, k: int = 10) -> dict:
    """recall@k of the planted pairs of each kind, ranked as the report does (dataspex.fit.ranking)."""
    from dataspex.fit.ranking import ranked_pairs
    from dataspex.report import planted_recall as recall

    out = {}
    for kind in ("harmful", "redundant"):
        table = ranked_pairs(result, kind, k, estimand, T)
        r = recall(table, planted, kind)
        out[kind] = None if r is None else r["recall"]
    return out


def r2(result, X, Y) -> float:
    """Faithfulness R^2 averaged over test outputs (the project's headline metric)."""
    from dataspex.core.metrics import faithfulness_r2

    return float(faithfulness_r2(Y, result.predict(X)))


def r2_pooled(result, X, Y) -> float:
    """1 - total SSE / total SST over all outputs: not dominated by a test example whose loss barely moves."""
    from dataspex.core.metrics import pooled_r2

    return pooled_r2(Y, result.predict(X))


# ---------------------------------------------------------------------------------------------- experiments

def exact_experiment(args, scores_cache) -> dict:
    from dataspex.estimators import InteractionResult
    from dataspex.fit.estimators.transforms import all_masks, fwht

    n = args.exact_n
    task = Task(f"exact_n{n}", args.cache, [f"data.n_train={n}", "data.n_harmful=1", "data.n_redundant=1",
                                             f"data.n_test_bulk={args.exact_test_bulk}"] + args.extra)
    cube = all_masks(n)
    started = time.perf_counter()
    f = task.outputs(cube)  # (2^n, T): retrains every non-empty subset (cached)
    log.info("exact: %d subsets ready (%.0f s)", len(cube), time.perf_counter() - started)
    F = fwht(f) / 2 ** n
    keys = [tuple(int(i) for i in np.flatnonzero(row)) for row in cube]
    truth = InteractionResult(n, keys, F, estimator="exact")
    scores = trak_scores(task, args.cache) if "trak" in args.estimators else None
    energy = (F[1:] ** 2).sum(axis=0)
    deg = cube.sum(axis=1)
    spectrum = {f"degree_{d}": float(((F[deg == d] ** 2).sum(axis=0) / energy).mean()) for d in range(1, n + 1)}
    rows = []
    for rep in range(args.reps):
        rng = np.random.default_rng(1000 + rep)
        order = rng.permutation(np.arange(1, 2 ** n))  # random non-empty subsets, without replacement
        pool = cube[order]
        for m in args.exact_budgets:
            fits = fit_all(task, pool, m, args.estimators, scores, args.quick, seed=rep, Y_pool=f[order])
            for name, (res, used, secs) in fits.items():
                seen = {mask_id(x) for x in (pool[:m] if name in ("linear", "quadratic", "proxyspex", "trak")
                                             else cube[:0])}
                if name == "spex":
                    from dataspex.estimators import SpexDesign

                    seen = {mask_id(x) for x in SpexDesign(n, budget=m, max_degree=2, random_state=rep).masks()}
                held = np.array([mask_id(x) not in seen for x in cube])
                row = {"rep": rep, "m": m, "estimator": name, "retrains": int(used), "fit_seconds": secs,
                       "r2": None if name.startswith("pairwise") else r2(res, cube[held], f[held]),
                       "r2_pooled": None if name.startswith("pairwise") else r2_pooled(res, cube[held], f[held])}
                for est in ("uniform", "full"):
                    rho, top = pair_metrics(res, truth, task.T, est)
                    row[f"rho_{est}"], row[f"top5_{est}"] = rho, top
                rec = planted_recall(res, task.data.planted, task.T, "full" if name.startswith("pairwise")
                                     else "uniform", k=args.k)
                row.update({f"recall_{k}": v for k, v in rec.items()})
                rows.append(row)
                log.info("exact m=%d rep=%d %-16s R2=%s rho_u=%.3f top5_u=%.2f rho_f=%.3f", m, rep, name,
                         "n/a" if row["r2"] is None else f"{row['r2']:.3f}", row["rho_uniform"],
                         row["top5_uniform"], row["rho_full"])
    truth_rec = planted_recall(truth, task.data.planted, task.T, "uniform", k=args.k)
    return {"n": n, "T": task.T, "planted": task.data.planted, "rows": rows, "spectrum_energy_by_degree": spectrum,
            "truth_recall_uniform": truth_rec, "n_subsets": int(2 ** n), "retrained_now": task.n_trained,
            "train_seconds_now": task.train_seconds, "f_empty": task.empty[0].tolist()}


def planted_experiment(args, n: int, budgets) -> dict:
    over, name = ([] if n == 64 else [f"data.n_train={n}"]), f"planted_n{n}"
    if args.quick:
        over = [f"data.n_train={n}", "data.n_harmful=1", "data.n_redundant=1", "data.n_test_bulk=2"]
    task = Task(name, args.cache, over + args.extra)
    rng = np.random.default_rng(7)
    from dataspex.design import random_masks

    pool = random_masks(n, max(budgets), 0.5, rng)
    held = random_masks(n, args.heldout, 0.5, rng)
    Y_held = task.outputs(held)
    scores = trak_scores(task, args.cache) if "trak" in args.estimators else None
    rows = []
    for m in budgets:
        Y_pool = task.outputs(pool[:m])
        fits = fit_all(task, pool, m, args.estimators, scores, args.quick, seed=0, Y_pool=Y_pool)
        for name_, (res, used, secs) in fits.items():
            est = "full" if name_.startswith("pairwise") else "uniform"
            rec = planted_recall(res, task.data.planted, task.T, est, k=args.k)
            row = {"m": m, "estimator": name_, "retrains": int(used), "fit_seconds": secs,
                   "r2": None if name_.startswith("pairwise") else r2(res, held, Y_held),
                   "r2_pooled": None if name_.startswith("pairwise") else r2_pooled(res, held, Y_held),
                   **{f"recall_{k}": v for k, v in rec.items()}}
            rows.append(row)
            log.info("planted n=%d m=%d %-16s R2=%s harmful=%s redundant=%s", n, m, name_,
                     "n/a" if row["r2"] is None else f"{row['r2']:.3f}", rec["harmful"], rec["redundant"])
    return {"n": n, "T": task.T, "planted": task.data.planted, "rows": rows, "heldout": args.heldout,
            "retrained_now": task.n_trained, "train_seconds_now": task.train_seconds,
            "seconds_per_retrain_now": task.train_seconds / task.n_trained if task.n_trained else None}


def noise_experiment(args) -> dict:
    """Same masks, other per-mask seeds: seed-to-seed variance and the R^2 ceiling it implies."""
    out = {}
    setups = [(f"exact_n{args.exact_n}", [f"data.n_train={args.exact_n}", "data.n_harmful=1", "data.n_redundant=1",
                                          f"data.n_test_bulk={args.exact_test_bulk}"], args.exact_n)]
    if not args.quick:
        setups.append(("planted_n64", [], 64))
    for name, over, n in setups:
        task = Task(name, args.cache, over + args.extra)
        rng = np.random.default_rng(99)
        from dataspex.design import random_masks

        masks = random_masks(n, args.noise_masks, 0.5, rng)
        reps = [task.outputs(masks, rep=r) for r in range(args.noise_reps)]
        Ys = np.stack(reps)  # (R, m, T)
        var_noise = Ys.var(axis=0, ddof=1).mean(axis=0)  # (T,) per-mask seed variance
        var_total = Ys[0].var(axis=0, ddof=1)
        ceiling = 1 - var_noise / var_total
        from dataspex.core.metrics import faithfulness_r2

        rep_r2 = float(faithfulness_r2(Ys[0], Ys[1]))
        out[name] = {"masks": args.noise_masks, "replicates": args.noise_reps,
                     "r2_ceiling_pooled": float(1 - var_noise.sum() / var_total.sum()),
                     "r2_ceiling_mean": float(np.mean(ceiling)), "r2_ceiling_per_output": ceiling.tolist(),
                     "replicate_r2": rep_r2, "noise_sd_mean": float(np.sqrt(var_noise).mean()),
                     "output_sd_mean": float(np.sqrt(var_total).mean())}
        if name.startswith("exact") and args.noise_cube:
            out[name]["cube"] = _cube_replicate(task, n)
        log.info("noise %s: R^2 ceiling %.3f (per output %s); rep-vs-rep R^2 %.3f", name, np.mean(ceiling),
                 np.round(ceiling, 2).tolist(), rep_r2)
    return out


def _cube_replicate(task: Task, n: int) -> dict:
    """Every subset retrained again under other per-mask seeds: how far the exact spectrum itself moves with
    the seed (the ceiling for any estimator's agreement with "the truth")."""
    from dataspex.estimators import InteractionResult
    from dataspex.fit.estimators.transforms import all_masks, fwht
    from dataspex.core.metrics import faithfulness_r2

    cube = all_masks(n)
    keys = [tuple(int(i) for i in np.flatnonzero(row)) for row in cube]
    f0, f1 = task.outputs(cube), task.outputs(cube, rep=1)
    t0 = InteractionResult(n, keys, fwht(f0) / 2 ** n)
    t1 = InteractionResult(n, keys, fwht(f1) / 2 ** n)
    out = {"replicate_r2": float(faithfulness_r2(f0, f1)),
           "replicate_r2_pooled": float(1 - ((f0 - f1) ** 2).sum() / ((f0 - f0.mean(axis=0)) ** 2).sum())}
    for est in ("uniform", "full"):
        out[f"rho_{est}"], out[f"top5_{est}"] = pair_metrics(t1, t0, task.T, est)
    log.info("noise: exact spectrum under another seed: %s", out)
    return out


# ---------------------------------------------------------------------------------------------- reporting

LABELS = {"linear": "linear datamodel", "trak": "TRAK (calibrated)", "quadratic": "quadratic proxy",
          "proxyspex": "ProxySPEX", "spex": "SPEX", "pairwise_linear": "pairwise (linear screen)",
          "pairwise_trak": "pairwise (TRAK screen)"}


def _agg(rows, key):
    vals = [r[key] for r in rows if r.get(key) is not None and np.isfinite(r[key])]
    return (float(np.mean(vals)), float(np.std(vals))) if vals else (None, None)


def _fmt(v, digits=2):
    return "n/a" if v is None or (isinstance(v, float) and not np.isfinite(v)) else f"{v:.{digits}f}"


def tables(results: dict) -> str:
    lines = []
    ex = results.get("exact")
    if ex:
        lines += [f"### Exact ground truth (n = {ex['n']}, all {ex['n_subsets']} subsets, T = {ex['T']} test "
                  "examples, test loss)", "",
                  "Mean over repetitions; R^2 on every subset the estimator did not see; rho = Spearman "
                  "correlation of the 45 pair scores with the true ones, top-5 = share of the true top-5 pairs "
                  "(by |score|) recovered; both averaged over test examples.", "",
                  "| m | estimator | retrains | R^2 | R^2 pooled | rho (uniform) | top-5 (uniform) | rho (full set) | "
                  "top-5 (full set) |", "|---|---|---|---|---|---|---|---|---|"]
        for m in sorted({r["m"] for r in ex["rows"]}):
            for name in ESTIMATORS:
                rs = [r for r in ex["rows"] if r["m"] == m and r["estimator"] == name]
                if not rs:
                    continue
                cells = [_fmt(_agg(rs, k)[0]) for k in ("r2", "r2_pooled", "rho_uniform", "top5_uniform", "rho_full",
                                                         "top5_full")]
                lines.append(f"| {m} | {LABELS[name]} | {int(np.mean([r['retrains'] for r in rs]))} | "
                             + " | ".join(cells) + " |")
        energy = ex["spectrum_energy_by_degree"]
        lines += ["", "Share of the true non-constant Fourier energy by degree (mean over test examples): "
                  + ", ".join(f"{k.split('_')[1]}: {v:.3f}" for k, v in list(energy.items())[:4]), ""]
    for key in sorted(k for k in results if k.startswith("planted_n")):
        pl = results[key]
        lines += [f"### Planted pairs, n = {pl['n']} (T = {pl['T']}; {sum(p['kind'] == 'harmful' for p in pl['planted'])}"
                  f" harmful, {sum(p['kind'] == 'redundant' for p in pl['planted'])} redundant planted)", "",
                  "recall@10 (distinct pairs ranked over all test examples, as the report ranks them; pairwise "
                  f"estimators on the full-set estimand, the rest on uniform); R^2 on {pl['heldout']} held-out "
                  "random masks.", "",
                  "| m | estimator | retrains | recall@10 harmful | recall@10 redundant | R^2 | R^2 pooled |",
                  "|---|---|---|---|---|---|---|"]
        for r in pl["rows"]:
            lines.append(f"| {r['m']} | {LABELS[r['estimator']]} | {r['retrains']} | {_fmt(r['recall_harmful'])} | "
                         f"{_fmt(r['recall_redundant'])} | {_fmt(r['r2'])} | {_fmt(r.get('r2_pooled'))} |")
        lines.append("")
    nz = results.get("noise")
    if nz:
        lines += ["### Noise floor", "", "| task | masks x replicates | output sd | seed-noise sd | "
                  "replicate-vs-replicate R^2 | R^2 ceiling (mean over outputs) | R^2 ceiling (pooled) |",
                  "|---|---|---|---|---|---|---|"]
        for name, v in nz.items():
            lines.append(f"| {name} | {v['masks']} x {v['replicates']} | {v['output_sd_mean']:.3f} | "
                         f"{v['noise_sd_mean']:.3f} | {v['replicate_r2']:.3f} | {v['r2_ceiling_mean']:.3f} | "
                         f"{v.get('r2_ceiling_pooled', float('nan')):.3f} |")
        lines.append("")
        for name, v in nz.items():
            c = v.get("cube")
            if c:
                lines += [f"{name}, all subsets retrained a second time under other per-mask seeds: replicate R^2 "
                          f"{c['replicate_r2']:.3f} (pooled {c['replicate_r2_pooled']:.3f}); the two exact spectra "
                          f"agree on pair scores with rho {c['rho_uniform']:.2f} and top-5 {c['top5_uniform']:.2f} "
                          f"(uniform), rho {c['rho_full']:.2f} and top-5 {c['top5_full']:.2f} (full set).", ""]
    return "\n".join(lines)


def _color(name: str) -> str:
    """One colour per estimator in every panel (a panel that skips an estimator must not shift the others)."""
    return f"C{ESTIMATORS.index(name)}"


def plots(results: dict, out: str) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    ex = results.get("exact")
    ceiling = (results.get("noise") or {}).get(f"exact_n{ex['n']}" if ex else "", {}).get("r2_ceiling_mean")
    if ex:
        fig, axes = plt.subplots(1, 3, figsize=(14, 4))
        for name in ESTIMATORS:
            rs = [r for r in ex["rows"] if r["estimator"] == name]
            if not rs:
                continue
            ms = sorted({r["m"] for r in rs})
            for ax, key in zip(axes, ("r2", "rho_uniform", "top5_uniform")):
                ys = [_agg([r for r in rs if r["m"] == m], key)[0] for m in ms]
                if name.startswith("pairwise") and key != "r2":
                    ys = [_agg([r for r in rs if r["m"] == m], key.replace("uniform", "full"))[0] for m in ms]
                if all(y is None for y in ys):
                    continue
                ax.plot(ms, [np.nan if y is None else y for y in ys], "o-", label=LABELS[name], color=_color(name))
        if ceiling is not None:
            axes[0].axhline(ceiling, color="k", ls="--", label="seed-noise ceiling")
        for ax, title in zip(axes, ("held-out R^2", "Spearman vs true pair scores", "top-5 true pairs found")):
            ax.set_xscale("log", base=2)
            ax.set_xlabel("budget m (retrains)")
            ax.set_title(title)
            ax.grid(alpha=0.3)
        axes[0].set_ylim(bottom=max(-0.5, axes[0].get_ylim()[0]))
        axes[2].legend(fontsize=7)
        fig.suptitle(f"Exact ground truth: n={ex['n']}, all {ex['n_subsets']} subsets retrained "
                     "(pairwise: full-set estimand)")
        fig.tight_layout()
        p = os.path.join(out, "proof_exact.png")
        fig.savefig(p, dpi=90)
        plt.close(fig)
        paths.append(p)
    for key in sorted(k for k in results if k.startswith("planted_n")):
        pl = results[key]
        fig, axes = plt.subplots(1, 3, figsize=(14, 4))
        for name in ESTIMATORS:
            rs = [r for r in pl["rows"] if r["estimator"] == name]
            if not rs:
                continue
            for ax, k in zip(axes, ("recall_harmful", "recall_redundant", "r2_pooled")):
                pts = [(r["retrains"], r[k]) for r in rs if r.get(k) is not None]
                if pts:
                    ax.plot(*zip(*pts), "o-", label=LABELS[name], color=_color(name))
        for ax, title in zip(axes, ("recall@10, harmful", "recall@10, redundant", "held-out R^2 (pooled)")):
            ax.set_xscale("log", base=2)
            ax.set_xlabel("retrains used")
            ax.set_title(title)
            ax.grid(alpha=0.3)
        axes[0].legend(fontsize=7)
        fig.suptitle(f"Planted pairs, n={pl['n']}")
        fig.tight_layout()
        p = os.path.join(out, f"proof_{key}.png")
        fig.savefig(p, dpi=90)
        plt.close(fig)
        paths.append(p)
    return paths


# ---------------------------------------------------------------------------------------------- main

def parse(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.proof", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="CI smoke run: tiny n, few masks (< 2 minutes)")
    p.add_argument("--parts", default="exact,planted,noise,planted256",
                   help="comma list of: exact, planted (n=64), noise, planted256")
    p.add_argument("--cache", default=os.path.join(ROOT, "benchmarks", ".cache"), help="retrain cache (RunStores)")
    p.add_argument("--out", default=None, help="figures + proof_results.json (default benchmarks/figures)")
    p.add_argument("--reps", type=int, default=3, help="repetitions of the exact-ground-truth draws")
    p.add_argument("--estimators", default=",".join(ESTIMATORS))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--merge", default=None, help="comma list of proof_results.json files (from parts run in "
                   "parallel with their own --out) to merge into --out, re-plot and tabulate; runs nothing")
    args = p.parse_args(argv)
    args.parts = [s for s in args.parts.split(",") if s]
    args.estimators = [s for s in args.estimators.split(",") if s]
    args.k = 10
    if args.quick:
        args.exact_n, args.exact_test_bulk, args.exact_budgets = 6, 2, [12, 24]
        args.planted_budgets, args.planted256_budgets, args.heldout = [24], [], 8
        args.noise_masks, args.noise_reps, args.noise_cube = 8, 2, False
        args.reps = 1
        args.parts = [s for s in args.parts if s != "planted256"]
        args.planted_n = 8
        args.extra = ["train.epochs=2"]  # a smoke run: the code path, not the science
        args.estimators = [e for e in args.estimators if e != "trak"]
        args.out = args.out or os.path.join(args.cache, "figures")
    else:
        args.exact_n, args.exact_test_bulk, args.exact_budgets = 10, 4, [32, 64, 128, 256, 512]
        args.planted_budgets, args.planted256_budgets, args.heldout = [64, 128, 256, 512, 1024], [128, 256, 512, 1024], 64
        args.noise_masks, args.noise_reps, args.noise_cube = 128, 2, True
        args.planted_n = 64
        args.extra = []
        args.out = args.out or os.path.join(ROOT, "benchmarks", "figures")
    return args


def main(argv=None) -> dict:
    import torch

    args = parse(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stderr)
    logging.getLogger("dataspex").setLevel(logging.WARNING)
    torch.set_num_threads(args.threads)
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "proof_results.json")
    results = {}
    if args.merge:
        for part_path in args.merge.split(","):
            with open(part_path) as fh:
                part = json.load(fh)
            results.update({k: v for k, v in part.items() if k not in ("seconds", "command")})
            results.setdefault("seconds", {}).update(part.get("seconds", {}))
            results.setdefault("commands", []).append(part.get("command"))
        with open(path, "w") as fh:
            json.dump(results, fh, indent=1, default=float)
        plots(results, args.out)
        print(tables(results))
        return results
    if os.path.exists(path) and not args.quick:
        with open(path) as fh:
            results = json.load(fh)  # keep parts finished by earlier invocations
    started = time.perf_counter()

    def save():
        results["command"] = "python -m benchmarks.proof " + " ".join(sys.argv[1:] if argv is None else argv)
        with open(path, "w") as fh:
            json.dump(results, fh, indent=1, default=float)
        plots(results, args.out)

    for part in args.parts:
        t0 = time.perf_counter()
        if part == "exact":
            results["exact"] = exact_experiment(args, None)
        elif part == "planted":
            results[f"planted_n{args.planted_n}"] = planted_experiment(args, args.planted_n, args.planted_budgets)
        elif part == "planted256":
            results["planted_n256"] = planted_experiment(args, 256, args.planted256_budgets)
        elif part == "noise":
            results["noise"] = noise_experiment(args)
        else:
            raise SystemExit(f"unknown part {part!r}")
        results.setdefault("seconds", {})[part] = time.perf_counter() - t0
        save()
    log.info("done in %.0f s", time.perf_counter() - started)
    print(tables(results))
    return results


if __name__ == "__main__":
    main()
