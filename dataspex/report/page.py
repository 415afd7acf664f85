"""``report.html``: one self-contained page (images inlined as base64, no scripts, no external files)."""

from __future__ import annotations

import base64
import datetime
import html
import os
import re

from dataspex.report.text import (
    DRILL_HEAD,
    FULLSET_HEAD,
    FAITH_HEAD,
    FAITH_NOTE,
    FILES,
    KINDS,
    PAIR_NOTE,
    TRAK_NOTE,
    TRIPLE_HEAD,
    VALIDATION_HEAD,
    _action_rows,
    _config_yaml,
    _drill_rows,
    _drill_text,
    _fullset_rows,
    _fullset_text,
    _faith_rows,
    _headline,
    _intro,
    _pair_head,
    _pair_rows,
    _triple_rows,
    _triples_text,
    _validation_rows,
    _validation_text,
    action_head,
    change_note,
    drillable,
    no_heatmap_note,
)

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


def _inline(text) -> str:
    """A summary line's Markdown emphasis as HTML: escaped, then **bold** -> <strong>, `code` -> <code> (the
    lines are written once, for both renderers; the page showed the asterisks and backticks literally)."""
    out = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", _h(text))
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", out)


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
    items = "".join(f"<li>{_inline(b)}</li>" for b in _headline(ctx))
    s = [f'<ul class="headline">{items}</ul>']
    if not ctx["actions"].empty:
        s.append(_html_table(action_head(ctx), _action_rows(ctx),
                             numeric=("predicted loss change if both removed", "realised (interval)")))
        s.append(f'<p class="note">{html.escape(change_note(ctx))} Removal: what removing both did to that loss in '
                 'the retrains; interaction: whether the pair\'s interaction was confirmed. Harmful "masking" pairs '
                 "must be handled together: removing one leaves the damage.</p>")
    body["summary"] = "".join(s)
    if ctx["validation"] is None:
        body["validation"] = '<p class="muted">Not run yet: <code>dataspex validate run_dir=...</code>.</p>'
    else:
        text = _h(_validation_text(ctx)).replace("**confirmed**", "<b>confirmed</b>")
        body["validation"] = f'<p class="note">{text}</p>' + _html_table(
            VALIDATION_HEAD, _validation_rows(ctx), numeric=("predicted (full)", "realised", "interval", "seeds"))
    if ctx.get("fullset") is not None:
        body["fullset"] = f'<p class="note">{_h(_fullset_text(ctx))}</p>' + _html_table(
            FULLSET_HEAD, _fullset_rows(ctx), numeric=("predicted (full)", "drill-down", "q-value"))
        sections.insert(2, ("fullset", "At the full training set (drill-down)"))
    validated = ctx["validation"] is not None
    for kind, explanation in KINDS.items():
        table = ctx["tables"][kind]
        if table.empty:
            body[kind] = '<p class="muted">None found.</p>'
            continue
        part = [f"<p>{_h(explanation.capitalize())}.</p>",
                _html_table(_pair_head(ctx["trak"], validated, ctx.get("units") is not None),
                            _pair_rows(table, ctx["trak"], validated),
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
    if drillable(ctx):
        rows = _drill_rows(ctx)
        body["drill"] = f"<p>{_h(_drill_text(ctx))}</p>" + (_html_table(DRILL_HEAD, rows, numeric=("score",))
                                                            if rows else "")
        sections.insert(4, ("drill", "Inside the top unit pairs (drill-down)"))
    body["heatmaps"] = "".join(_img(out_dir, f, t) for f, t in ctx["images"].items() if f.startswith("heatmap"))
    note = no_heatmap_note(ctx)
    if note:
        body["heatmaps"] = f'<p class="muted">{_h(note)}</p>'
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
