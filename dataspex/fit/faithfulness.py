"""How far a fitted model can be trusted: held-out R^2, and held-out R^2 against the number of retrains.

Faithfulness-vs-budget: each fitted estimator is refitted on growing prefixes of the fit masks (fractions
``report.curve_fractions``; 1.0 is the stored fit) and scored on the held-out masks. The points are cached in
``fit/faithfulness_curve.json``, keyed by the fit stamp, and recomputed only when the fit changes; this module
writes and reads that file.
"""

from __future__ import annotations

import logging
import os
import time
import warnings

import numpy as np
import pandas as pd
from hydra.utils import get_class, instantiate

from dataspex.core.errors import DataspexError
from dataspex.core.files import read_json, write_json
from dataspex.core.metrics import faithfulness_r2, pooled_r2
from dataspex.design.replicate import finished_replicate_rows, replicate_pairs
from dataspex.fit.artifacts import fit_stamp

__all__ = ["ceiling_se", "estimator_bound", "fit_outputs", "gap_split", "heldout_r2", "least_squares_main_effects",
           "limit_above_ceiling", "load_curve", "main_effects_limit", "main_effects_only", "model_bound",
           "noise_ceiling", "pair_energy", "pooled_ceiling", "run_main_effects_limit", "screen_reach", "update_curve"]

log = logging.getLogger("dataspex")

CURVE = ("fit", "faithfulness_curve.json")
CURVE_COLUMNS = ["estimator", "fraction", "n_masks", "r2", "r2_pooled", "note"]


def fit_outputs(results, output: str) -> np.ndarray:
    """The outputs ``dataspex fit`` models, (m, n_test + 1): every test example's ``output``, then their mean."""
    Y = results.outputs(output)
    return np.column_stack([Y, Y.mean(axis=1)])


def pooled_ceiling(a: np.ndarray, b: np.ndarray) -> float:
    """sum_t cov(a_t, b_t) / sum_t var(a_t) over the columns of two replicates (M, T) of the same masks: the share
    of the pooled variance of one replicate that the mask explains (what both replicates share). It is the pooled
    held-out R^2 a perfect model of the mask's effect would reach against one replicate."""
    a, b = a - a.mean(0), b - b.mean(0)
    return float((a * b).sum() / (a * a).sum())


# Resamples of the ceiling's bootstrap: its SE is then within about 2% of its own value (1 / sqrt(2 * 1000)).
CEILING_BOOTSTRAP = 1000


def ceiling_se(a: np.ndarray, b: np.ndarray, n_boot: int = CEILING_BOOTSTRAP, seed: int = 0) -> float:
    """Bootstrap standard error of :func:`pooled_ceiling` over the replicated masks (the rows of ``a`` and ``b``,
    (M, T), drawn with replacement; a fixed ``seed``, so a report is reproducible). On four real-text runs it was
    0.036-0.068 from the default 16 replicates and 0.016-0.019 from 128 (``benchmarks/outputs.py``; benchmarks/README,
    'Without plants, to 16n'): with 16, a share of the ceiling is known to about +-5 points."""
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(a), size=(n_boot, len(a)))
    return float(np.std([pooled_ceiling(a[d], b[d]) for d in draws], ddof=1))


def noise_ceiling(design, results, output: str) -> dict:
    """The run's replicate noise ceiling on ``output``: the held-out masks that have a seed replicate (role
    ``replicate``, :mod:`dataspex.design.replicate`) and both retrains finished. Keys: ``pooled`` (over the test
    examples, as ``r2_pooled``), ``pooled_se`` (its bootstrap standard error, :func:`ceiling_se`), ``mean`` (the
    mean test output: corr of the two replicates), ``n_masks``,
    ``n_planned``; ``pooled``/``mean`` are None with fewer than 8 finished pairs (the correlation of fewer has a
    standard error above ~0.3), and ``why`` then says what is missing."""
    pairs = replicate_pairs(design)
    done = finished_replicate_rows(design, results.mask_ids)
    out = {"pooled": None, "mean": None, "n_masks": len(done), "n_planned": len(pairs)}
    if len(done) < 8:
        out["why"] = ("no seed replicates in the design (design.replicates=0)" if not pairs else
                      f"only {len(pairs)} seed replicates in the design, 8 needed: raise design.replicates (at most "
                      "design.heldout)" if len(pairs) < 8 else
                      f"{len(done)} of {len(pairs)} seed replicates finished (8 needed): run `dataspex train`")
        return out
    Y = results.outputs(output)
    a, b = Y[[x for x, _ in done]], Y[[y for _, y in done]]
    out["pooled"] = pooled_ceiling(a, b)
    out["pooled_se"] = ceiling_se(a, b)
    out["mean"] = float(np.corrcoef(a.mean(1), b.mean(1))[0, 1])
    return out


def gap_split(Y_ho: np.ndarray, predictions: np.ndarray, ceiling: float | None = None) -> dict:
    """The shortfall of K fits on disjoint blocks of masks, split into their variance and their bias.

    With y = g(mask) + seed noise, a model f fitted on other masks scores pooled R^2 = ceiling - bias - variance in
    units of the held-out variance: variance = Var(f) over the draw of its masks and their seeds, bias = E(g - E f)^2.
    Y_ho: (M, T) held-out outputs; predictions: (K, M, T), K >= 2 fits on disjoint blocks. Keys (pooled-R^2
    units): ``r2`` (the mean of the K fits' R^2), ``variance`` (the fits' unbiased spread, sum_k (f_k - mean f)^2 /
    (K - 1), over the held-out SST), ``r2_without_variance`` (r2 + variance: what the mean of infinitely many such
    fits reaches), ``r2_of_mean`` (the pooled R^2 of the K fits' mean; exactly r2 + (K - 1) / K * variance),
    ``bias`` (ceiling - r2_without_variance; None without a ceiling), ``K``."""
    K = predictions.shape[0]
    if K < 2:
        raise ValueError(f"{K} fit(s): the variance needs 2 or more fits on disjoint blocks")
    sst = float(((Y_ho - Y_ho.mean(0)) ** 2).sum())
    r2 = float(np.mean([pooled_r2(Y_ho, p) for p in predictions]))
    variance = float(((predictions - predictions.mean(0)) ** 2).sum() / (K - 1)) / sst
    return {"K": K, "r2": r2, "variance": variance, "r2_without_variance": r2 + variance,
            "r2_of_mean": pooled_r2(Y_ho, predictions.mean(0)),
            "bias": None if ceiling is None else ceiling - r2 - variance}


def least_squares_main_effects(masks: np.ndarray, Y: np.ndarray) -> np.ndarray:
    """Intercept and main effects by unpenalised least squares: coefficients (n + 1, T) of masks (m, n) 0/1 and
    outputs Y (m, T); predict with ``coef[0] + masks @ coef[1:]``. Its mean over designs is the best main-effects
    function of the mask, so it carries no shrinkage bias (what :func:`main_effects_limit` needs)."""
    design = np.hstack([np.ones((len(masks), 1)), masks.astype(np.float64)])
    return np.linalg.lstsq(design, Y, rcond=None)[0]


# At most this many disjoint blocks: each needs 2n masks, and four gave the limit to 1-2 points on the n = 256
# real-text runs (benchmarks/README, 'Why the fits stop short'). Least squares on m masks of n units predicts with
# a variance of about (n + 1) / (m - n - 2) times the seed noise's: at n = 256, 1.01 for m = 2n and 1.00 for
# 2 (n + 1), so blocks of 2n lose nothing measurable, and a run of 4n fit retrains (the budget the README and the
# issues count in) has two.
LIMIT_BLOCKS = 4
LIMIT_BOOTSTRAP = 200


def main_effects_limit(masks_fit: np.ndarray, Y_fit: np.ndarray, masks_ho: np.ndarray, Y_ho: np.ndarray,
                       seed: int = 0) -> dict:
    """The pooled held-out R^2 that no model of main effects alone (the linear datamodel, TRAK) exceeds at any
    budget: least squares on K = min(4, m // (2n)) disjoint blocks of the fit masks (m, n), its variance
    removed (:func:`gap_split`). Least squares' bias does not depend on the budget, so this is a limit, not a
    forecast: on the real-text runs of benchmarks/README it was the same from blocks of 2n and 8n (within 1-2
    points) and 69-79% of the noise ceiling. Keys: ``r2`` (None with fewer than 2 blocks, and ``why`` says what is
    missing), ``r2_se`` (its standard error: a bootstrap over the held-out masks and the blocks' spread), ``K``,
    ``block_masks``, ``variance``."""
    m, n = masks_fit.shape
    block = 2 * n
    K = min(LIMIT_BLOCKS, m // block)
    out = {"r2": None, "r2_se": None, "K": K, "block_masks": None, "variance": None}
    if K < 2 or len(masks_ho) < 2:
        out["why"] = (f"{m} fit masks: 2 disjoint blocks of 2n = {block} or more are needed"
                      if K < 2 else "no held-out masks")
        return out
    size = m // K

    def predicted(rows: slice) -> np.ndarray:
        coef = least_squares_main_effects(masks_fit[rows], Y_fit[rows])
        return coef[0] + masks_ho.astype(np.float64) @ coef[1:]
    predictions = np.stack([predicted(slice(k * size, (k + 1) * size)) for k in range(K)])
    split = gap_split(Y_ho, predictions)
    rng = np.random.default_rng(seed)
    draws = [gap_split(Y_ho[d], predictions[:, d])["r2_without_variance"]
             for d in rng.integers(0, len(Y_ho), size=(LIMIT_BOOTSTRAP, len(Y_ho)))]
    # Two sources of error: which masks were held out (the bootstrap) and which were drawn for the blocks (the
    # blocks' R^2 spread, over sqrt K). On six n = 256 real-text runs, limits from 2 blocks of 512 masks (4n) were
    # within 0.026 of the run's limit from all its fit masks: at most 1.3 of this SE (0.012-0.033; 20 parts, 18
    # within one SE; benchmarks/bias_variance.py --limit-parts).
    r2_blocks = [pooled_r2(Y_ho, p) for p in predictions]
    se = float(np.sqrt(np.var(draws, ddof=1) + np.var(r2_blocks, ddof=1) / K))
    out.update(r2=split["r2_without_variance"], r2_se=se, block_masks=size, variance=split["variance"])
    return out


# Least squares costs about m n^2 per limit (m >= 4n fit masks); past this many units it would take minutes.
LIMIT_MAX_UNITS = 2048


def run_main_effects_limit(design, results, output: str) -> dict:
    """:func:`main_effects_limit` of a run's fit and held-out masks on ``output`` (as :func:`fit_outputs` gives
    it); ``r2`` None with a ``why`` for a design that is not random (its blocks would not be draws of one kind) or
    more than ``LIMIT_MAX_UNITS`` units."""
    n = results.masks.shape[1]
    if design.meta.get("kind") != "random" or n > LIMIT_MAX_UNITS:
        why = (f"a {design.meta.get('kind')} design: the limit needs random fit masks" if design.meta.get("kind")
               != "random" else f"{n} units: least squares on them is left out past {LIMIT_MAX_UNITS}")
        return {"r2": None, "r2_se": None, "K": 0, "block_masks": None, "variance": None, "why": why}
    Y = fit_outputs(results, output)
    fit, heldout = results.keep(design, "fit"), results.keep(design, "heldout")
    return main_effects_limit(results.masks[fit], Y[fit], results.masks[heldout], Y[heldout])


def pair_energy(masks: np.ndarray, Y: np.ndarray, pairs, outputs, p: float = 0.5, groups: int = 16,
                seed: int = 0) -> dict:
    """How much of the outputs' variance some pairs' interaction terms hold, estimated without a model.

    On masks drawn with each example kept with probability ``p``, the p-biased characters phi_i(x) = (x_i - p) /
    sqrt(p (1 - p)) and their products phi_ij = phi_i phi_j are orthonormal, so the most a model of main effects plus
    these pair terms explains is the main-effects share plus sum c_ij^2, with c_ij = E[y phi_ij]; each c_ij^2 has
    the unbiased estimate ((sum_r y_r phi_ij(x_r))^2 - sum_r y_r^2 phi_ij(x_r)^2) / (M (M - 1)) over M masks
    (products of two different retrains only, so seed noise adds nothing; at p = 0.5, phi_ij = (1 - 2 x_i)(1 - 2 x_j)
    and phi_ij^2 = 1). masks (M, n), Y (M, T); pairs (P, 2); outputs: per pair the output indices it may serve
    (None: every output). Returns ``share`` (summed over the pairs' outputs, over the pooled variance of Y) and
    ``se`` (a delete-one-group jackknife over ``groups`` groups of masks). On six n = 256 real-text runs the
    quadratic model's own screen held 2-11% of the ceiling, and the model's measured R^2 lay 2-10 points of the
    ceiling under the main-effects limit plus it (benchmarks/README, 'The pair model's reach, in the product')."""
    if not 0 < p < 1:
        raise ValueError(f"p={p}: the kept fraction must lie in (0, 1)")
    M = len(Y)
    Yc = Y - Y.mean(0)
    pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    allowed = np.zeros((len(pairs), Y.shape[1])) if outputs is not None else np.ones((len(pairs), Y.shape[1]))
    for k, ts in enumerate(outputs or []):
        allowed[k, list(ts)] = 1.0
    phi = (masks.astype(np.float64) - p) / np.sqrt(p * (1 - p))
    labels = np.random.default_rng(seed).permutation(M) % groups
    projections, diagonals, squares = [], [], []
    for g in range(groups):
        chi = phi[labels == g][:, pairs[:, 0]] * phi[labels == g][:, pairs[:, 1]]  # (M_g, P)
        projections.append(chi.T @ Yc[labels == g])  # sum_r y_r phi_ij(x_r) within the group: (P, T)
        diagonals.append((chi ** 2).T @ Yc[labels == g] ** 2)  # sum_r y_r^2 phi_ij(x_r)^2: (P, T)
        squares.append((Yc[labels == g] ** 2).sum(0))  # (T,)
    projections, diagonals, squares = np.stack(projections), np.stack(diagonals), np.stack(squares)

    def share(keep: np.ndarray) -> float:
        m = int(np.isin(labels, np.flatnonzero(keep)).sum())
        proj, diag = projections[keep].sum(0), diagonals[keep].sum(0)
        variance = squares[keep].sum() / (m - 1)
        return float((((proj ** 2 - diag) * allowed).sum() / (m * (m - 1))) / variance)
    everything = np.ones(groups, dtype=bool)
    leave = np.array([share(everything & (np.arange(groups) != g)) for g in range(groups)])
    se = float(np.sqrt((groups - 1) / groups * ((leave - leave.mean()) ** 2).sum()))
    return {"share": share(everything), "se": se}


def screen_reach(masks: np.ndarray | None, Y: np.ndarray | None, screen: dict, limit: dict,
                 p: float = 0.5) -> dict:
    """The most a model of main effects plus the pairs of ``screen`` (an estimator's ``fit_summary`` entry: pairs
    and the outputs each may serve) explains: ``limit`` (:func:`main_effects_limit`) plus :func:`pair_energy` of
    those pairs on masks (M, n) drawn with keep probability ``p`` and their outputs Y (M, T). Keys ``r2``,
    ``r2_se`` (both errors together), ``pairs`` (their share), ``pairs_se``, ``n_pairs``; ``r2`` None with a
    ``why`` where the limit is not measured (masks and Y are then not read)."""
    out = {"r2": None, "r2_se": None, "pairs": None, "pairs_se": None, "n_pairs": len(screen["pairs"])}
    if limit.get("r2") is None:
        out["why"] = limit.get("why")
        return out
    energy = pair_energy(masks, Y, screen["pairs"], screen["outputs"], p)
    out.update(r2=limit["r2"] + energy["share"], r2_se=float(np.hypot(limit["r2_se"], energy["se"])),
               pairs=energy["share"], pairs_se=energy["se"])
    return out


def limit_above_ceiling(limit: dict, ceiling: dict) -> str:
    """A clause for a main-effects ``limit`` (:func:`main_effects_limit`) that lies above the pooled noise
    ``ceiling`` (:func:`noise_ceiling`), which no model can truly pass; '' otherwise. Both are estimates: the
    ceiling from the replicated held-out masks only, the limit with a removed variance that can exceed the signal
    (at design.p=0.9 on fresh WordNet, 1,024 fit masks: least squares' variance was 0.61 of the held-out variance,
    its limit 0.357 +- 0.047 against a ceiling of 0.256 +- 0.047 from 64 replicates). The clause says by how many
    of their combined standard errors they differ, and what narrows both."""
    if limit.get("r2") is None or not ceiling.get("pooled") or limit["r2"] <= ceiling["pooled"]:
        return ""
    se = float(np.hypot(limit["r2_se"], ceiling.get("pooled_se") or 0.0))
    z = (limit["r2"] - ceiling["pooled"]) / se if se > 0 else float("inf")
    return (f"; it lies above the noise ceiling, which no model can pass: the two estimates differ by "
            f"{limit['r2'] - ceiling['pooled']:.3f}, {z:.1f} of their combined standard errors, so this run pins "
            "neither down (more replicated and held-out masks narrow both: design.replicates, design.heldout)")


def main_effects_only(est_cfg) -> bool:
    """Whether the estimator an estimator config (with ``_target_``) builds has no interaction term at any budget:
    its class's ``main_effects_only`` (:class:`dataspex.fit.estimators.base.BaseInteractionEstimator`)."""
    return est_cfg is not None and bool(getattr(get_class(est_cfg["_target_"]), "main_effects_only", False))


def estimator_bound(design, results, output: str, row: dict, est_cfg, limit: dict) -> dict | None:
    """The most the estimator of a faithfulness.json ``row`` (built from ``est_cfg``) can explain of a run's
    ``output`` at any budget, where that is measured: :func:`model_bound` of the run's masks (its screen's energy
    over every random mask, fit and held out). `dataspex plan` and the report's trust line read no forecast past
    it."""
    main_effects, screen, masks, Y = main_effects_only(est_cfg), row.get("screen"), None, None
    if limit.get("r2") is not None and screen and not main_effects:  # only then are the masks read
        rows = results.keep(design, "fit") | results.keep(design, "heldout")
        masks, Y = results.masks[rows], fit_outputs(results, output)[rows]
    return model_bound(limit, main_effects, screen, masks, Y, float(design.meta.get("p", 0.5)))


def model_bound(limit: dict, main_effects: bool, screen: dict | None, masks: np.ndarray | None = None,
                Y: np.ndarray | None = None, p: float = 0.5) -> dict | None:
    """The most a model explains at any budget, where that is measured: the main-effects ``limit``
    (:func:`main_effects_limit`) for a model of ``main_effects`` only (``kind`` "main effects"); for a model that
    recorded a ``screen`` of pairs (its ``fit_summary`` entry), :func:`screen_reach` on masks (M, n) kept with
    probability ``p`` and their outputs Y (M, T) (``kind`` "screen"); None for any other model, or while the limit
    is not measured. The one rule behind :func:`estimator_bound` (a run) and benchmarks/plan_curves.py (a pilot
    cut from a run)."""
    if limit.get("r2") is None:
        return None
    if main_effects:
        return {**limit, "kind": "main effects"}
    if screen:
        return {**screen_reach(masks, Y, screen, limit, p), "kind": "screen"}
    return None


def heldout_r2(estimator, masks, Y):
    """Faithfulness on the held-out masks: R^2 per output, and pooled over outputs (1 - total SSE / total SST,
    which weights each test example by how much its loss varies). (None, None) without held-out masks."""
    if len(masks) < 2:
        return None, None
    predicted = estimator.predict(masks)
    per_output = np.asarray(faithfulness_r2(Y, predicted, multioutput="raw_values"))
    return per_output, pooled_r2(Y, predicted)


def _fractions(fractions) -> list[float]:
    return sorted(float(f) for f in fractions if 0 < f < 1)


def update_curve(estimators_cfg, store, faithfulness: dict, fractions) -> None:
    """Refit every estimator at the budget ``fractions`` not yet cached for this fit, and cache the points."""
    fractions = _fractions(fractions)
    stamp = fit_stamp(store)
    cached = read_json(store.path(*CURVE)) if os.path.exists(store.path(*CURVE)) else {}
    old = cached.get("points", []) if cached.get("stamp") == stamp else []
    missing = [f for f in fractions if f not in {p["fraction"] for p in old}]
    new = _refit_points(estimators_cfg, store, faithfulness, missing)
    if missing:
        write_json(store.path(*CURVE), {"stamp": stamp, "points": old + new})


def load_curve(store, faithfulness: dict, fractions) -> pd.DataFrame:
    """Held-out R^2 against the number of fit masks, per estimator (columns estimator, fraction, n_masks, r2,
    r2_pooled, note): the stored fit at fraction 1.0 and the cached points at ``fractions`` for this fit."""
    fractions = _fractions(fractions)
    cached = read_json(store.path(*CURVE)) if os.path.exists(store.path(*CURVE)) else {}
    old = cached.get("points", []) if cached.get("stamp") == fit_stamp(store) else []
    points = [{"estimator": name, "fraction": 1.0, "n_masks": int(f["n_fit_masks"]), "r2": f["r2_mean_over_outputs"],
               "r2_pooled": f.get("r2_pooled"), "note": "stored fit"} for name, f in faithfulness.items()]
    points += [p for p in old if p["fraction"] in fractions]
    table = pd.DataFrame(points, columns=CURVE_COLUMNS)
    return table.sort_values(["estimator", "fraction"], kind="stable").reset_index(drop=True)


def _refit_points(estimators_cfg, store, faithfulness: dict, fractions) -> list[dict]:
    if not fractions:
        return []
    design = store.load_design()
    results = store.load_results(design)
    fit_keep = results.keep(design, "fit")
    ho_keep = results.keep(design, "heldout")
    if ho_keep.sum() < 2:
        return []
    points = []
    structured = design.fit_role != "fit"
    estimators = estimators_cfg or {}
    for name, f in faithfulness.items():
        # the stored fit's own config first (it is what the fit at fraction 1.0 used); a set written before
        # fits recorded their config takes this invocation's
        est_cfg = f.get("config") or estimators.get(name)
        if f.get("r2_mean_over_outputs") is None:
            continue  # no held-out score to track (e.g. the pairwise design's estimator)
        if est_cfg is None or structured:
            note = "structured design: only the full budget" if structured else "not in this config"
            points += [{"estimator": name, "fraction": fr, "n_masks": None, "r2": None, "r2_pooled": None, "note": note}
                       for fr in fractions]
            continue
        Y = fit_outputs(results, f.get("output", "loss"))
        X_fit, Y_fit = results.masks[fit_keep], Y[fit_keep]
        for fr in fractions:
            m = round(fr * len(X_fit))
            point = {"estimator": name, "fraction": fr, "n_masks": m, "r2": None, "r2_pooled": None, "note": ""}
            started = time.perf_counter()
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    est = instantiate(est_cfg).fit(X_fit[:m], Y_fit[:m])
                    pred = est.predict(results.masks[ho_keep])
                truth = Y[ho_keep]
                point["r2"] = float(np.mean(faithfulness_r2(truth, pred, multioutput="raw_values")))
                point["r2_pooled"] = pooled_r2(truth, pred)
            except (DataspexError, ValueError) as exc:
                point["note"] = f"not fitted: {str(exc).splitlines()[0][:120]}"
            log.info("report: faithfulness curve %s at %d masks: %s (%.1f s)", name, m,
                     "n/a" if point["r2"] is None else f"{point['r2']:.3f}", time.perf_counter() - started)
            points.append(point)
    return points
