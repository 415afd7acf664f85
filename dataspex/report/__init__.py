"""The report: what a curation team should drop or relabel, the ranked pairs behind it, and how far to trust them.

Written into ``<run_dir>/report/``:

* ``report.html``: one self-contained page (images inlined, no scripts, no external files): a summary for the
  curation team, the validation by retraining (after ``dataspex validate``), ranked harmful and redundant pairs
  with both texts and the test examples they move, degree-3 interactions where the estimator found any,
  heatmaps, faithfulness-vs-budget curves and the run's config;
* ``report.md``: the same in Markdown, images linked;
* tables for tools: ``pairs.csv``/``.parquet``, ``triples.csv``/``.parquet``, ``validation.csv``/``.parquet``,
  ``faithfulness_curve.csv``, ``interactions.parquet`` (every coefficient of every estimator, long form),
  ``summary.json`` (the headline numbers; ``bottom_line``, the report's answer to "change the data set?"; the
  examples to review as two lists, ``examples_to_review_predicted``
  by the ranking model and ``examples_to_review_validated`` by the retrains, null before ``dataspex validate``);
* images: ``heatmap.png`` (every pair), ``heatmap_<estimator>.png`` (the listed examples, labelled by text),
  ``faithfulness_curve.png``.

Faithfulness-vs-budget: each fitted estimator is refitted on growing prefixes of the fit masks (fractions
``report.curve_fractions``; 1.0 is the stored fit) and scored on the held-out masks, by the fit layer
(:mod:`dataspex.fit.faithfulness`, before the report is written): the report only reads those points.

The modules, in import order (each imports only those before it): :mod:`~dataspex.report.text` (formatting and
row builders shared by both renderers), :mod:`~dataspex.report.curation` (the curation summary),
:mod:`~dataspex.report.figures` (matplotlib), :mod:`~dataspex.report.context` (gathering what the report shows
into one ``ctx`` dict), :mod:`~dataspex.report.markdown` and :mod:`~dataspex.report.page` (the renderers), and
this front, which writes the files.
"""

from __future__ import annotations

import os

import pandas as pd

from dataspex.core.files import atomic_write_bytes, atomic_write_text, write_json, write_table
from dataspex.report.context import (
    also_moves,
    describe_pairs,
    gather,
    load_models,
    load_trak,
    pair_tables,
    planted_recall,
    summary,
)
from dataspex.report.curation import SUMMARY_ROWS, curation_actions, drop_all_effect, examples_to_review
from dataspex.report.figures import HEATMAP_EXAMPLES, _write_images, curve_png, heatmap_png, strongest
from dataspex.report.markdown import render_markdown
from dataspex.report.page import render_html
from dataspex.report.text import ESTIMANDS, KINDS

__all__ = ["ESTIMANDS", "HEATMAP_EXAMPLES", "KINDS", "SUMMARY_ROWS", "also_moves", "curation_actions", "curve_png",
           "describe_pairs", "drop_all_effect", "examples_to_review", "gather", "heatmap_png", "load_models",
           "load_trak", "pair_tables", "planted_recall", "render_html", "render_markdown", "strongest", "summary",
           "write_report"]


def write_report(cfg, store, data) -> str:
    """Write every report file; returns the path of report.md (report.html beside it)."""
    fitted, faithfulness, name = load_models(cfg, store)
    out_dir = store.path("report")
    os.makedirs(out_dir, exist_ok=True)

    ctx = gather(cfg, store, data, fitted, faithfulness, name)
    _write_tables(out_dir, ctx)
    ctx["images"] = _write_images(out_dir, fitted, name, ctx["estimand"], ctx["stack"], ctx["tables"], data,
                                  ctx["curve"], ctx["output"])
    write_json(os.path.join(out_dir, "summary.json"), summary(ctx))
    atomic_write_text(os.path.join(out_dir, "report.html"), render_html(ctx))
    path = os.path.join(out_dir, "report.md")
    atomic_write_text(path, render_markdown(ctx))
    return path


def _write_tables(out_dir: str, ctx) -> None:
    """The tables for tools: pairs, triples, validation, interactions.parquet and faithfulness_curve.csv."""
    pairs = pd.concat([t.assign(kind=kind) for kind, t in ctx["tables"].items()], ignore_index=True)
    pairs["estimator"] = ctx["name"]
    write_table(pairs, out_dir, "pairs")
    if ctx["triples"] is not None:
        write_table(ctx["triples"], out_dir, "triples")
    if ctx["validation"] is not None:
        write_table(ctx["validation"], out_dir, "validation")
    coefs = pd.concat([res.to_frame(key_format="str").assign(estimator=n) for n, res in ctx["fitted"].items()],
                      ignore_index=True)
    coefs["output"] = coefs["output"].astype(str)
    atomic_write_bytes(os.path.join(out_dir, "interactions.parquet"), coefs.to_parquet(index=False))
    atomic_write_text(os.path.join(out_dir, "faithfulness_curve.csv"), ctx["curve"].to_csv(index=False))
