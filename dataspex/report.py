"""The report: what a curation team should drop or relabel, the ranked pairs behind it, and how far to trust them.

Written into ``<run_dir>/report/``:

* ``report.html``: one self-contained page (images inlined, no scripts, no external files): a summary for the
  curation team, the validation by retraining (after ``dataspex validate``), ranked harmful and redundant pairs
  with both texts and the test examples they move, degree-3 interactions where the estimator found any,
  heatmaps, faithfulness-vs-budget curves and the run's config;
* ``report.md``: the same in Markdown, images linked;
* tables for tools: ``pairs.csv``/``.parquet``, ``triples.csv``/``.parquet``, ``validation.csv``/``.parquet``,
  ``faithfulness_curve.csv``, ``interactions.parquet`` (every coefficient of every estimator, long form),
  ``summary.json``;
* images: ``heatmap.png`` (every pair), ``heatmap_<estimator>.png`` (the listed examples, labelled by text),
  ``faithfulness_curve.png``.

Faithfulness-vs-budget: each fitted estimator is refitted on growing prefixes of the fit masks (fractions
``report.curve_fractions``, default 0.25/0.5/0.75; 1.0 is the stored fit) and scored on the held-out masks. The
points are cached in ``faithfulness_curve.json`` and recomputed only when the fit changes.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import html
import io
import logging
import os

import numpy as np
import pandas as pd

from dataspex.errors import DataspexError
from dataspex.io import atomic_write_bytes, atomic_write_text, read_json, write_json

log = logging.getLogger("dataspex")

KINDS = {
    "harmful": "keeping both raises the test loss; removing just one of them does not undo it",
    "redundant": "removing either alone is harmless; removing both raises the test loss",
}
ESTIMANDS = {
    "uniform": "average second difference over random half-size training sets (4 x Fourier coefficient)",
    "full": "second difference at the full training set: f(all-i-j) - f(all-i) - f(all-j) + f(all)",
}
PATTERNS = {
    "masking": "each alone already does the damage: act on both",
    "synergistic": "damage only together: removing either one breaks it",
    "redundant": "near-duplicates: keep at least one",
    "complementary": "help only together",
}
CURVE_FRACTIONS = (0.25, 0.5, 0.75)
SUMMARY_ROWS = 5  # pairs per kind in the curation summary
HEATMAP_EXAMPLES = 20  # examples in a labelled heatmap


# ------------------------------------------------------------------------------------------- loading

def load_fitted(store) -> tuple[dict, dict]:
    """{estimator name: InteractionResult} and the faithfulness table written by `dataspex fit`."""
    from dataspex.estimators import InteractionResult

    path = store.path("fit", "faithfulness.json")
    if not os.path.exists(path):
        raise DataspexError(f"{store.run_dir} has no fitted estimators: run `dataspex fit run_dir={store.run_dir}`")
    faithfulness = read_json(path)
    results = {name: InteractionResult.load(store.path("fit", f"{name}.npz")) for name in faithfulness}
    return results, faithfulness


def choose_estimator(results: dict, faithfulness: dict, wanted: str) -> str:
    """The estimator that ranks pairs: the one asked for, else the most faithful one that models pairs."""
    if wanted != "auto":
        if wanted not in results:
            raise DataspexError(f"report.estimator={wanted!r} was not fitted; fitted: {sorted(results)}")
        return wanted
    # Prefer estimators that found pairs; if none did, the most faithful one reports "none found".
    candidates = [name for name, res in results.items() if res.degree >= 2] or list(results)
    return max(candidates, key=lambda n: faithfulness[n]["r2_mean_over_outputs"] or -np.inf)


def n_test_outputs(result) -> int:
    """Outputs that are test examples (the fitted "mean" output, if any, is last and left out)."""
    return result.n_outputs - (1 if "mean" in (result.output_names or []) else 0)


def load_trak(store, n_train: int, n_test: int):
    """TRAK scores (n_train, n_test) from ``dataspex trak``, or None (not run, or not available)."""
    try:
        from dataspex.trak import load_trak_scores
    except ImportError:
        return None
    try:
        scores = load_trak_scores(store)
    except (DataspexError, OSError, KeyError, ValueError) as exc:  # never fail for want of the TRAK column
        log.warning("report: TRAK scores not used (%s)", exc)
        return None
    if scores is None:
        return None
    scores = np.asarray(scores, dtype=np.float64)
    if scores.shape != (n_train, n_test):
        log.warning("report: TRAK scores have shape %s, expected %s; not used", scores.shape, (n_train, n_test))
        return None
    return scores


# ------------------------------------------------------------------------------------------- tables

def ranked_pairs(result, kind: str, k: int, estimand: str, n_test: int) -> pd.DataFrame:
    """The top ``k`` distinct pairs of ``kind`` over all test examples (each pair at its strongest test
    example; the mean-loss output is left out so a pair is tied to the examples it moves)."""
    table = result.top_pairs(kind=kind, k=result.n_outputs * result.n_features ** 2, estimand=estimand,
                             output="all")
    table = table[table["output"] != "mean"]
    table = table.drop_duplicates(subset=["i", "j"], keep="first").head(k).reset_index(drop=True)
    table.insert(0, "rank", np.arange(1, len(table) + 1))
    table["test"] = [int(str(o).rsplit("_", 1)[-1]) for o in table["output"]]
    return table


def _label(data, split, idx) -> str:
    if split.labels is None:
        return split.completions[idx]
    return data.label_names[int(split.labels[idx])]


def _describe(table: pd.DataFrame, data, columns=("i", "j")) -> pd.DataFrame:
    out = table.copy()
    for c in columns:
        out[f"text_{c}"] = [data.train.texts[x] for x in out[c]]
        out[f"label_{c}"] = [_label(data, data.train, x) for x in out[c]]
    out["test_text"] = [data.test.texts[t] for t in out["test"]]
    out["test_label"] = [_label(data, data.test, t) for t in out["test"]]
    return out


def score_stack(result, estimand: str) -> np.ndarray:
    """(T, n, n): every test example's pair-score matrix."""
    return np.stack([result.pair_scores(estimand, output=t) for t in range(n_test_outputs(result))])


def also_moves(table: pd.DataFrame, stack: np.ndarray, share: float = 0.5, most: int = 3) -> list[str]:
    """Other test examples on which a pair's |score| is at least ``share`` of its strongest, e.g. "#3 +1.20"."""
    out = []
    for row in table.itertuples():
        scores = stack[:, row.i, row.j]
        strongest = np.abs(scores).max()
        others = [t for t in np.argsort(-np.abs(scores)) if t != row.test and strongest > 0
                  and abs(scores[t]) >= share * strongest][:most]
        out.append(", ".join(f"#{t} {scores[t]:+.2f}" for t in others))
    return out


def ranked_triples(result, k: int, estimand: str) -> pd.DataFrame:
    """Top ``k`` distinct degree-3 interactions (columns rank, i, j, l, test, score) at their strongest test
    example. score: third difference of the test loss, averaged over random half-datasets (uniform,
    -8 F[{i,j,l}]) or at the full data set (full, 8 sum over keys k containing the triple of (-1)^|k| F[k])."""
    from itertools import combinations

    T = n_test_outputs(result)
    acc: dict[tuple, np.ndarray] = {}
    for key, coef in zip(result.keys, result.fourier[:, :T]):
        if len(key) < 3 or (estimand == "uniform" and len(key) != 3) or not np.any(coef):
            continue
        weight = 8.0 * (-1.0) ** len(key)
        for triple in combinations(key, 3):
            acc[triple] = acc.get(triple, 0.0) + weight * coef
    columns = ["rank", "i", "j", "l", "test", "score"]
    if not acc:
        return pd.DataFrame(columns=columns)
    triples = list(acc)
    values = np.stack([acc[t] for t in triples])  # (P, T)
    best = np.abs(values).argmax(axis=1)
    score = values[np.arange(len(triples)), best]
    order = np.argsort(-np.abs(score), kind="stable")
    order = [r for r in order if score[r] != 0][:k]
    return pd.DataFrame({"rank": np.arange(1, len(order) + 1),
                         "i": [triples[r][0] for r in order], "j": [triples[r][1] for r in order],
                         "l": [triples[r][2] for r in order], "test": [int(best[r]) for r in order],
                         "score": [float(score[r]) for r in order]}, columns=columns)


def planted_recall(table: pd.DataFrame, planted: list[dict], kind: str) -> dict | None:
    """Recall of the planted pairs of ``kind`` among the listed pairs (None when nothing was planted)."""
    truth = {(p["i"], p["j"]) for p in planted if p["kind"] == kind}
    if not truth:
        return None
    found = {(int(min(i, j)), int(max(i, j))) for i, j in zip(table["i"], table["j"])} & truth
    return {"found": len(found), "planted": len(truth), "recall": len(found) / len(truth),
            "missed": sorted(truth - found)}


def _merge_validation(table: pd.DataFrame, validation: pd.DataFrame | None) -> pd.DataFrame:
    cols = ["verdict", "realised", "ci_low", "ci_high", "predicted"]
    if validation is None or table.empty:
        return table
    v = validation[["i", "j", "test", *cols]].rename(columns={c: f"validated_{c}" for c in cols})
    return table.merge(v, on=["i", "j", "test"], how="left")


# ------------------------------------------------------------------------------------------- faithfulness curve

def _fit_stamp(store) -> str:
    with open(store.path("fit", "faithfulness.json"), "rb") as fh:
        return hashlib.sha256(fh.read()).hexdigest()[:16]


def faithfulness_curve(cfg, store, faithfulness: dict, fractions=None) -> pd.DataFrame:
    """Held-out R^2 against the number of fit masks, per estimator (columns estimator, fraction, n_masks, r2,
    r2_pooled, note). Cached in report/faithfulness_curve.json, keyed by the fit: only budgets not cached for
    this fit are refitted."""
    from dataspex.io import read_json as _read

    fractions = sorted(float(f) for f in (fractions if fractions is not None else CURVE_FRACTIONS) if 0 < f < 1)
    cache = store.path("report", "faithfulness_curve.json")
    stamp = _fit_stamp(store)
    cached = _read(cache) if os.path.exists(cache) else {}
    old = cached.get("points", []) if cached.get("stamp") == stamp else []
    missing = [f for f in fractions if f not in {p["fraction"] for p in old}]
    new = _refit_points(cfg, store, faithfulness, missing)
    if missing:
        write_json(cache, {"stamp": stamp, "points": old + new})
    points = [{"estimator": name, "fraction": 1.0, "n_masks": int(f["n_fit_masks"]), "r2": f["r2_mean_over_outputs"],
               "r2_pooled": f.get("r2_pooled"), "note": "stored fit"} for name, f in faithfulness.items()]
    points += [p for p in old + new if p["fraction"] in fractions]
    table = pd.DataFrame(points, columns=["estimator", "fraction", "n_masks", "r2", "r2_pooled", "note"])
    return table.sort_values(["estimator", "fraction"], kind="stable").reset_index(drop=True)


def _refit_points(cfg, store, faithfulness: dict, fractions) -> list[dict]:
    if not fractions:
        return []
    import time
    import warnings

    from hydra.utils import instantiate

    from dataspex.metrics import faithfulness_r2

    design = store.load_design()
    results = store.load_results(design)
    fit_role = "spex" if design.meta.get("kind") == "spex" else "fit"
    fit_keep = np.isin(results.mask_ids, design.mask_ids[design.roles == fit_role])
    ho_keep = np.isin(results.mask_ids, design.mask_ids[design.roles == "heldout"])
    if ho_keep.sum() < 2:
        return []
    points = []
    estimators = cfg.get("estimators") or {}
    for name, f in faithfulness.items():
        est_cfg = estimators.get(name)
        if f.get("r2_mean_over_outputs") is None:
            continue  # no held-out score to track (e.g. the pairwise design's estimator)
        if est_cfg is None or fit_role == "spex":
            note = "structured design: only the full budget" if fit_role == "spex" else "not in this config"
            points += [{"estimator": name, "fraction": fr, "n_masks": None, "r2": None, "r2_pooled": None, "note": note}
                       for fr in fractions]
            continue
        Y = results.outputs(f.get("output", "loss"))
        Y = np.column_stack([Y, Y.mean(axis=1)])
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
                point["r2_pooled"] = 1.0 - float(((truth - pred) ** 2).sum() /
                                                 max(((truth - truth.mean(axis=0)) ** 2).sum(), 1e-300))
            except (DataspexError, ValueError) as exc:
                point["note"] = f"not fitted: {str(exc).splitlines()[0][:120]}"
            log.info("report: faithfulness curve %s at %d masks: %s (%.1f s)", name, m,
                     "n/a" if point["r2"] is None else f"{point['r2']:.3f}", time.perf_counter() - started)
            points.append(point)
    return points


# ------------------------------------------------------------------------------------------- figures

def _figure_png(fig) -> bytes:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight", pad_inches=0.15)
    plt.close(fig)
    return buf.getvalue()


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def strongest(stack: np.ndarray) -> np.ndarray:
    """(n, n): each pair's score at the test example where it is largest in size."""
    if len(stack) == 0:
        return np.zeros(stack.shape[1:])
    return np.take_along_axis(stack, np.abs(stack).argmax(axis=0)[None], axis=0)[0]


def heatmap_png(matrix: np.ndarray, path: str, title: str, labels: list[str] | None = None) -> None:
    """A signed heatmap (red: raises the loss together, blue: lowers it), labelled by ``labels`` if given,
    else by index."""
    plt = _pyplot()
    n = len(matrix)
    bound = float(np.abs(matrix).max()) or 1.0
    if labels is None:
        fig, ax = plt.subplots(figsize=(7.5, 6.5), dpi=110)
    else:
        side = max(6.0, 0.36 * n + 4.0)
        fig, ax = plt.subplots(figsize=(side + 1.5, side), dpi=110)
    im = ax.imshow(matrix, cmap="RdBu_r", vmin=-bound, vmax=bound)
    if labels is None:
        step = max(1, n // 16)
        ax.set_xticks(range(0, n, step))
        ax.set_yticks(range(0, n, step))
        ax.set_xlabel("training example j")
        ax.set_ylabel("training example i")
    else:
        ax.set_xticks(range(n))
        ax.set_yticks(range(n))
        ax.set_xticklabels([lab.split(" ", 1)[0] for lab in labels], fontsize=8)
        ax.set_yticklabels(labels, fontsize=8)
        ax.set_xlabel("training example (see the row labels)")
    ax.set_title(title, fontsize=10)
    fig.colorbar(im, ax=ax, label="interaction on test loss (nats)", shrink=0.8)
    fig.tight_layout()
    atomic_write_bytes(path, _figure_png(fig))


def curve_png(curve: pd.DataFrame, path: str) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4.2), dpi=110)
    for name, part in curve.dropna(subset=["r2", "n_masks"]).groupby("estimator", sort=True):
        ax.plot(part["n_masks"], part["r2"], marker="o", label=name)
    ax.axhline(0.0, color="grey", lw=0.8, ls="--")
    ax.set_xlabel("retrains used to fit (fit masks)")
    ax.set_ylabel("held-out faithfulness R^2")
    ax.set_title("Faithfulness vs budget (held-out random masks)", fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    atomic_write_bytes(path, _figure_png(fig))


def _short(text: str, width: int = 34) -> str:
    text = str(text)
    return text if len(text) <= width else text[: width - 1] + "\u2026"


# ------------------------------------------------------------------------------------------- curation summary

def curation_actions(tables: dict, result, data, validation) -> pd.DataFrame:
    """What to do about each of the top pairs, with the test-loss change to expect if both are removed."""
    rows = []
    vkey = {} if validation is None else {(r.i, r.j): r for r in validation.itertuples()}
    for kind in KINDS:
        for row in tables[kind].head(SUMMARY_ROWS).itertuples():
            if kind == "harmful":
                action = "drop both" if row.pattern == "masking" else "drop either"
                if data.task == "classification" and all(
                        label != row.test_label and _similar(text, row.test_text) >= 0.5
                        for text, label in ((row.text_i, row.label_i), (row.text_j, row.label_j))):
                    # both read like the test example but carry the other label: likely mislabelled copies
                    action = f"relabel both as '{row.test_label}'? (else drop both)"
            else:
                action = "keep at least one (dropping one is safe, both is not)"
            predicted = float(-result.pair_effects("full", output=int(row.test))[row.i, row.j])
            v = vkey.get((row.i, row.j))
            done = v is not None and v.verdict != "pending"
            removal = getattr(v, "removal", "unclear") if done else "-"
            rows.append({"kind": kind, "rank": row.rank, "i": row.i, "j": row.j, "pattern": row.pattern,
                         "action": action, "test": row.test,
                         "predicted_change_if_both_removed": predicted,
                         "realised_change_if_both_removed": getattr(v, "realised_removal", np.nan) if done else np.nan,
                         "realised_low": getattr(v, "removal_ci_low", np.nan) if done else np.nan,
                         "realised_high": getattr(v, "removal_ci_high", np.nan) if done else np.nan,
                         "verdict": v.verdict if v is not None else "not validated", "removal": removal,
                         "text_i": row.text_i, "label_i": row.label_i, "text_j": row.text_j,
                         "label_j": row.label_j, "test_text": row.test_text, "test_label": row.test_label})
    return pd.DataFrame(rows)


def _similar(a: str, b: str) -> float:
    """Word-set Jaccard similarity of two texts (a cheap "is this a near-copy" check)."""
    wa, wb = set(str(a).lower().split()), set(str(b).lower().split())
    return len(wa & wb) / max(len(wa | wb), 1)


def examples_to_review(actions: pd.DataFrame, validated: bool) -> list[int]:
    """The training examples of the summary's harmful pairs (once validated: those whose removal lowered the
    test loss in the retrains)."""
    if actions.empty:
        return []
    harmful = actions[actions["kind"] == "harmful"]
    if validated:  # the pairs whose removal lowered the test loss in the retrains
        harmful = harmful[harmful["removal"] == "lowered"]
    return sorted({int(x) for x in np.concatenate([harmful["i"].to_numpy(), harmful["j"].to_numpy()])})


def drop_all_effect(result, n_train: int, examples: list[int]) -> float | None:
    """Predicted change in the mean test loss from removing ``examples`` from the full training set."""
    if not examples:
        return None
    full = np.ones((2, n_train), dtype=np.uint8)
    full[1, examples] = 0
    pred = result.predict(full)
    names = result.output_names or []
    column = names.index("mean") if "mean" in names else None
    values = pred[:, column] if column is not None else pred.mean(axis=1)
    return float(values[1] - values[0])


# ------------------------------------------------------------------------------------------- the report

def write_report(cfg, store, data) -> str:
    """Write every report file; returns the path of report.md (report.html beside it)."""
    from dataspex.validate import load_validation

    fitted, faithfulness = load_fitted(store)
    name = choose_estimator(fitted, faithfulness, cfg.report.estimator)
    result, estimand, k = fitted[name], cfg.report.estimand, int(cfg.report.top_k)
    out_dir = store.path("report")
    os.makedirs(out_dir, exist_ok=True)

    validation, vmeta = load_validation(store)
    trak = load_trak(store, data.n_train, data.n_test)
    stack = score_stack(result, estimand)
    tables, recall = {}, {}
    for kind in KINDS:
        table = _describe(ranked_pairs(result, kind, k, estimand, data.n_test), data)
        table["also_moves"] = also_moves(table, stack)
        if trak is not None:
            table["trak_i"] = [float(trak[i, t]) for i, t in zip(table["i"], table["test"])]
            table["trak_j"] = [float(trak[j, t]) for j, t in zip(table["j"], table["test"])]
        tables[kind] = _merge_validation(table, validation)
        recall[kind] = planted_recall(tables[kind], data.planted, kind)
    pairs = pd.concat([t.assign(kind=kind) for kind, t in tables.items()], ignore_index=True)
    pairs["estimator"] = name
    atomic_write_text(os.path.join(out_dir, "pairs.csv"), pairs.to_csv(index=False))
    atomic_write_bytes(os.path.join(out_dir, "pairs.parquet"), pairs.to_parquet(index=False))

    triples = ranked_triples(result, k, estimand) if result.degree >= 3 else None
    if triples is not None:
        triples = _describe(triples, data, columns=("i", "j", "l"))
        atomic_write_text(os.path.join(out_dir, "triples.csv"), triples.to_csv(index=False))
        atomic_write_bytes(os.path.join(out_dir, "triples.parquet"), triples.to_parquet(index=False))
    if validation is not None:
        atomic_write_text(os.path.join(out_dir, "validation.csv"), validation.to_csv(index=False))
        atomic_write_bytes(os.path.join(out_dir, "validation.parquet"), validation.to_parquet(index=False))
    coefs = pd.concat([res.to_frame(key_format="str").assign(estimator=n) for n, res in fitted.items()],
                      ignore_index=True)
    coefs["output"] = coefs["output"].astype(str)
    atomic_write_bytes(os.path.join(out_dir, "interactions.parquet"), coefs.to_parquet(index=False))

    fractions = cfg.report.get("curve_fractions", None) if hasattr(cfg.report, "get") else None
    curve = faithfulness_curve(cfg, store, faithfulness, fractions)
    atomic_write_text(os.path.join(out_dir, "faithfulness_curve.csv"), curve.to_csv(index=False))

    images = _write_images(out_dir, fitted, name, estimand, stack, tables, data, curve)
    actions = curation_actions(tables, result, data, validation)
    harmful_examples = examples_to_review(actions, validated=validation is not None)
    drop_effect = drop_all_effect(result, data.n_train, harmful_examples)
    ctx = {"cfg": cfg, "store": store, "data": data, "name": name, "estimand": estimand, "k": k,
           "tables": tables, "recall": recall, "faithfulness": faithfulness, "curve": curve, "images": images,
           "validation": validation, "vmeta": vmeta, "triples": triples, "trak": trak is not None,
           "actions": actions, "harmful_examples": harmful_examples, "drop_effect": drop_effect,
           "result": result}

    summary = {"estimator": name, "estimand": estimand, "top_k": k, "recall_at_k": recall,
               "faithfulness": {n: f["r2_mean_over_outputs"] for n, f in faithfulness.items()},
               "examples_to_review": harmful_examples, "predicted_mean_loss_change_if_removed": drop_effect,
               "validation": None if validation is None else {
                   "level": vmeta.get("level"), "seeds": vmeta.get("seeds"), "stale": vmeta.get("stale"),
                   "confirmed": int((validation["verdict"] == "confirmed").sum()), "pairs": len(validation),
                   "curated": vmeta.get("curated")},
               "degree3": 0 if triples is None else len(triples)}
    write_json(os.path.join(out_dir, "summary.json"), summary)
    atomic_write_text(os.path.join(out_dir, "report.html"), render_html(ctx))
    path = os.path.join(out_dir, "report.md")
    atomic_write_text(path, render_markdown(ctx))
    return path


def _write_images(out_dir, fitted, name, estimand, stack, tables, data, curve) -> dict:
    images = {}
    heatmap_png(strongest(stack), os.path.join(out_dir, "heatmap.png"),
                f"{name}: every pair ({estimand} estimand), at its strongest test example")
    images["heatmap.png"] = f"{name}: every pair, at the test example each moves most"
    listed = []
    for kind in KINDS:
        for i, j in zip(tables[kind]["i"], tables[kind]["j"]):
            listed += [int(x) for x in (i, j) if int(x) not in listed]
    listed = listed[:HEATMAP_EXAMPLES]
    if listed:
        labels = [f"#{x} {_short(data.train.texts[x])} [{_short(_label(data, data.train, x), 12)}]"
                  for x in listed]
        for est_name, res in fitted.items():
            if res.degree < 2:
                continue
            sub = strongest(stack if est_name == name else score_stack(res, estimand))[np.ix_(listed, listed)]
            file = f"heatmap_{est_name}.png"
            heatmap_png(sub, os.path.join(out_dir, file),
                        f"{est_name}: the listed examples ({estimand} estimand)", labels)
            images[file] = f"{est_name}: pairs among the examples listed in this report"
    if not curve.dropna(subset=["r2"]).empty:
        curve_png(curve, os.path.join(out_dir, "faithfulness_curve.png"))
        images["faithfulness_curve.png"] = "held-out R^2 against the number of retrains, per estimator"
    return images


# ------------------------------------------------------------------------------------------- rendering helpers

def _fmt(x, spec="+.3f") -> str:
    try:
        if x is None or not np.isfinite(float(x)):
            return "n/a"
    except (TypeError, ValueError):
        return "n/a"
    return format(float(x), spec)


def _ci(low, high) -> str:
    if _fmt(low) == "n/a":
        return "n/a"
    return f"[{_fmt(low)}, {_fmt(high)}]"


def _cell(text) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _intro(ctx) -> list[tuple[str, str]]:
    cfg, data, store = ctx["cfg"], ctx["data"], ctx["store"]
    f = ctx["faithfulness"][ctx["name"]]
    r2 = _fmt(f["r2_mean_over_outputs"], ".3f")
    return [
        ("Run", store.run_dir),
        ("Model", (f"{cfg.model.name_or_path} ({data.task}), LoRA r={cfg.lora.r} on {list(cfg.lora.target_modules)} "
                   f"(layers: {cfg.lora.layers or 'all'})")),
        ("Data", f"{data.n_train} training and {data.n_test} test examples"),
        ("Ranked by", (f"{ctx['name']} (held-out R^2 {r2}, {f['n_fit_masks']} retrains); score = interaction on "
                       f"the test loss in nats, estimand {ctx['estimand']}: {ESTIMANDS[ctx['estimand']]}")),
    ]


def _headline(ctx) -> list[str]:
    """The summary's bullet points (plain text, shared by HTML and Markdown)."""
    out = []
    validation, vmeta = ctx["validation"], ctx["vmeta"]
    if validation is not None:
        level = round(100 * vmeta["level"])
        for kind in KINDS:
            part = validation[validation["kind"] == kind]
            if len(part):
                out.append(f"{int((part['verdict'] == 'confirmed').sum())} of {len(part)} top {kind} pairs "
                           f"confirmed by retraining ({vmeta['seeds']} seeds, {level}% interval).")
        if vmeta.get("stale"):
            out.append("The fit changed after validation: predictions in the validation table may be out of date; "
                       "re-run `dataspex validate`.")
    else:
        out.append("Not validated yet: run `dataspex validate run_dir=...` to retrain the top pairs directly.")
    ex = ctx["harmful_examples"]
    if ex:
        which = ("harmful pairs whose removal lowered the test loss in the retrains" if validation is not None
                 else "top harmful pairs")
        out.append(f"Examples to drop or relabel ({which}): {', '.join(f'#{x}' for x in ex)}. The ranking model "
                   f"predicts a change of {_fmt(ctx['drop_effect'])} nats in the mean test loss if all are "
                   "removed (an extrapolation to the full training set from half-size retrains).")
    elif validation is not None:
        out.append("No validated harmful pair lowered the test loss when removed: nothing to drop on this evidence.")
    cur = (vmeta or {}).get("curated") or {}
    if cur.get("status") == "done":
        out.append(f"Measured: retraining without all {len(cur['dropped'])} examples of the validated harmful pairs "
                   f"({', '.join(f'#{x}' for x in cur['dropped'])}) changed the mean test loss by "
                   f"{_fmt(cur['mean_loss_change'])} nats {_ci(cur['ci_low'], cur['ci_high'])} "
                   f"({cur['seeds']} seeds, {round(100 * cur['level'])}% interval).")
    return out


def _action_rows(ctx) -> list[list[str]]:
    rows = []
    for a in ctx["actions"].itertuples():
        realised = "n/a" if _fmt(a.realised_change_if_both_removed) == "n/a" else \
            f"{_fmt(a.realised_change_if_both_removed)} {_ci(a.realised_low, a.realised_high)}"
        rows.append([a.kind, f"#{a.i} + #{a.j}", a.action, f"#{a.test}",
                     _fmt(a.predicted_change_if_both_removed), realised, a.removal, a.verdict,
                     f"#{a.i}: {a.text_i} [{a.label_i}]", f"#{a.j}: {a.text_j} [{a.label_j}]",
                     f"#{a.test}: {a.test_text} [{a.test_label}]"])
    return rows


ACTION_HEAD = ["kind", "pair", "suggested action", "test example", "predicted loss change if both removed",
               "realised (interval)", "removal", "interaction", "example i", "example j", "affected test example"]
VALIDATION_HEAD = ["kind", "rank", "pair", "test example", "predicted (full)", "realised", "interval", "seeds",
                   "verdict", "removing both: test loss", "removal", "removing both: mean test loss"]


def _validation_rows(ctx) -> list[list[str]]:
    rows = []
    for v in ctx["validation"].itertuples():
        rows.append([v.kind, str(v.rank), f"({v.i}, {v.j})", f"#{v.test}", _fmt(v.predicted), _fmt(v.realised),
                     _ci(v.ci_low, v.ci_high), str(v.seeds), v.verdict,
                     (f"{_fmt(getattr(v, 'realised_removal', np.nan))} "
                      f"{_ci(getattr(v, 'removal_ci_low', np.nan), getattr(v, 'removal_ci_high', np.nan))}"),
                     str(getattr(v, "removal", "-")),
                     (f"{_fmt(getattr(v, 'realised_removal_mean_loss', np.nan))} "
                      f"{_ci(getattr(v, 'removal_mean_ci_low', np.nan), getattr(v, 'removal_mean_ci_high', np.nan))}")])
    return rows


def _validation_text(ctx) -> str:
    vm = ctx["vmeta"]
    level = round(100 * vm["level"])
    return (f"Each pair's four training sets (full, minus i, minus j, minus both) were retrained with {vm['seeds']} "
            f"seeds each ({vm['seed_policy']} seed policy, {vm['engine']} engine). Realised = mean over seeds of "
            "f(all-i-j) - f(all-i) - f(all-j) + f(all) on the pair's test example; interval = Student t at "
            f"{level}%; predicted = the same quantity from {vm['estimator']} (full estimand). **confirmed**: the "
            "interval excludes 0 on the predicted side. Removing both: realised change in the test loss "
            "f(all-i-j) - f(all), on the pair's test example (removal: lowered / raised when its interval excludes "
            "0) and averaged over all test examples.")


def _pair_head(trak: bool, validated: bool) -> list[str]:
    head = ["rank", "pair", "pattern", "score", "joint effect"]
    head += ["TRAK i / j"] if trak else []
    head += ["training example i", "training example j", "test example", "also moves"]
    head += ["validation"] if validated else []
    return head


def _pair_rows(table, trak: bool, validated: bool) -> list[list[str]]:
    rows = []
    for r in table.itertuples():
        row = [str(r.rank), f"({r.i}, {r.j})", r.pattern, _fmt(r.score), _fmt(r.joint_effect)]
        if trak:
            row.append(f"{_fmt(r.trak_i, '+.2g')} / {_fmt(r.trak_j, '+.2g')}")
        row += [f"#{r.i}: {r.text_i} [{r.label_i}]", f"#{r.j}: {r.text_j} [{r.label_j}]",
                f"#{r.test}: {r.test_text} [{r.test_label}]", r.also_moves or "-"]
        if validated:
            verdict = getattr(r, "validated_verdict", None)
            row.append("-" if not isinstance(verdict, str) else
                       f"{verdict}: {_fmt(r.validated_realised)} {_ci(r.validated_ci_low, r.validated_ci_high)}")
        rows.append(row)
    return rows


def _triple_rows(triples) -> list[list[str]]:
    return [[str(t.rank), f"({t.i}, {t.j}, {t.l})", _fmt(t.score), f"#{t.i}: {t.text_i} [{t.label_i}]",
             f"#{t.j}: {t.text_j} [{t.label_j}]", f"#{t.l}: {t.text_l} [{t.label_l}]",
             f"#{t.test}: {t.test_text} [{t.test_label}]"] for t in triples.itertuples()]


TRIPLE_HEAD = ["rank", "examples", "score", "example i", "example j", "example l", "test example"]


def _faith_rows(ctx) -> list[list[str]]:
    rows = []
    curve = ctx["curve"]
    for n, f in ctx["faithfulness"].items():
        part = curve[(curve["estimator"] == n) & curve["r2"].notna()]
        path = ", ".join(f"{int(p.n_masks)}: {_fmt(p.r2, '.3f')}" for p in part.itertuples())
        rows.append([n, _fmt(f["r2_mean_over_outputs"], ".3f"), _fmt(f.get("r2_pooled"), ".3f"),
                     str(f["n_fit_masks"]), str(f["n_heldout_masks"]), f"{f['fit_seconds']:.1f}", path or "n/a"])
    return rows


FAITH_HEAD = ["estimator", "held-out R^2", "pooled R^2", "fit masks", "held-out masks", "fit seconds",
              "R^2 by retrains (masks: R^2)"]
PAIR_NOTE = ("Joint effect: change in the test loss from keeping both examples versus neither (positive = the pair "
             "raises the loss). Also moves: other test examples where the pair's score is at least half its "
             "strongest.")
TRAK_NOTE = ("TRAK i / j: each example's TRAK score on the pair's test example (positive = keeping it lowers that "
             "test loss); a first-order score, blind to what the pair does together.")
FAITH_NOTE = ("Faithfulness R^2 of each estimator on held-out random masks it never saw (1 = predicts every retrain's "
              "test losses exactly): the mean over test examples, and pooled over them (which weights each test "
              "example by how much its loss varies, so a nearly constant one cannot drag it down). The last column "
              "refits each estimator on the first part of the fit masks: whether more retrains would help.")
FILES = [("pairs.csv / pairs.parquet", "the ranked pair tables, with texts, TRAK and validation columns"),
         ("validation.csv / validation.parquet", "the validation table (after `dataspex validate`)"),
         ("triples.csv / triples.parquet", "degree-3 interactions (when the estimator has any)"),
         ("interactions.parquet", "every Fourier coefficient of every estimator (long form: output, key, order)"),
         ("faithfulness_curve.csv", "held-out R^2 by number of retrains"),
         ("summary.json", "the headline numbers"),
         ("../fit/*.npz", ("the fitted models: `dataspex.estimators.InteractionResult.load`; "
                           "`dataspex.load_run(run_dir)` loads everything, `.to_shapiq()` exports shapiq "
                           "InteractionValues"))]


def _config_yaml(cfg) -> str:
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    try:
        return OmegaConf.to_yaml(cfg, resolve=True)
    except OmegaConfBaseException:  # e.g. an interpolation that needs Hydra's runtime
        return OmegaConf.to_yaml(cfg)


# ------------------------------------------------------------------------------------------- Markdown

def _md_table(head, rows) -> list[str]:
    return ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)] + \
        ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]


def render_markdown(ctx) -> str:
    lines = ["# dataspex report", ""]
    lines += [f"{key}: `{value}`  " if key == "Run" else f"{key}: {value}  " for key, value in _intro(ctx)]
    lines += ["", "Also as one self-contained page: [report.html](report.html).", "",
              "## Summary for the curation team", ""]
    lines += [f"* {b}" for b in _headline(ctx)]
    if not ctx["actions"].empty:
        lines += [""] + _md_table(ACTION_HEAD, _action_rows(ctx))
        lines += ["", ("Loss changes are in nats on the affected test example; positive = the loss goes up. Removal: "
                       "what removing both did to that loss in the retrains; interaction: whether the pair's "
                       "interaction was confirmed.")]
    lines += ["", "## Validation by retraining", ""]
    if ctx["validation"] is None:
        lines.append("_Not run yet: `dataspex validate run_dir=...`._")
    else:
        lines += [_validation_text(ctx), ""] + _md_table(VALIDATION_HEAD, _validation_rows(ctx))
    validated = ctx["validation"] is not None
    for kind, explanation in KINDS.items():
        lines += ["", f"## Top {kind} pairs", "", f"{explanation.capitalize()}.", ""]
        table = ctx["tables"][kind]
        if table.empty:
            lines.append("_None found._")
            continue
        lines += _md_table(_pair_head(ctx["trak"], validated), _pair_rows(table, ctx["trak"], validated))
        r = ctx["recall"][kind]
        if r is not None:
            lines += ["", (f"Planted {kind} pairs found in this top {len(table)}: **{r['found']} of "
                           f"{r['planted']}** (recall {r['recall']:.2f}).")]
    lines += ["", PAIR_NOTE + (" " + TRAK_NOTE if ctx["trak"] else "")]
    lines += ["", "## Higher-order interactions (degree 3)", ""]
    if ctx["triples"] is None or ctx["triples"].empty:
        lines.append(f"_{ctx['name']} found no degree-3 interactions._")
    else:
        lines += [_triples_text(ctx), ""] + _md_table(TRIPLE_HEAD, _triple_rows(ctx["triples"]))
    lines += ["", "## Heatmaps of pairwise scores", ""]
    lines += [f"![{text}]({file})" for file, text in ctx["images"].items() if file.startswith("heatmap")]
    lines += ["", "## How far to trust this", "",
              FAITH_NOTE, ""]
    lines += _md_table(FAITH_HEAD, _faith_rows(ctx))
    if "faithfulness_curve.png" in ctx["images"]:
        lines += ["", "![faithfulness vs budget](faithfulness_curve.png)"]
    lines += ["", "## Run configuration", "", "```yaml", _config_yaml(ctx["cfg"]).rstrip(), "```", "",
              "## Files", ""]
    lines += [f"* `{f}`: {text}" for f, text in FILES]
    return "\n".join(lines) + "\n"


def _triples_text(ctx) -> str:
    return (f"Three-way interactions found by {ctx['name']}: score = third difference of the test loss "
            f"({ctx['estimand']} estimand), at the test example it moves most. Read them as context for the pairs: "
            "a triple matters when removing any one of its three examples changes how the other two interact.")


# ------------------------------------------------------------------------------------------- HTML

_CSS = """
body{font-family:-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;margin:0;color:#1d232b;
background:#f6f7f9;line-height:1.45}
header{background:#1f3a5f;color:#fff;padding:18px 32px}header h1{margin:0 0 6px 0;font-size:24px}
header dl{display:grid;grid-template-columns:max-content auto;gap:2px 14px;margin:0;font-size:13px}
header dt{opacity:.75}header dd{margin:0}
nav{background:#fff;border-bottom:1px solid #dde1e6;padding:8px 32px;position:sticky;top:0;font-size:14px}
nav a{margin-right:16px;color:#1f3a5f;text-decoration:none}
main{padding:8px 32px 40px 32px;max-width:1500px}
section{background:#fff;border:1px solid #dde1e6;border-radius:6px;padding:6px 20px 16px;margin:18px 0}
h2{font-size:19px;color:#1f3a5f}
table{border-collapse:collapse;font-size:13px;width:100%}
th,td{border-bottom:1px solid #e4e7eb;padding:5px 7px;text-align:left;vertical-align:top}
th{background:#eef1f5;position:sticky;top:38px}
td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
.confirmed{color:#0b6b2f;font-weight:600}.notconfirmed{color:#9a3412;font-weight:600}
.pending,.muted{color:#6b7280}
ul.headline li{margin:4px 0}
img{max-width:100%;border:1px solid #e4e7eb;margin:8px 0}
figure{margin:8px 0 18px 0}figcaption{font-size:13px;color:#4b5563}
pre{background:#f3f4f6;padding:10px;overflow:auto;font-size:12px;max-height:520px}
.note{font-size:13px;color:#4b5563}
"""


def _h(text) -> str:
    return html.escape(str(text))


def _html_table(head, rows, numeric=()) -> str:
    out = ["<table><thead><tr>", *(f"<th>{_h(h)}</th>" for h in head), "</tr></thead><tbody>"]
    for row in rows:
        out.append("<tr>")
        for c, value in enumerate(row):
            cls = ""
            if head[c] in numeric:
                cls = ' class="num"'
            text = _h(value)
            if head[c] in ("verdict", "validation", "interaction") and str(value):
                key = str(value).split(":")[0].replace(" ", "")
                text = f'<span class="{_h(key)}">{text}</span>'
            out.append(f"<td{cls}>{text}</td>")
        out.append("</tr>")
    out.append("</tbody></table>")
    return "".join(out)


def _img(out_dir: str, file: str, caption: str) -> str:
    with open(os.path.join(out_dir, file), "rb") as fh:
        data = base64.b64encode(fh.read()).decode()
    return (f'<figure><img alt="{_h(caption)}" src="data:image/png;base64,{data}">'
            f"<figcaption>{_h(caption)} ({_h(file)})</figcaption></figure>")


def render_html(ctx) -> str:
    out_dir = ctx["store"].path("report")
    sections = [("summary", "Summary for the curation team"), ("validation", "Validation by retraining"),
                ("harmful", "Top harmful pairs"), ("redundant", "Top redundant pairs"),
                ("higher-order", "Higher-order interactions (degree 3)"), ("heatmaps", "Heatmaps of pairwise scores"),
                ("faithfulness", "How far to trust this: faithfulness vs budget"), ("config", "Run configuration"),
                ("files", "Files and exports")]
    body = {}
    items = "".join(f"<li>{_h(b)}</li>" for b in _headline(ctx))
    s = [f'<ul class="headline">{items}</ul>']
    if not ctx["actions"].empty:
        s.append(_html_table(ACTION_HEAD, _action_rows(ctx),
                             numeric=("predicted loss change if both removed", "realised (interval)")))
        s.append('<p class="note">Loss changes are in nats on the affected test example; positive = the loss goes '
                 'up. Removal: what removing both did to that loss in the retrains; interaction: whether the pair\'s '
                 'interaction was confirmed. Harmful "masking" pairs must be handled together: removing one leaves '
                 "the damage.</p>")
    body["summary"] = "".join(s)
    if ctx["validation"] is None:
        body["validation"] = '<p class="muted">Not run yet: <code>dataspex validate run_dir=...</code>.</p>'
    else:
        text = _h(_validation_text(ctx)).replace("**confirmed**", "<b>confirmed</b>")
        body["validation"] = f'<p class="note">{text}</p>' + _html_table(
            VALIDATION_HEAD, _validation_rows(ctx), numeric=("predicted (full)", "realised", "interval", "seeds"))
    validated = ctx["validation"] is not None
    for kind, explanation in KINDS.items():
        table = ctx["tables"][kind]
        if table.empty:
            body[kind] = '<p class="muted">None found.</p>'
            continue
        part = [f"<p>{_h(explanation.capitalize())}.</p>",
                _html_table(_pair_head(ctx["trak"], validated), _pair_rows(table, ctx["trak"], validated),
                            numeric=("score", "joint effect", "TRAK i / j"))]
        r = ctx["recall"][kind]
        if r is not None:
            part.append(f"<p>Planted {kind} pairs found in this top {len(table)}: <b>{r['found']} of "
                        f"{r['planted']}</b> (recall {r['recall']:.2f}).</p>")
        part.append(f'<p class="note">{_h(PAIR_NOTE + (" " + TRAK_NOTE if ctx["trak"] else ""))}</p>')
        body[kind] = "".join(part)
    if ctx["triples"] is None or ctx["triples"].empty:
        body["higher-order"] = f'<p class="muted">{_h(ctx["name"])} found no degree-3 interactions.</p>'
    else:
        body["higher-order"] = f'<p class="note">{_h(_triples_text(ctx))}</p>' + _html_table(
            TRIPLE_HEAD, _triple_rows(ctx["triples"]), numeric=("score",))
    body["heatmaps"] = "".join(_img(out_dir, f, t) for f, t in ctx["images"].items() if f.startswith("heatmap"))
    faith = [_html_table(FAITH_HEAD, _faith_rows(ctx), numeric=("held-out R^2", "pooled R^2", "fit masks",
                                                                "held-out masks", "fit seconds"))]
    if "faithfulness_curve.png" in ctx["images"]:
        faith.append(_img(out_dir, "faithfulness_curve.png", ctx["images"]["faithfulness_curve.png"]))
    faith.append(f'<p class="note">{_h(FAITH_NOTE)}</p>')
    body["faithfulness"] = "".join(faith)
    body["config"] = f"<pre>{_h(_config_yaml(ctx['cfg']))}</pre>"
    body["files"] = "<ul>" + "".join(f"<li><code>{_h(f)}</code>: {_h(t)}</li>" for f, t in FILES) + "</ul>"

    intro = "".join(f"<dt>{_h(k)}</dt><dd>{_h(v)}</dd>" for k, v in _intro(ctx))
    stamp = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    nav = "".join(f'<a href="#{sid}">{_h(title.split(":")[0])}</a>' for sid, title in sections)
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             '<meta name="viewport" content="width=device-width, initial-scale=1">',
             f"<title>dataspex report: {_h(os.path.basename(ctx['store'].run_dir))}</title>",
             f"<style>{_CSS}</style></head><body>",
             f"<header><h1>dataspex report</h1><dl>{intro}<dt>Written</dt><dd>{stamp}</dd></dl></header>",
             f"<nav>{nav}</nav><main>"]
    parts += [f'<section id="{sid}"><h2>{_h(title)}</h2>{body[sid]}</section>' for sid, title in sections]
    parts.append("</main></body></html>")
    return "\n".join(parts)
