"""The report: ranked harmful and redundant pairs with their texts, a heatmap, and how far to trust them.

Written into ``<run_dir>/report/``: ``report.md`` (for people), ``pairs.csv`` and ``pairs.parquet`` (for
tools), ``heatmap.png`` and ``summary.json`` (faithfulness, and recall of planted pairs on demo data).
"""

from __future__ import annotations

import os

import numpy as np
import pandas as pd

from dataspex.errors import DataspexError
from dataspex.io import atomic_write_bytes, atomic_write_text, read_json, write_json

KINDS = {
    "harmful": "keeping both raises the test loss; removing just one of them does not undo it",
    "redundant": "removing either alone is harmless; removing both raises the test loss",
}
ESTIMANDS = {
    "uniform": "average second difference over random half-size training sets (4 x Fourier coefficient)",
    "full": "second difference at the full training set: f(all-i-j) - f(all-i) - f(all-j) + f(all)",
}


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


def _describe(table: pd.DataFrame, data) -> pd.DataFrame:
    def label(split, idx):
        if split.labels is None:
            return split.completions[idx]
        return data.label_names[int(split.labels[idx])]

    out = table.copy()
    out["text_i"] = [data.train.texts[i] for i in out["i"]]
    out["label_i"] = [label(data.train, i) for i in out["i"]]
    out["text_j"] = [data.train.texts[j] for j in out["j"]]
    out["label_j"] = [label(data.train, j) for j in out["j"]]
    out["test_text"] = [data.test.texts[t] for t in out["test"]]
    out["test_label"] = [label(data.test, t) for t in out["test"]]
    return out


def planted_recall(table: pd.DataFrame, planted: list[dict], kind: str) -> dict | None:
    """Recall of the planted pairs of ``kind`` among the listed pairs (None when nothing was planted)."""
    truth = {(p["i"], p["j"]) for p in planted if p["kind"] == kind}
    if not truth:
        return None
    found = {(int(min(i, j)), int(max(i, j))) for i, j in zip(table["i"], table["j"])} & truth
    return {"found": len(found), "planted": len(truth), "recall": len(found) / len(truth),
            "missed": sorted(truth - found)}


def heatmap_png(result, estimand: str, path: str, title: str) -> None:
    """An n x n heatmap of each pair's interaction at the test example where it is strongest."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    T = result.n_outputs - (1 if "mean" in (result.output_names or []) else 0)
    stack = np.stack([result.pair_scores(estimand, output=t) for t in range(T)])
    strongest = np.take_along_axis(stack, np.abs(stack).argmax(axis=0)[None], axis=0)[0]
    bound = float(np.abs(strongest).max()) or 1.0
    fig, ax = plt.subplots(figsize=(7.5, 6.5), dpi=110)
    im = ax.imshow(strongest, cmap="RdBu_r", vmin=-bound, vmax=bound)
    ax.set_xlabel("training example j")
    ax.set_ylabel("training example i")
    ax.set_title(title, fontsize=10)
    fig.colorbar(im, ax=ax, label="interaction on test loss (nats)")
    fig.tight_layout()
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def write_report(cfg, store, data) -> str:
    results, faithfulness = load_fitted(store)
    name = choose_estimator(results, faithfulness, cfg.report.estimator)
    result, estimand, k = results[name], cfg.report.estimand, int(cfg.report.top_k)
    out_dir = store.path("report")
    os.makedirs(out_dir, exist_ok=True)

    tables, recall = {}, {}
    for kind in KINDS:
        tables[kind] = _describe(ranked_pairs(result, kind, k, estimand, data.n_test), data)
        recall[kind] = planted_recall(tables[kind], data.planted, kind)
    pairs = pd.concat([t.assign(kind=kind) for kind, t in tables.items()], ignore_index=True)
    pairs["estimator"] = name
    atomic_write_text(os.path.join(out_dir, "pairs.csv"), pairs.to_csv(index=False))
    atomic_write_bytes(os.path.join(out_dir, "pairs.parquet"), pairs.to_parquet(index=False))
    heatmap_png(result, estimand, os.path.join(out_dir, "heatmap.png"),
                f"{name}: pairwise interaction ({estimand} estimand), strongest test example")
    summary = {"estimator": name, "estimand": estimand, "top_k": k, "recall_at_k": recall,
               "faithfulness": {n: f["r2_mean_over_outputs"] for n, f in faithfulness.items()}}
    write_json(os.path.join(out_dir, "summary.json"), summary)
    path = os.path.join(out_dir, "report.md")
    atomic_write_text(path, _markdown(cfg, store, data, name, estimand, tables, recall, faithfulness))
    return path


def _markdown(cfg, store, data, name, estimand, tables, recall, faithfulness) -> str:
    lines = [
        "# dataspex report", "",
        f"Run: `{store.run_dir}`  ",
        f"Model: `{cfg.model.name_or_path}` ({data.task}), LoRA r={cfg.lora.r} on {list(cfg.lora.target_modules)}"
        f" (layers: {cfg.lora.layers or 'all'}), {data.n_train} training and {data.n_test} test examples.  ",
        f"Pairs ranked by **{name}**; score = interaction on the test loss in nats, estimand **{estimand}**: "
        f"{ESTIMANDS[estimand]}.", "",
        "## How far to trust this", "",
        "Faithfulness R^2 of each estimator on held-out random masks it never saw (mean over test examples; "
        "1 = predicts every retrain's test losses exactly):", "",
        "| estimator | held-out R^2 | fit masks | fit seconds |", "|---|---|---|---|",
    ]
    for n, f in faithfulness.items():
        r2 = "n/a" if f["r2_mean_over_outputs"] is None else f"{f['r2_mean_over_outputs']:.3f}"
        lines.append(f"| {n} | {r2} | {f['n_fit_masks']} | {f['fit_seconds']:.1f} |")
    for kind, explanation in KINDS.items():
        lines += ["", f"## Top {kind} pairs", "", f"{explanation.capitalize()}.", ""]
        table = tables[kind]
        if table.empty:
            lines.append("_None found._")
            continue
        lines += ["| rank | pair | score | joint effect | training example i | training example j | test example |",
                  "|---|---|---|---|---|---|---|"]
        for row in table.itertuples():
            lines.append(f"| {row.rank} | ({row.i}, {row.j}) | {row.score:+.3f} | {row.joint_effect:+.3f} | "
                         f"{_cell(row.text_i)} [{row.label_i}] | {_cell(row.text_j)} [{row.label_j}] | "
                         f"#{row.test}: {_cell(row.test_text)} [{row.test_label}] |")
        if recall[kind] is not None:
            r = recall[kind]
            lines += ["", f"Planted {kind} pairs found in this top {len(table)}: **{r['found']} of {r['planted']}** "
                      f"(recall {r['recall']:.2f})."]
    lines += ["", "Joint effect: change in the test loss from keeping both examples versus neither (positive = "
              "the pair raises the loss).", "", "![pairwise interactions](heatmap.png)", "",
              "Files: `pairs.csv` / `pairs.parquet` (these tables), `summary.json`, `../fit/*.npz` "
              "(every coefficient, loadable with `dataspex.estimators.InteractionResult.load`).", ""]
    return "\n".join(lines)


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")
