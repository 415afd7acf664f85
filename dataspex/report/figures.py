"""The report's figures (matplotlib, Agg backend): the signed heatmaps of pairwise scores and the
faithfulness-vs-budget curve, written as PNG files beside the report."""

from __future__ import annotations

import io
import os

import numpy as np
import pandas as pd

from dataspex.core.files import atomic_write_bytes
from dataspex.fit.ranking import score_stack
from dataspex.report.text import KINDS, _label

HEATMAP_EXAMPLES = 20  # examples in a labelled heatmap


def _figure_png(fig) -> bytes:
    import matplotlib.pyplot as plt  # why: slow to import; only figures need it (backend set by _pyplot)

    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight", pad_inches=0.15)
    plt.close(fig)
    return buf.getvalue()


def _pyplot():
    import matplotlib  # why: slow to import, and the backend must be chosen before pyplot loads

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # why: after matplotlib.use, so no interactive backend is loaded

    return plt


def strongest(stack: np.ndarray) -> np.ndarray:
    """(n, n): each pair's score at the test example where it is largest in size."""
    if len(stack) == 0:
        return np.zeros(stack.shape[1:])
    return np.take_along_axis(stack, np.abs(stack).argmax(axis=0)[None], axis=0)[0]


def heatmap_png(matrix: np.ndarray, path: str, title: str, labels: list[str] | None = None, *,
                unit: str) -> None:
    """A signed heatmap (red: raises the modelled output together, blue: lowers it), labelled by ``labels`` if
    given, else by index; ``unit``: the colour bar's label."""
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
    fig.colorbar(im, ax=ax, label=unit, shrink=0.8)
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


def _write_images(out_dir, fitted, name, estimand, stack, tables, data, curve, output) -> dict:
    """The report's figures; ``output``: the modelled output (:class:`dataspex.core.outputs.Output`)."""
    images = {}
    unit = f"interaction on {output.what} ({output.unit})"
    # A report rewritten in place must not show the heatmaps of an earlier ranking model beside this one's.
    for stale in (f for f in os.listdir(out_dir) if f.startswith("heatmap") and f.endswith(".png")):
        os.remove(os.path.join(out_dir, stale))
    if fitted[name].degree >= 2:  # a model without pair terms would draw a blank square
        heatmap_png(strongest(stack), os.path.join(out_dir, "heatmap.png"),
                    f"{name}: every pair ({estimand} estimand), at its strongest test example", unit=unit)
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
                        f"{est_name}: the listed examples ({estimand} estimand)", labels, unit=unit)
            images[file] = f"{est_name}: pairs among the examples listed in this report"
    if not curve.dropna(subset=["r2"]).empty:
        curve_png(curve, os.path.join(out_dir, "faithfulness_curve.png"))
        images["faithfulness_curve.png"] = "held-out R^2 against the number of retrains, per estimator"
    return images
