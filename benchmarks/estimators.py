"""Estimator benchmark: faithfulness R^2 against the budget, fit time per output against shapiq, and a
SPEX cross-check against spectralexplain.

    python benchmarks/estimators.py --quick        # CI-sized: n=64, two budgets, T=10 (< 60 s;
                                                   # times shapiq's ProxySPEX, not its SPEX)
    python benchmarks/estimators.py --quick --parts spectralexplain   # CI-sized cross-check (n=64, m=2000)
    python benchmarks/estimators.py                # the tables in benchmarks/README.md ("## Estimators")

Functions: T independent sparse Fourier functions per n (dataspex.fit.estimators.synthetic: 8 main
effects, 4 pairs (3 of them among the main-effect examples), 2 triples per output; Gaussian noise
at SNR = Var(f)/Var(noise) = 10).  R^2 is measured against the noise-free function on held-out
uniformly random masks (p = 0.5) that no estimator saw, averaged over outputs.

Part 1 (R^2 vs budget m): LinearDatamodel, QuadraticProxy and ProxySPEX fit the first m masks of
one pool of uniformly random masks (the same masks for all three); SPEX fits its own structured
design with at most m masks (column "masks" in the JSON; the table shows the count it used);
"SPEX +main effects" is SPEX(main_effects=True): the same peeling, then a cross-validated lasso
on all n main effects plus the peeled keys (shapiq's final regression).  Pairwise spends m/2
random masks on a LinearDatamodel screen and m/2 on the exhaustive pair design of the top K
candidates (1 + K + K(K-1)/2 <= m/2): its model is only valid near the full data set, so its R^2
on random half-size masks (far below 0) shows where it does not apply; the table also gives the
R^2 of its measured full-context second differences against the true ones over its K(K-1)/2
pairs ("pairs"), the estimand it is built for.

Part 2 (fit time per output, T outputs, one budget): ours fit all T outputs in one call; shapiq's
approximators explain one game (output) per call, so they are timed on the first k outputs and
the time per output is their mean (the table says so).  shapiq's ProxySPEX is fed our exact masks
and values (its sampler replaced by the fixed mask matrix, the game a lookup of the precomputed
noisy outputs), so both fit the same data; shapiq's SPEX queries its own design through a game
that evaluates the same function (plus noise) at the same budget, with the same degree bound
(t = 3); game-evaluation time and shapiq's final Moebius -> index conversion are excluded from its
time (that only flatters shapiq).  Everything runs single-threaded (n_jobs=1 on both sides).

Part 3 (cross-check against spectralexplain, the SPEX authors' own package; `pip install spectralexplain`,
skipped with a message when it is missing): on the same sparse functions, our SPEX (and SPEX +main effects)
against spectralexplain's SPEX path (the two calls its Explainer makes: sampling_strategy, then soft-decoding
support_recovery with t = 3; spectralexplain's final step is a lasso over all n main effects plus the peeled keys,
like our +main effects).  The two cannot share structured masks: both designs are C = 3 groups x (P + 1) BCH
delays x 2^b, but the BCH delay rows differ (dataspex: column i = x^i mod g(x); sparse-transform's systematic
generator: another column order), and each decoder only reads its own.  So each queries its own design, at the
same b (same number of masks), of the same function with the same noise model; the value function records every
mask spectralexplain asked for (checked against the masks its signal holds), and R^2 is on the same held-out
random masks.  The table gives fit time per output (spectralexplain: design construction, transforms, decoding
and lasso, its value-function calls excluded, after one untimed warm-up call that pays galois/numba's
compilation), R^2, the queries, how many planted terms are among each estimate's top |planted| coefficients,
and the overlap of the two top-10 lists.  One thread on both sides (BLAS and numba).  `--quick` leaves this
part out (its compilation alone takes about a minute); `--quick --parts spectralexplain` runs it at CI size.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

from dataspex.estimators import (
    SPEX,
    InteractionResult,
    LinearDatamodel,
    Pairwise,
    ProxySPEX,
    QuadraticProxy,
    SpexDesign,
    screen_candidates,
)
from dataspex.fit.estimators.synthetic import random_masks, sparse_functions
from dataspex.core.metrics import faithfulness_r2

PAPER_GRID = dict(max_depth=(3, 5), n_estimators=(500, 1000), learning_rate=(0.01, 0.1))
QUICK_GRID = dict(max_depth=(3, 5), n_estimators=(100, 300), learning_rate=(0.1,))
SPEX_DEGREE = 3
PARTS = ("r2", "timing", "spectralexplain")  # the three tables; --parts picks
QUICK_PARTS = ("r2", "timing")  # --quick default: spectralexplain's first call compiles for about a minute
TOP = 10  # top-list length compared between dataspex and spectralexplain


def _load() -> str:
    try:
        return " ".join(f"{v:.1f}" for v in os.getloadavg())
    except OSError:  # pragma: no cover
        return "n/a"


# ---------------------------------------------------------------------------------------------
# shapiq adapters
# ---------------------------------------------------------------------------------------------


class _FixedSampler:
    """Stands in for shapiq's coalition sampler: returns our training masks."""

    def __init__(self, masks: np.ndarray) -> None:
        self.coalitions_matrix = masks.astype(bool)

    def sample(self, budget: int) -> None:
        if budget != len(self.coalitions_matrix):
            raise ValueError(f"budget {budget} != {len(self.coalitions_matrix)} fixed masks")


def _capture_moebius(approx) -> dict:
    """Make ``approx`` keep its Moebius transform and skip shapiq's index conversion."""
    box: dict = {}

    def process(moebius_transform):
        box["moebius"] = dict(moebius_transform)
        approx._interaction_lookup = {k: i for i, k in enumerate(moebius_transform)}
        return np.array(list(moebius_transform.values()), dtype=np.float64)

    approx._process_moebius = process
    return box


def _moebius_result(n: int, moebius: dict) -> InteractionResult:
    keys = list(moebius)
    return InteractionResult.from_moebius(n, keys, np.array([moebius[k] for k in keys], dtype=np.float64))


def shapiq_proxyspex(X, y, grid: dict | None, seed: int):
    """(InteractionResult, seconds) of shapiq's ProxySPEX on our masks X and values y."""
    from shapiq.approximator import ProxySPEX as ShapiqProxySPEX

    n = X.shape[1]
    approx = ShapiqProxySPEX(n=n, index="FBII", max_order=n, random_state=seed)
    approx._uniform_sampler = _FixedSampler(X)
    if grid is not None:  # same grid as ours (quick mode); shapiq names the tree count max_iter
        approx.decoder_args = {
            "max_depth": list(grid["max_depth"]),
            "max_iter": list(grid["n_estimators"]),
            "learning_rate": list(grid["learning_rate"]),
        }
    box = _capture_moebius(approx)
    values = np.asarray(y, dtype=np.float64)
    t0 = time.perf_counter()
    approx.approximate(len(X), lambda coalitions: values)
    seconds = time.perf_counter() - t0
    return _moebius_result(n, box["moebius"]), seconds


def shapiq_spex(fn, t: int, budget: int, rng, seed: int):
    """(InteractionResult, seconds excluding game calls, masks used) of shapiq's SPEX on output t."""
    from shapiq.approximator import SPEX as ShapiqSPEX

    n = fn.n
    approx = ShapiqSPEX(n=n, index="FBII", max_order=n, random_state=seed, degree_parameter=SPEX_DEGREE)
    box = _capture_moebius(approx)
    spent = {"seconds": 0.0, "masks": 0}

    def game(coalitions):
        g0 = time.perf_counter()
        masks = np.asarray(coalitions, dtype=np.uint8)
        values = fn.evaluate(masks)[:, t] + rng.standard_normal(len(masks)) * fn.noise_sd[t]
        spent["seconds"] += time.perf_counter() - g0
        spent["masks"] += len(masks)
        return values

    t0 = time.perf_counter()
    approx.approximate(budget, game)
    seconds = time.perf_counter() - t0 - spent["seconds"]
    return _moebius_result(n, box["moebius"]), seconds, spent["masks"]


# ---------------------------------------------------------------------------------------------
# Part 1: R^2 vs budget
# ---------------------------------------------------------------------------------------------


def _r2(result: InteractionResult, Xt, Yt) -> float:
    return float(faithfulness_r2(Yt, result.predict(Xt)))


def _timed_fit(est, X, Y):
    t0 = time.perf_counter()
    est.fit(X, Y)
    return est, time.perf_counter() - t0


def _pair_r2(fn, result: InteractionResult, cand: np.ndarray) -> float:
    """R^2 of the full-context second differences over the candidate pairs, mean over outputs."""
    truth = InteractionResult(fn.n, fn.keys, fn.fourier)
    iu = np.triu_indices(len(cand), k=1)
    ii, jj = cand[iu[0]], cand[iu[1]]
    scores = []
    for t in range(fn.n_outputs):
        want = truth.pair_scores("full", output=t)[ii, jj]
        got = result.pair_scores("full", output=t)[ii, jj]
        if np.var(want) > 0:
            scores.append(float(faithfulness_r2(want, got)))
    return float(np.mean(scores)) if scores else float("nan")


def _pairwise(fn, X, Y, budget: int, rng):
    """Linear screen on m/2 random masks, exhaustive pair design on m/2: (result, masks used)."""
    half = budget // 2
    K = 1
    while 1 + (K + 1) + (K + 1) * K // 2 <= half and K + 1 <= fn.n:
        K += 1
    lin = LinearDatamodel().fit(X[:half], Y[:half])
    cand = screen_candidates(lin.coef_, K)
    design = Pairwise.design(fn.n, cand)
    est = Pairwise().fit(design, fn.observe(design, rng))
    return est.result_, half + len(design), K, _pair_r2(fn, est.result_, cand)


def r2_sweep(ns, budgets, T, snr, heldout, grid, jobs, seed, quadratic_max_n, log=print) -> list[dict]:
    rows = []
    for n in ns:
        rng = np.random.default_rng(seed + n)
        fn = sparse_functions(n, T, snr=snr, random_state=seed + n)
        pool = random_masks(max(budgets), n, rng)
        Ypool = fn.observe(pool, rng)
        Xt = random_masks(heldout, n, rng)
        Yt = fn.evaluate(Xt)
        for m in budgets:
            X, Y = pool[:m], Ypool[:m]
            ests = [("LinearDatamodel", LinearDatamodel())]
            if n <= quadratic_max_n:
                ests.append(("QuadraticProxy", QuadraticProxy()))
            ests.append(("ProxySPEX", ProxySPEX(**grid, n_jobs=jobs)))
            for name, est in ests:
                est, sec = _timed_fit(est, X, Y)
                rows.append(dict(n=n, m=m, estimator=name, masks=m, r2=_r2(est.result_, Xt, Yt), fit_s=sec))
                log(f"  n={n} m={m} {name}: R2={rows[-1]['r2']:.4f} ({sec:.1f} s)")
            try:
                design = SpexDesign(n, budget=m, max_degree=SPEX_DEGREE, random_state=seed)
            except ValueError as err:
                for name in ("SPEX", "SPEX +main effects"):
                    rows.append(dict(n=n, m=m, estimator=name, masks=0, r2=float("nan"), fit_s=float("nan"), note=str(err)))
            else:
                Xs = design.masks()
                Ys = fn.observe(Xs, rng)
                for name, main in (("SPEX", False), ("SPEX +main effects", True)):
                    est, sec = _timed_fit(SPEX(design, main_effects=main), Xs, Ys)
                    rows.append(dict(n=n, m=m, estimator=name, masks=design.n_masks, r2=_r2(est.result_, Xt, Yt), fit_s=sec))
                    log(f"  n={n} m={m} {name} ({design.n_masks} masks): R2={rows[-1]['r2']:.4f} ({sec:.1f} s)")
            t0 = time.perf_counter()
            result, used, K, r2_pairs = _pairwise(fn, X, Y, m, rng)
            rows.append(
                dict(n=n, m=m, estimator="Pairwise", masks=used, r2=_r2(result, Xt, Yt), fit_s=time.perf_counter() - t0,
                     K=K, r2_pairs=r2_pairs)
            )
            log(f"  n={n} m={m} Pairwise (K={K}, {used} masks): R2={rows[-1]['r2']:.4f}, pair R2={r2_pairs:.4f}")
    return rows


def format_r2_table(rows: list[dict]) -> str:
    out = []
    for n in sorted({r["n"] for r in rows}):
        sub = [r for r in rows if r["n"] == n]
        budgets = sorted({r["m"] for r in sub})
        names = list(dict.fromkeys(r["estimator"] for r in sub))
        out.append(f"\nFaithfulness R^2 (held-out, vs noise-free f) and fit seconds, n = {n}:")
        out.append("| estimator | " + " | ".join(f"m = {m}" for m in budgets) + " |")
        out.append("|---|" + "---|" * len(budgets))
        for name in names:
            cells = []
            for m in budgets:
                r = next((r for r in sub if r["m"] == m and r["estimator"] == name), None)
                if r is None or not np.isfinite(r["r2"]):
                    cells.append("n/a (budget too small)" if r is not None else "-")
                    continue
                if name == "Pairwise":  # random-mask R^2 is far below 0: say so, show its own estimand
                    r2 = f"{r['r2']:.3f}" if r["r2"] > -1 else "<-1"
                    cells.append(f"{r2}; pairs {r['r2_pairs']:.3f} (K={r['K']})")
                    continue
                extra = f", {r['masks']} masks" if name.startswith("SPEX") else ""
                cells.append(f"{r['r2']:.3f} ({r['fit_s']:.1f} s{extra})")
            out.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(out)


# ---------------------------------------------------------------------------------------------
# Part 2: fit time per output against shapiq
# ---------------------------------------------------------------------------------------------


def timing(n, m, T, k, snr, heldout, grid, seed, shapiq_spex_on=True, log=print) -> list[dict]:
    rng = np.random.default_rng(seed + 7 * n)
    fn = sparse_functions(n, T, snr=snr, random_state=seed + n)
    X = random_masks(m, n, rng)
    Y = fn.observe(X, rng)
    Xt = random_masks(heldout, n, rng)
    Yt = fn.evaluate(Xt)
    sub = np.arange(min(k, T))
    rows = []

    est, sec = _timed_fit(ProxySPEX(**grid, n_jobs=1), X, Y)
    pred = est.result_.predict(Xt)
    ours_px = dict(n=n, m=m, estimator="ProxySPEX (dataspex)", masks=m, outputs_timed=T, s_per_output=sec / T,
                   r2_subset=float(faithfulness_r2(Yt[:, sub], pred[:, sub])), r2_all=float(faithfulness_r2(Yt, pred)))
    log(f"  n={n} ours ProxySPEX: {sec / T:.3f} s/output over {T}")
    secs, r2s = [], []
    for t in sub:
        res, s = shapiq_proxyspex(X, Y[:, t], None if grid is PAPER_GRID else grid, seed)
        secs.append(s)
        r2s.append(_r2(res, Xt, Yt[:, [t]]))
        log(f"  n={n} shapiq ProxySPEX output {t}: {s:.2f} s, R2={r2s[-1]:.4f}")
    theirs_px = dict(n=n, m=m, estimator="ProxySPEX (shapiq)", masks=m, outputs_timed=len(sub),
                     s_per_output=float(np.mean(secs)), r2_subset=float(np.mean(r2s)), r2_all=float("nan"))

    design = SpexDesign(n, budget=m, max_degree=SPEX_DEGREE, random_state=seed)
    Xs = design.masks()
    est, sec = _timed_fit(SPEX(design), Xs, fn.observe(Xs, rng))
    pred = est.result_.predict(Xt)
    ours_sp = dict(n=n, m=m, estimator="SPEX (dataspex)", masks=design.n_masks, outputs_timed=T, s_per_output=sec / T,
                   r2_subset=float(faithfulness_r2(Yt[:, sub], pred[:, sub])), r2_all=float(faithfulness_r2(Yt, pred)))
    log(f"  n={n} ours SPEX: {sec / T:.4f} s/output over {T}")
    secs, r2s, used = [], [], []
    for t in sub if shapiq_spex_on else []:
        res, s, u = shapiq_spex(fn, int(t), m, rng, seed)
        secs.append(s)
        used.append(u)
        r2s.append(_r2(res, Xt, Yt[:, [t]]))
        log(f"  n={n} shapiq SPEX output {t}: {s:.2f} s ({u} masks), R2={r2s[-1]:.4f}")
    pairs = [(ours_px, theirs_px)]
    if secs:
        theirs_sp = dict(n=n, m=m, estimator="SPEX (shapiq)", masks=int(np.max(used)), outputs_timed=len(sub),
                         s_per_output=float(np.mean(secs)), r2_subset=float(np.mean(r2s)), r2_all=float("nan"))
        pairs.append((ours_sp, theirs_sp))
    else:
        ours_sp["speedup"] = float("nan")
    for ours, theirs in pairs:
        ours["speedup"] = theirs["s_per_output"] / ours["s_per_output"]
        theirs["speedup"] = 1.0
        rows += [ours, theirs]
    if not secs:
        rows.append(ours_sp)
    return rows


def format_timing_table(rows: list[dict], T: int) -> str:
    out = [
        f"\nFit time per output (T = {T} outputs; shapiq timed on the first k outputs, its s/output is their mean"
        f" and is extrapolated to T), R^2 on the first k outputs and on all T:",
        "| n | m | estimator | masks used | outputs timed | s / output | R^2 (first k) | R^2 (all T) | speedup vs shapiq |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        r2_all = "-" if not np.isfinite(r["r2_all"]) else f"{r['r2_all']:.3f}"
        speed = "not timed" if not np.isfinite(r["speedup"]) else f"{r['speedup']:.1f}x"
        out.append(
            f"| {r['n']} | {r['m']} | {r['estimator']} | {r['masks']} | {r['outputs_timed']} | {r['s_per_output']:.4f} | "
            f"{r['r2_subset']:.3f} | {r2_all} | {speed} |"
        )
    return "\n".join(out)


# ---------------------------------------------------------------------------------------------
# Part 3: cross-check against spectralexplain (the SPEX authors' package)
# ---------------------------------------------------------------------------------------------


def spectralexplain_missing() -> str | None:
    """None when spectralexplain can be imported, else the message the benchmark prints."""
    try:
        import spectralexplain  # noqa: F401
    except ImportError as err:
        return f"spectralexplain is not installed ({err}); `pip install spectralexplain` to run this cross-check"
    return None


class _OneThread:
    """BLAS and numba (galois) limited to one thread inside the block, restored after."""

    def __enter__(self):
        from threadpoolctl import threadpool_limits

        self._blas = threadpool_limits(limits=1)
        try:
            import numba

            self._numba, self._numba_before = numba, numba.get_num_threads()
            numba.set_num_threads(1)
        except ImportError:  # pragma: no cover - galois (a dependency of both) brings numba
            self._numba = None
        return self

    def __exit__(self, *exc):
        if self._numba is not None:
            self._numba.set_num_threads(self._numba_before)
        self._blas.unregister()
        return False


def spectralexplain_spex(fn, t: int, b: int, rng, seed: int) -> dict:
    """spectralexplain's SPEX on output t, querying its own design at 2^b bins per group and delay.

    Runs what ``spectralexplain.Explainer(..., algorithm="spex", max_order=SPEX_DEGREE)`` runs once it has chosen b
    (``sampling_strategy`` with b as the largest size, then ``support_recovery("soft", ...)``); the Explainer's budget
    helper is skipped because it first builds the designs of every b up to 12 just to count their masks.
    The value function returns the same function plus the same Gaussian noise as ``fn.observe`` and records what it
    was asked.  Returns the result (InteractionResult), seconds without value-function calls (total and decoding
    only), the masks queried and their noisy values, and whether they are exactly the masks and values held by the
    signal that spectralexplain decoded.
    """
    import random

    import spectralexplain as spx

    n = fn.n
    asked: list[np.ndarray] = []
    answered: list[np.ndarray] = []
    spent = [0.0]

    def value_function(queries):
        g0 = time.perf_counter()
        masks = np.asarray(queries, dtype=np.uint8)
        values = fn.evaluate(masks)[:, t] + rng.standard_normal(len(masks)) * fn.noise_sd[t]
        asked.append(masks)
        answered.append(values)
        spent[0] += time.perf_counter() - g0
        return values

    np.random.seed(seed + t)  # sparse-transform draws its M_c (and bin choices) from numpy's global generator
    random.seed(seed + t)
    t0 = time.perf_counter()
    signal, counts = spx.sampling_strategy(value_function, 3, b, n, sample_save_dir=None, t=SPEX_DEGREE)
    t1 = time.perf_counter()
    fourier = spx.support_recovery("soft", signal, b, SPEX_DEGREE)
    t2 = time.perf_counter()
    X = np.concatenate(asked)
    y = np.concatenate(answered)
    held_X = np.concatenate([np.concatenate(q) for q in signal.all_queries]).astype(np.uint8)
    held_y = np.concatenate([np.real(np.concatenate(v)) for v in signal.all_samples])
    same = held_X.shape == X.shape and np.array_equal(held_X, X) and np.allclose(held_y, y, rtol=0, atol=1e-12)
    keys = [tuple(int(i) for i in np.flatnonzero(k)) for k in fourier]
    coef = np.array([float(np.real(v)) for v in fourier.values()], dtype=np.float64).reshape(-1, 1)
    if not keys:
        keys, coef = [()], np.zeros((1, 1))
    return {"result": InteractionResult(n, keys, coef), "seconds": t2 - t0 - spent[0], "decode_s": t2 - t1,
            "masks": X, "values": y, "same_queries": bool(same), "n_masks_expected": int(counts[b])}


def _top_keys(result: InteractionResult, t: int, k: int) -> list[tuple[int, ...]]:
    """The k non-constant keys with the largest |coefficient| of output t (ties by key order)."""
    col = result.fourier[:, t]
    cand = [(abs(float(v)), key) for key, v in zip(result.keys, col) if len(key) and v != 0]
    cand.sort(key=lambda kv: -kv[0])
    return [key for _, key in cand[:k]]


def _planted(fn, t: int) -> set[tuple[int, ...]]:
    return {k for k, v in zip(fn.keys, fn.fourier[:, t]) if len(k) and v != 0}


def spectralexplain_check(n, m, T, k, snr, heldout, seed, log=print) -> list[dict]:
    """Our SPEX (all T outputs in one fit) and spectralexplain's (first k outputs, one call each) on the same functions."""
    rng = np.random.default_rng(seed + 11 * n)
    fn = sparse_functions(n, T, snr=snr, random_state=seed + n)
    Xt = random_masks(heldout, n, rng)
    Yt = fn.evaluate(Xt)
    sub = np.arange(min(k, T))
    design = SpexDesign(n, budget=m, max_degree=SPEX_DEGREE, random_state=seed)
    Xs = design.masks()
    Ys = fn.observe(Xs, rng)
    planted = [_planted(fn, int(t)) for t in sub]
    ours: dict[str, InteractionResult] = {}
    rows = []
    for name, main in (("SPEX (dataspex)", False), ("SPEX +main effects (dataspex)", True)):
        with _OneThread():
            est, sec = _timed_fit(SPEX(design, main_effects=main), Xs, Ys)
        ours[name] = est.result_
        pred = est.result_.predict(Xt)
        r2_each = faithfulness_r2(Yt[:, sub], pred[:, sub], multioutput="raw_values")
        found = [len(set(_top_keys(est.result_, int(t), len(p))) & p) for t, p in zip(sub, planted)]
        rows.append({"n": n, "m": m, "b": design.b, "estimator": name, "masks": design.n_masks,
                     "distinct_masks": len(np.unique(Xs, axis=0)), "outputs_timed": T, "s_per_output": sec / T,
                     "decode_s_per_output": sec / T, "r2_subset": float(np.mean(r2_each)),
                     "r2_each": [float(v) for v in r2_each], "r2_all": float(faithfulness_r2(Yt, pred)),
                     "planted_found": found, "n_planted": [len(p) for p in planted], "heldout_sum": int(Xt.sum()),
                     "has_empty_mask": bool((Xs.sum(axis=1) == 0).any())})
        log(f"  n={n} {name} ({design.n_masks} masks, b={design.b}): {sec / T:.4f} s/output over {T}, "
            f"R2 first {len(sub)} {rows[-1]['r2_subset']:.4f}, all {rows[-1]['r2_all']:.4f}")
    with _OneThread():
        g0 = time.perf_counter()
        warm = spectralexplain_spex(fn, int(sub[0]), design.b, np.random.default_rng([seed, n, 99]), seed)
        warm_s = time.perf_counter() - g0
        log(f"  n={n} spectralexplain warm-up call (galois/numba compilation, untimed): {warm_s:.1f} s")
        runs = [spectralexplain_spex(fn, int(t), design.b, rng, seed) for t in sub]
    r2_each, found, agree, secs, decs = [], [], [], [], []
    for t, run, p in zip(sub, runs, planted):
        res = run["result"]
        r2_each.append(float(faithfulness_r2(Yt[:, [t]], res.predict(Xt))))
        top_theirs = _top_keys(res, 0, len(p))
        found.append(len(set(top_theirs) & p))
        agree.append({name: len(set(_top_keys(r, int(t), TOP)) & set(_top_keys(res, 0, TOP))) / TOP
                      for name, r in ours.items()})
        secs.append(run["seconds"])
        decs.append(run["decode_s"])
        log(f"  n={n} spectralexplain SPEX output {t}: {run['seconds']:.2f} s ({run['decode_s']:.2f} s decoding, "
            f"{len(run['masks'])} masks, {len(np.unique(run['masks'], axis=0))} distinct), R2={r2_each[-1]:.4f}, "
            f"planted in top {len(p)}: {found[-1]}/{len(p)}, top-{TOP} overlap with ours {agree[-1]['SPEX (dataspex)']:.1f}")
    for row in rows:
        row["top_agreement"] = float(np.mean([a[row["estimator"]] for a in agree]))
    masks_used = {len(r["masks"]) for r in runs}
    rows.append({"n": n, "m": m, "b": design.b, "estimator": "SPEX (spectralexplain)", "masks": max(masks_used),
                 "distinct_masks": int(np.mean([len(np.unique(r["masks"], axis=0)) for r in runs])),
                 "outputs_timed": len(sub), "s_per_output": float(np.mean(secs)),
                 "decode_s_per_output": float(np.mean(decs)), "r2_subset": float(np.mean(r2_each)), "r2_each": r2_each,
                 "r2_all": float("nan"), "planted_found": found, "n_planted": [len(p) for p in planted],
                 "top_agreement": float("nan"), "heldout_sum": int(Xt.sum()),
                 "has_empty_mask": all(bool((r["masks"].sum(axis=1) == 0).any()) for r in runs),
                 "same_queries": all(r["same_queries"] for r in runs) and warm["same_queries"],
                 "masks_expected": runs[0]["n_masks_expected"], "masks_per_output": sorted(masks_used),
                 "warmup_s": warm_s})
    theirs = rows[-1]["s_per_output"]
    for row in rows:
        row["speedup"] = theirs / row["s_per_output"]
    return rows


def format_spectralexplain_table(rows: list[dict], T: int) -> str:
    out = [
        (f"\nSPEX against spectralexplain (each on its own design at the same b; ours fit T = {T} outputs in one call,"
         f" spectralexplain's s/output is the mean over the first k; R^2 on the same held-out masks; 'planted' = planted"
         f" terms among the top |planted| coefficients, summed over the first k outputs; 'top-{TOP} overlap' = shared"
         f" keys of ours and spectralexplain's top {TOP}, mean over the first k):"),
        ("| n | m | estimator | masks (distinct) | outputs timed | s / output | R^2 (first k) | R^2 (all T) |"
         f" planted (first k) | top-{TOP} overlap | speedup vs spectralexplain |"),
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        r2_all = "-" if not np.isfinite(r["r2_all"]) else f"{r['r2_all']:.3f}"
        agree = "-" if not np.isfinite(r["top_agreement"]) else f"{r['top_agreement']:.2f}"
        out.append(
            f"| {r['n']} | {r['m']} | {r['estimator']} | {r['masks']} ({r['distinct_masks']}) | {r['outputs_timed']} |"
            f" {r['s_per_output']:.4f} | {r['r2_subset']:.3f} | {r2_all} | {sum(r['planted_found'])}/{sum(r['n_planted'])} |"
            f" {agree} | {r['speedup']:.1f}x |"
        )
    for r in rows:
        if "warmup_s" in r:
            out.append(f"(n = {r['n']}: spectralexplain's untimed warm-up call took {r['warmup_s']:.0f} s; decoding alone"
                       f" {r['decode_s_per_output']:.2f} s / output; queried masks identical to its signal's:"
                       f" {r['same_queries']})")
    return "\n".join(out)


# ---------------------------------------------------------------------------------------------


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v]


def main(argv=None, log=print) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="CI-sized run (< 60 s)")
    ap.add_argument("--ns", type=_ints, help="comma-separated n for the R^2 table")
    ap.add_argument("--budgets", type=_ints, help="comma-separated budgets m")
    ap.add_argument("--T", type=int, help="outputs in the R^2 table")
    ap.add_argument("--timing-ns", type=_ints, help="n for the timing table ('' to skip)")
    ap.add_argument("--timing-m", type=int, help="budget of the timing table")
    ap.add_argument("--timing-T", type=int, help="outputs fit by our estimators in the timing table")
    ap.add_argument("--shapiq-k", type=int, help="outputs timed for each shapiq approximator")
    ap.add_argument("--no-shapiq-spex", action="store_true",
                    help="skip timing shapiq's SPEX (its time per output varied 2-90 s between noise draws)")
    ap.add_argument("--sx-ns", type=_ints, help="n for the spectralexplain cross-check ('' to skip)")
    ap.add_argument("--sx-m", type=int, help="budget of the spectralexplain cross-check")
    ap.add_argument("--sx-T", type=int, help="outputs fit by our SPEX in the spectralexplain cross-check")
    ap.add_argument("--sx-k", type=int, help="outputs run through spectralexplain (one call each)")
    ap.add_argument("--snr", type=float, default=10.0)
    ap.add_argument("--heldout", type=int, help="held-out masks for R^2")
    ap.add_argument("--jobs", type=int, default=2, help="threads of ProxySPEX in the R^2 table (timing uses 1)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", help="also write all rows to this JSON file")
    ap.add_argument("--parts", help="comma list of: r2 (R^2 vs budget), timing (vs shapiq), spectralexplain (SPEX"
                    f" cross-check); default {','.join(PARTS)}, with --quick {','.join(QUICK_PARTS)}")
    a = ap.parse_args(argv)
    parts = {p for p in (a.parts if a.parts is not None else ",".join(QUICK_PARTS if a.quick else PARTS)).split(",") if p}
    if parts - set(PARTS):
        ap.error(f"unknown --parts {sorted(parts - set(PARTS))}; choose from {', '.join(PARTS)}")
    if a.quick:
        d = dict(ns=[64], budgets=[500, 1000], T=10, timing_ns=[64], timing_m=1000, timing_T=10, shapiq_k=1, heldout=1000, grid=QUICK_GRID, qmax=64,
                 sx_ns=[64], sx_m=2000, sx_T=10, sx_k=2)
    else:
        d = dict(ns=[64, 256, 1024], budgets=[500, 1000, 2000, 4000], T=20, timing_ns=[64, 256, 1024], timing_m=2000, timing_T=100, shapiq_k=2, heldout=2000, grid=PAPER_GRID, qmax=1024,
                 sx_ns=[64, 256, 1024], sx_m=2000, sx_T=100, sx_k=3)
    ns = a.ns or d["ns"]
    budgets = a.budgets or d["budgets"]
    T = a.T or d["T"]
    timing_ns = d["timing_ns"] if a.timing_ns is None else a.timing_ns
    timing_m = a.timing_m or d["timing_m"]
    timing_T = a.timing_T or d["timing_T"]
    k = a.shapiq_k or d["shapiq_k"]
    heldout = a.heldout or d["heldout"]
    grid = d["grid"]
    t_start = time.perf_counter()
    log(f"# dataspex estimator benchmark ({'quick' if a.quick else 'full'}); load average at start: {_load()}; "
        f"SNR {a.snr}; ProxySPEX grid {grid}")
    rows = r2_sweep(ns, budgets, T, a.snr, heldout, grid, a.jobs, a.seed, d["qmax"], log=log) if "r2" in parts else []
    if rows:
        log(format_r2_table(rows))
    trows = []
    for n in timing_ns if "timing" in parts else []:
        trows += timing(n, timing_m, timing_T, k, a.snr, heldout, grid, a.seed,
                        shapiq_spex_on=not (a.quick or a.no_shapiq_spex), log=log)
    t_text = format_timing_table(trows, timing_T) if trows else ""
    if trows:
        log(t_text)
    srows: list[dict] = []
    skipped = None
    sx_ns = d["sx_ns"] if a.sx_ns is None else a.sx_ns
    if "spectralexplain" in parts and sx_ns:
        skipped = spectralexplain_missing()
        if skipped:
            log(f"\nSkipping the spectralexplain cross-check: {skipped}")
        else:
            sx_T = a.sx_T or d["sx_T"]
            for n in sx_ns:
                srows += spectralexplain_check(n, a.sx_m or d["sx_m"], sx_T, a.sx_k or d["sx_k"], a.snr, heldout, a.seed,
                                               log=log)
            log(format_spectralexplain_table(srows, sx_T))
    total = time.perf_counter() - t_start
    log(f"\ntotal {total:.0f} s; load average at end: {_load()}")
    out = {"r2": rows, "timing": trows, "spectralexplain": srows, "spectralexplain_skipped": skipped,
           "seconds": total, "args": vars(a)}
    if a.json:
        with open(a.json, "w") as fh:
            json.dump(out, fh, indent=1, default=float)
    return out


if __name__ == "__main__":
    main(sys.argv[1:], log=lambda s: print(s, flush=True))
