"""Budget curves on real data (issue 15, item 3): faithfulness and planted-pair recall against the number of retrains.

Reads a finished ``dataspex run`` on a split of ``benchmarks/realdata.py`` with planted pairs (its manifest.json),
refits every estimator of the run's config on the first m fit masks for each budget m, and prints per estimator:

* pooled held-out R^2 over the test examples (1 - total SSE / total SST on the run's held-out masks) and the R^2
  of the mean test loss, beside their noise ceilings: the held-out masks retrained once more under another
  training seed (``--replicate-seed``; cached in the output folder), ceiling = sum_t cov(y_a, y_b) / sum_t var(y_a)
  (pooled) and corr(mean_a, mean_b) (mean loss): the R^2 a perfect model of the mask's effect would get;
* planted-pair recall@k (k = ``report.top_k``): the planted harmful pairs among the top k harmful pairs, the
  planted redundant ones among the top k redundant; first-order methods (the linear datamodel and TRAK, when the
  run has TRAK scores) rank pairs by the sum of the two examples' single effects at a test example;
* findings: listed pairs whose held-out test (``dataspex.fit.significance``) has a BH q-value <= ``report.q_max``,
  and how many of them are planted.

    python benchmarks/realdata.py fortunes --n-train 256 --harmful 4 --redundant 4 --out /tmp/real/f256p
    dataspex run data=files data.train_file=/tmp/real/f256p/train.csv data.test_file=/tmp/real/f256p/test.csv \\
        design.m=1024 design.heldout=256 run_dir=/tmp/runs/f256p
    python benchmarks/budget.py --run /tmp/runs/f256p --manifest /tmp/real/f256p/manifest.json --out /tmp/budget/f256p

``--output error`` (or ``margin``) scores the models of another output (``fit.output``, dataspex/core/outputs.py)
instead of the loss; TRAK then also gets a row calibrated to that output per test example (``fit_calibration`` on
the budget's fit masks), since its raw scores are in the margin's units.

``--more-fit RUN ...`` extends the fit masks with those of other runs of the same data and recipe (another
``design.seed``, ``design.heldout=0``): budgets beyond the first run's own, without retraining its held-out masks.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
import warnings

import numpy as np
import pandas as pd

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)


def markdown_table(table: pd.DataFrame) -> list[str]:
    """A DataFrame as Markdown table lines (floats to 3 decimals; None/NaN as n/a), through the report's writer."""
    from dataspex.report.markdown import _md_table

    def cell(v):
        if v is None or (isinstance(v, float) and not np.isfinite(v)):
            return "n/a"
        return f"{v:.3f}" if isinstance(v, float) else str(v)
    return _md_table([str(c) for c in table.columns], [[cell(v) for v in row] for row in table.itertuples(index=False)])


def first_order_pairs(effects: np.ndarray, kind: str, k: int) -> list[tuple[int, int]]:
    """The top ``k`` distinct pairs a first-order method predicts, from ``effects`` (n, T): the change in each test
    loss from keeping each example. harmful: the pairs whose two kept examples raise a test loss most (the two
    largest effects at each test example, ranked by their sum); redundant: the two most helpful (most negative)."""
    sign = 1.0 if kind == "harmful" else -1.0
    scored = []
    for t in range(effects.shape[1]):
        col = sign * effects[:, t]
        top = np.argsort(-col, kind="stable")[:2]
        scored.append((float(col[top].sum()), tuple(sorted(int(x) for x in top))))
    out = []
    for _, pair in sorted(scored, key=lambda s: -s[0]):
        if pair not in out:
            out.append(pair)
    return out[:k]


def recall(pairs, planted: list[dict], kind: str) -> float | None:
    truth = {(p["i"], p["j"]) for p in planted if p["kind"] == kind}
    if not truth:
        return None
    return len({(min(i, j), max(i, j)) for i, j in pairs} & truth) / len(truth)


def pair_cells(masks: np.ndarray, Y: np.ndarray, planted: list[dict]) -> list[dict]:
    """Each planted pair's mean output at its test example over ``masks`` (m, n) with ``Y`` (m, T): with neither
    of its two examples kept (``neither``), one (``one``: the mean of the two one-kept cells) and both, and how
    many masks fell in the neither cell. Saturation shows here: "one" as high as "both" (harmful) or as low
    (redundant) means either copy alone does what the two do."""
    rows = []
    for p in planted:
        i, j, t = p["i"], p["j"], p["test"]
        cell = {(a, b): (masks[:, i] == a) & (masks[:, j] == b) for a in (0, 1) for b in (0, 1)}
        mean = {key: float(Y[sel, t].mean()) if sel.any() else float("nan") for key, sel in cell.items()}
        rows.append({"kind": p["kind"], "i": i, "j": j, "test": t, "neither": mean[(0, 0)],
                     "one": (mean[(1, 0)] + mean[(0, 1)]) / 2, "both": mean[(1, 1)],
                     "n_neither": int(cell[(0, 0)].sum())})
    return rows


def estimator_config(cfg, spec: str):
    """The Hydra config of estimator ``spec``: ``name`` (a key of the run's ``estimators``, else the package's
    ``conf/estimator/<name>.yaml``), optionally with parameters: ``name:key=value:key=value`` (values read as
    YAML, e.g. ``quadratic:screen=main:n_top=20``)."""
    from omegaconf import OmegaConf

    name, *settings = spec.split(":")
    conf = os.path.join(HERE, "..", "conf", "estimator", f"{name}.yaml")
    if name in cfg.estimators:
        est_cfg = copy.deepcopy(cfg.estimators[name])
    elif os.path.exists(conf):
        est_cfg = OmegaConf.load(conf)
    else:
        raise SystemExit(f"error: estimator {name!r} is neither in the run's config nor in conf/estimator/")
    for setting in settings:
        key, sep, value = setting.partition("=")
        if not sep:
            raise SystemExit(f"error: {spec!r}: parameters are key=value, got {setting!r}")
        est_cfg[key] = OmegaConf.create(f"v: {value}").v
    return est_cfg


def run_splits(run_dir: str, output: str = "loss") -> dict:
    """A finished run's config, store, design and results, and its fit and held-out masks with their outputs
    (``fit_outputs`` on ``output``, a cost as ``dataspex fit`` models it: every test example, then the mean): keys
    cfg, store, design, results, X_fit, Y_fit, X_ho, Y_ho, fit_keep, ho_keep, n (training examples), T (test
    examples)."""
    from omegaconf import OmegaConf

    from dataspex.fit.faithfulness import fit_outputs
    from dataspex.store import RunStore

    cfg = OmegaConf.load(os.path.join(run_dir, "config.yaml"))
    store = RunStore(run_dir)
    design = store.load_design()
    results = store.load_results(design)
    fit_keep, ho_keep = results.keep(design, "fit"), results.keep(design, "heldout")
    Y = fit_outputs(results, output)
    return {"cfg": cfg, "store": store, "design": design, "results": results, "fit_keep": fit_keep,
            "ho_keep": ho_keep, "X_fit": results.masks[fit_keep], "Y_fit": Y[fit_keep],
            "X_ho": results.masks[ho_keep], "Y_ho": Y[ho_keep], "n": results.masks.shape[1], "T": Y.shape[1] - 1}


def compared_fingerprint(store) -> dict:
    """The run's fingerprint as the store compares it (``RECORDED_ONLY`` keys are recorded, not compared)."""
    from dataspex.store.run_store import RECORDED_ONLY

    return {k: v for k, v in store.stored_fingerprint().items() if k not in RECORDED_ONLY}


def fingerprint_differences(mine: dict, theirs: dict) -> list[str]:
    """The keys (sorted) in which two compared fingerprints differ: [] for runs that trained the same things."""
    return sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))


def more_fit_masks(run: dict, others: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    """``run``'s fit masks and outputs (``run_splits``) followed by those of ``others``: runs that trained the same
    things (equal fingerprints) on random designs of the same kept fraction, so their fit masks are more draws of
    the same distribution (another ``design.seed``) and a budget beyond ``run``'s own reads on into them. Refuses
    any other run, naming what differs."""
    X, Y = [run["X_fit"]], [run["Y_fit"]]
    mine = compared_fingerprint(run["store"])
    for other in others:
        where = other["store"].run_dir
        differ = fingerprint_differences(mine, compared_fingerprint(other["store"]))
        if differ:
            raise SystemExit(f"error: {where} trained other things than {run['store'].run_dir} "
                             f"(fingerprint differs in: {', '.join(differ)}): its masks do not extend this run")
        kinds = {run["design"].meta.get("kind"), other["design"].meta.get("kind")}
        p_run, p_other = run["design"].meta.get("p"), other["design"].meta.get("p")
        if kinds != {"random"} or p_run != p_other:
            raise SystemExit(f"error: {where} has a {other['design'].meta.get('kind')} design with p = {p_other}, "
                             f"{run['store'].run_dir} a {run['design'].meta.get('kind')} one with p = {p_run}: "
                             "only random designs of the same kept fraction extend each other")
        X.append(other["X_fit"])
        Y.append(other["Y_fit"])
    return np.vstack(X), np.vstack(Y)


def read_replicate(cache: str, head_seed: int):
    """(mask_ids, seed, losses) of a replicate cache whose base model came from ``head_seed`` (the run's
    ``train.seed``), else None (missing, or an older cache that drew the head from the replicate's seed)."""
    if not os.path.exists(cache):
        return None
    with np.load(cache, allow_pickle=False) as z:
        if "head_seed" not in z.files or int(z["head_seed"]) != int(head_seed):
            return None
        return z["mask_ids"], int(z["seed"]), z["losses"]


def replicate(cfg, ids: np.ndarray, masks: np.ndarray, seed: int, cache: str, log) -> np.ndarray:
    """Test losses (M, T) of the held-out masks retrained under training seed ``seed`` (cached in ``cache``)."""
    cached = read_replicate(cache, cfg.train.seed)
    if cached is not None and np.array_equal(cached[0], ids) and cached[1] == seed:
        return cached[2]
    from dataspex.train import engine
    from train_throughput import setup

    # The base model (its newly initialised classification head included) comes from the run's own seed, as in
    # the run: every mask of one run starts from the same head, so the replicate varies only what differs between
    # masks of one run (each mask's seed: LoRA init and epoch order). Drawing the head from ``seed`` as well would
    # add a mask-dependent difference between two heads to the "noise" (it made the seed null of
    # benchmarks/null_pairs.py list pairs in 38% of studies on fortunes) and lower the ceiling.
    base, train, test = setup(cfg)
    head_seed = cfg.train.seed
    cfg = copy.deepcopy(cfg)  # the caller's config keeps its seed
    cfg.train.seed = seed  # every mask's seed (per_mask: derived from (seed, mask id))
    start = time.perf_counter()
    out = {int(m): loss for m, loss, *_ in engine.train_masks(base, cfg.lora, cfg.train, train, test, masks, ids)}
    log(f"replicate: {len(ids)} held-out masks under seed {seed} in {time.perf_counter() - start:.0f} s")
    losses = np.stack([out[int(m)] for m in ids])
    os.makedirs(os.path.dirname(cache), exist_ok=True)
    tmp = cache + ".tmp.npz"
    np.savez(tmp, mask_ids=ids, seed=seed, head_seed=int(head_seed), losses=losses)
    os.replace(tmp, cache)
    return losses


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", required=True, help="a finished dataspex run directory")
    parser.add_argument("--manifest", required=True, help="the split's manifest.json (planted pairs)")
    parser.add_argument("--budgets", default="", help="comma-separated numbers of fit masks (default: n/2, n, 2n, 4n)")
    parser.add_argument("--replicate-seed", type=int, default=1, help="training seed of the ceiling's replicate")
    parser.add_argument("--no-replicate", action="store_true", help="skip the noise ceiling (no retraining)")
    parser.add_argument("--estimators", default="",
                        help="comma-separated estimators (default: the run's): a key of the run's config or of "
                             "conf/estimator/, with parameters as name:key=value (estimator_config)")
    parser.add_argument("--out", default=None, help="folder for budget.json and the replicate's cache")
    parser.add_argument("--output", default="loss", help="the output to model (fit.output): loss, margin or error")
    parser.add_argument("--pair-test", default="pooled",
                        help="the held-out pair test (report.pair_test): pooled, permutation or welch")
    parser.add_argument("--more-fit", nargs="*", default=[],
                        help="finished runs of the same data, model, LoRA and training settings (same fingerprint) "
                             "and the same design.p, whose fit masks extend --run's, in order (more_fit_masks)")
    opts = parser.parse_args(argv)

    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from dataspex.core.errors import DataspexError
    from dataspex.core.metrics import pooled_r2
    from dataspex.core.outputs import OUTPUTS, modelled_output
    from dataspex.fit import trak
    from dataspex.fit.faithfulness import noise_ceiling, pooled_ceiling
    from dataspex.fit.ranking import ranked_pairs
    from dataspex.fit.significance import ranked_pair_tests

    def log(msg):
        print(msg, file=sys.stderr, flush=True)

    planted = json.load(open(opts.manifest))["planted"]
    truth = {(p["i"], p["j"]) for p in planted}
    if opts.output not in OUTPUTS:
        raise SystemExit(f"error: --output {opts.output!r} is not one of: {', '.join(OUTPUTS)}")
    run = run_splits(opts.run, opts.output)
    cfg, store, results, ho_keep = run["cfg"], run["store"], run["results"], run["ho_keep"]
    X_fit, Y_fit, X_ho, Y_ho, n, T = (run[k] for k in ("X_fit", "Y_fit", "X_ho", "Y_ho", "n", "T"))
    X_fit, Y_fit = more_fit_masks(run, [run_splits(path, opts.output) for path in opts.more_fit])
    k, q_max = int(cfg.report.top_k), float(OmegaConf.select(cfg, "report.q_max", default=0.1))
    budgets = [int(b) for b in opts.budgets.split(",") if b] or [b for b in (n // 2, n, 2 * n, 4 * n)
                                                                  if b <= len(X_fit)]
    out_dir = opts.out or os.path.join(opts.run, "budget")
    os.makedirs(out_dir, exist_ok=True)

    ceiling = {"pooled": None, "mean_loss": None}
    own = noise_ceiling(run["design"], results, opts.output)
    if own["pooled"] is not None:  # the run's own seed replicates (design.replicates): no retraining
        ceiling = {"pooled": own["pooled"], "mean_loss": own["mean"], "replicates": own["n_masks"]}
    elif not opts.no_replicate:
        if opts.output == "margin":
            raise SystemExit("error: the replicate cache holds test losses only; --output margin needs the run's own "
                             "seed replicates (design.replicates) or --no-replicate")
        ids = results.mask_ids[ho_keep]
        rep = replicate(cfg, ids, X_ho, opts.replicate_seed, os.path.join(out_dir, "replicate.npz"), log)
        rep = modelled_output(opts.output, rep, np.zeros_like(rep))  # loss or error: functions of the loss alone
        ceiling = {"pooled": pooled_ceiling(Y_ho[:, :T], rep),
                   "mean_loss": float(np.corrcoef(Y_ho[:, T], rep.mean(1))[0, 1])}
    trak_scores = None
    try:
        trak_scores = trak.load_trak_scores(store)
    except Exception as exc:  # a run without `dataspex trak`: the TRAK column is left out, and said so
        log(f"no TRAK scores ({exc})")

    specs = [s for s in opts.estimators.split(",") if s] or list(cfg.estimators)
    rows = []
    for m in budgets:
        fitted = {}
        for name in specs:
            est_cfg = estimator_config(cfg, name)
            start = time.perf_counter()
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    fitted[name] = instantiate(est_cfg).fit(X_fit[:m], Y_fit[:m])
            except DataspexError as exc:  # e.g. the pairwise estimator on a random design: said, and left out
                log(f"m={m} {name}: not fitted ({str(exc).splitlines()[0]})")
                continue
            log(f"m={m} {name}: fitted in {time.perf_counter() - start:.0f} s")
        linear = next((r for r in fitted.values() if r.result_.estimator == "LinearDatamodel"), None)
        baseline = None if linear is None else linear.predict(X_ho)
        for name, est in fitted.items():
            res = est.result_
            pred = est.predict(X_ho)
            row = {"m": m, "estimator": name, "r2_pooled": pooled_r2(Y_ho[:, :T], pred[:, :T]),
                   "r2_mean_loss": pooled_r2(Y_ho[:, T:], pred[:, T:])}
            if res.degree >= 2:
                tables = {kind: ranked_pairs(res, kind, k, "uniform", T) for kind in ("harmful", "redundant")}
            else:  # first order: the sum of two single effects (main_effects: keeping i, -2 F[i])
                effects = np.stack([res.main_effects("uniform", output=t) for t in range(T)], axis=1)
                tables = {kind: pd.DataFrame(first_order_pairs(effects, kind, k), columns=["i", "j"])
                          for kind in ("harmful", "redundant")}
            for kind, table in tables.items():
                row[f"recall_{kind}"] = recall(zip(table["i"], table["j"]), planted, kind)
            if res.degree >= 2:
                both = pd.concat(tables.values(), ignore_index=True)
                tested = ranked_pair_tests(res, both[["i", "j", "test"]], X_ho, Y_ho, baseline, opts.pair_test)
                found = tested["q_value"].to_numpy() <= q_max
                row["findings"] = int(found.sum())
                row["findings_planted"] = int(sum((int(i), int(j)) in truth
                                                  for i, j in zip(both["i"][found], both["j"][found])))
            rows.append(row)
            log(f"m={m} {name}: {row}")
        if trak_scores is not None:
            # TRAK: positive = keeping the example lowers the test loss, so -score is the effect of keeping it
            tables = {kind: first_order_pairs(-np.asarray(trak_scores, dtype=float), kind, k)
                      for kind in ("harmful", "redundant")}
            rows.append({"m": m, "estimator": "trak (first order)", "r2_pooled": None, "r2_mean_loss": None,
                         **{f"recall_{kind}": recall(p, planted, kind) for kind, p in tables.items()}})
            if opts.output != "loss":
                # in the output's units per test example: the calibration's slope on this budget's fit masks
                S = np.column_stack([trak_scores, np.mean(trak_scores, axis=1)])
                cal = trak.fit_calibration(S, X_fit[:m], Y_fit[:m])
                effects = (np.asarray(trak_scores, dtype=float) * cal.scale[None, :T])
                rows.append({"m": m, "estimator": "trak calibrated (first order)", "r2_pooled": None,
                             "r2_mean_loss": None, **{f"recall_{kind}": recall(first_order_pairs(effects, kind, k),
                                                                                planted, kind)
                                                       for kind in ("harmful", "redundant")}})
    table = pd.DataFrame(rows)
    with open(os.path.join(out_dir, "budget.json"), "w") as fh:
        json.dump({"run": opts.run, "manifest": opts.manifest, "output": opts.output, "n_train": n, "n_test": T,
                   "n_heldout": int(ho_keep.sum()), "ceiling": ceiling, "top_k": k, "q_max": q_max,
                   "rows": rows}, fh, indent=1, default=float)
    source = (f"the run's {ceiling['replicates']} seed replicates" if "replicates" in ceiling else
              f"seed {cfg.train.seed} vs {opts.replicate_seed}")
    print(f"\n{opts.run} ({opts.output}): n_train={n}, {T} test examples, {int(ho_keep.sum())} held-out masks; "
          f"noise ceiling ({source}): pooled {ceiling['pooled']}, mean loss {ceiling['mean_loss']}\n")
    print("\n".join(markdown_table(table)))
    cells = pd.DataFrame(pair_cells(np.vstack([X_fit, X_ho]), np.vstack([Y_fit, Y_ho]), planted))
    print(f"\nPlanted pairs: the mean {opts.output} at their test example over all masks, by how many of the two "
          "are kept\n")
    print("\n".join(markdown_table(cells)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
