"""Curation value on a finished study: does each method's ranking of training examples find flipped labels, and
does removing its top examples help a model on the eval split?

Methods (each a harm score per training example; higher = more suspect):
  dataspex   the ranking model's pair-aware harm (dataspex.fit.baselines.pair_aware_harm: the largest effect of
             keeping i at the full set or with one other example removed, on the mean test loss)
  linear     the linear datamodel's main effects; trak  TRAK; cleanlab  cleanlab's label quality from K-fold
             retrains; datainf  DataInf influence; random  a seeded random order

(a) flipped labels (the manifest's ``flipped``, from ``benchmarks/realdata.py --flip``): ROC AUC of each score,
    and the share of flipped examples among the top 5 / 10 / 20 % inspected;
(b) removal curves: remove each method's top 1 / 2 / 5 % (random: ``--random-draws`` draws), retrain with paired
    seeds (one seed per replicate for every arm, as ``dataspex curate``), mean eval loss change against the full
    set and against random removal of as many, with t-intervals;
(c) planted masking pairs (the manifest's ``planted`` harmful pairs): how many each method's removals undo (both
    examples removed).

    python benchmarks/curation.py --run RUN --manifest MANIFEST --out OUT [--eval-file EVAL] [--seeds 4]

Results: OUT/curation.json and a Markdown table on stdout. The retrains go through a store in
OUT/study-<digest of the arms> (resumable); DataInf's scores are kept in OUT/datainf.npy.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np
from omegaconf import OmegaConf
from sklearn.metrics import roc_auc_score

from dataspex.core.data import TaskData, load_data
from dataspex.core.files import write_json
from dataspex.fit.artifacts import choose_estimator, load_fitted
from dataspex.fit.baselines import harm_scores, pair_aware_harm, top_harmful
from dataspex.fit.trak import load_trak_scores
from dataspex.stages.curate import RunModel, cleanlab_baseline, datainf_baseline, open_study, train_study
from dataspex.store import RunStore
from dataspex.validate import t_interval
from dataspex.validate.curation import per_replicate

INSPECT = (0.05, 0.10, 0.20)


def harms(cfg, store, data, folds: int, seed: int, log, out_dir: str) -> tuple[dict[str, np.ndarray], RunModel, str]:
    """Every method's harm score (n_train,), the loaded model (shared with the removal study) and the name of the
    estimator that gives dataspex's score."""
    fitted, faithfulness = load_fitted(store)
    auto = choose_estimator(fitted, faithfulness, "auto")
    pair_models = [n for n, res in fitted.items() if res.degree >= 2]
    if not pair_models:
        raise SystemExit("error: the run has no fitted pair model (quadratic, proxyspex, ...)")
    # dataspex's score comes from the most faithful *pair* model (report.estimator=auto may pick the linear
    # datamodel, whose score is the "linear" row already)
    name = max(pair_models, key=lambda n: faithfulness[n].get("r2_pooled") or -np.inf)
    out = {"dataspex": pair_aware_harm(fitted[name])}
    log(f"dataspex score from {name}; report.estimator=auto would rank by {auto}")
    trak_scores = load_trak_scores(store)
    out.update(harm_scores(fitted, trak_scores))
    model = RunModel(cfg, len(data.label_names))
    started = time.perf_counter()
    out["cleanlab"], flagged, _ = cleanlab_baseline(cfg, store, data, folds, model)
    log(f"cleanlab: {len(flagged)} flagged, {time.perf_counter() - started:.0f} s")
    cache = os.path.join(out_dir, "datainf.npy")
    if os.path.exists(cache):  # seconds to minutes to recompute, and deterministic: kept between runs
        out["datainf"] = np.load(cache, allow_pickle=False)
    else:
        started = time.perf_counter()
        out["datainf"] = datainf_baseline(cfg, data, model)
        log(f"datainf: {time.perf_counter() - started:.0f} s")
        np.save(cache, out["datainf"], allow_pickle=False)
    out["random"] = np.random.default_rng([seed, 4]).random(data.n_train)
    return out, model, name


def flip_table(scores: dict, flipped: list[int], n_train: int) -> dict:
    """{method: {"auc", "found_at_<p>pct"}}: ROC AUC of the harm score for the flipped examples, and the share of
    them among the top p% of the ranking."""
    truth = np.zeros(n_train, dtype=bool)
    truth[flipped] = True
    out = {}
    for method, harm in scores.items():
        order = np.argsort(-harm, kind="stable")
        row = {"auc": float(roc_auc_score(truth, harm))}
        for share in INSPECT:
            k = int(round(share * n_train))
            row[f"found_at_{round(100 * share)}pct"] = float(truth[order[:k]].sum() / max(truth.sum(), 1))
        out[method] = row
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", required=True)
    parser.add_argument("--manifest", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--eval-file", default=None, help="the eval split, if the run was made without one")
    parser.add_argument("--seeds", type=int, default=4)
    parser.add_argument("--fractions", default="0.01,0.02,0.05")
    parser.add_argument("--random-draws", type=int, default=5)
    parser.add_argument("--folds", type=int, default=5)
    opts = parser.parse_args(argv)
    os.makedirs(opts.out, exist_ok=True)

    def log(msg):
        print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)

    cfg = OmegaConf.load(os.path.join(opts.run, "config.yaml"))
    cfg.run_dir, cfg.progress = opts.run, False
    if opts.eval_file:
        cfg.data.eval_file = opts.eval_file
    manifest = json.load(open(opts.manifest))
    data = load_data(cfg.data, cfg.model.task)
    if data.eval is None:
        parser.error("the run's data has no eval split: pass --eval-file")
    store = RunStore(opts.run)
    scores, model, ranking = harms(cfg, store, data, opts.folds, int(cfg.train.seed), log, opts.out)
    flipped = [int(f["i"]) for f in manifest.get("flipped", [])]
    result = {"run": opts.run, "manifest": opts.manifest, "dataspex_estimator": ranking, "n_train": data.n_train,
              "n_eval": data.n_eval, "n_flipped": len(flipped), "seeds": opts.seeds}
    if flipped:
        result["flipped"] = flip_table(scores, flipped, data.n_train)

    fractions = [float(x) for x in opts.fractions.split(",")]
    pairs = [(p["i"], p["j"]) for p in manifest.get("planted", []) if p["kind"] == "harmful"]
    full = np.ones(data.n_train, dtype=np.uint8)
    arms, removed, undone = {"full": full}, {}, {}
    for frac in fractions:
        k = max(1, int(round(frac * data.n_train)))
        for method, harm in scores.items():
            draws = ([top_harmful(harm, k)] if method != "random" else
                     [sorted(int(i) for i in np.random.default_rng([int(cfg.train.seed), 5, d]).choice(
                         data.n_train, k, replace=False)) for d in range(opts.random_draws)])
            for d, rows in enumerate(draws):
                arm = f"{method}@{frac:g}" + (f"#{d}" if method == "random" else "")
                mask = full.copy()
                mask[rows] = 0
                arms[arm], removed[arm] = mask, rows
                undone[arm] = int(sum(i in rows and j in rows for i, j in pairs))
    aug = TaskData(train=data.train, test=data.eval, task=data.task, label_names=data.label_names)
    sub, design = open_study(cfg, opts.out, aug, arms, opts.seeds, data.eval_hash())  # other removals: another study
    started = time.perf_counter()
    trained = train_study(cfg, sub, design, aug, opts.seeds, model)
    log(f"removal study: {len(arms)} arms x {opts.seeds} seeds, {trained} trained in "
        f"{time.perf_counter() - started:.0f} s")
    loss, _, r = per_replicate(design, sub.load_results(design), opts.seeds, data.task)
    curves = {}
    for frac in fractions:
        rand = np.mean([loss[a] - loss["full"] for a in arms if a.startswith(f"random@{frac:g}#")], axis=0)
        for method in scores:
            arm = f"{method}@{frac:g}" + ("#0" if method == "random" else "")
            diff = rand if method == "random" else loss[arm] - loss["full"]
            mean, _, lo, hi = t_interval(diff, 0.9)
            vs_mean, _, vs_lo, vs_hi = t_interval(diff - rand, 0.9)
            curves.setdefault(method, {})[f"{frac:g}"] = {
                "removed": len(removed[arm]), "loss_change": mean, "low": lo, "high": hi,
                "vs_random": vs_mean, "vs_random_low": vs_lo, "vs_random_high": vs_hi,
                "planted_pairs_undone": undone[arm] if method != "random" else
                float(np.mean([undone[a] for a in arms if a.startswith(f"random@{frac:g}#")]))}
    result.update(removal=curves, replicates=r, planted_harmful_pairs=len(pairs))
    write_json(os.path.join(opts.out, "curation.json"), result)

    if flipped:
        print(f"\n(a) flipped labels: {len(flipped)} of {data.n_train}\n")
        print("| method | AUC | " + " | ".join(f"found at {round(100 * s)}%" for s in INSPECT) + " |")
        print("|---|---:|" + "---:|" * len(INSPECT))
        for method, row in result["flipped"].items():
            print(f"| {method} | {row['auc']:.3f} | " + " | ".join(
                f"{row[f'found_at_{round(100 * s)}pct']:.2f}" for s in INSPECT) + " |")
    print(f"\n(b, c) removal: eval loss change (nats, 90% interval, {r} paired seeds), against random removal, "
          f"planted harmful pairs undone (of {len(pairs)})\n")
    print("| method | " + " | ".join(f"top {100 * f:g}%" for f in fractions) + " |")
    print("|---|" + "---|" * len(fractions))
    for method, row in curves.items():
        cells = [f"{c['loss_change']:+.3f} [{c['low']:+.3f}, {c['high']:+.3f}]; vs random {c['vs_random']:+.3f} "
                 f"[{c['vs_random_low']:+.3f}, {c['vs_random_high']:+.3f}]; undone {c['planted_pairs_undone']:g}"
                 for c in row.values()]
        print(f"| {method} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
