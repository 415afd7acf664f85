"""``report.md``: the report in Markdown, images linked."""

from __future__ import annotations

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
    _cell,
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
        lines += [""] + _md_table(action_head(ctx), _action_rows(ctx))
        lines += ["", (f"{change_note(ctx)} Removal: "
                       "what removing both did to that loss in the retrains; interaction: whether the pair's "
                       "interaction was confirmed.")]
    lines += ["", "## Validation by retraining", ""]
    if ctx["validation"] is None:
        lines.append("_Not run yet: `dataspex validate run_dir=...`._")
    else:
        lines += [_validation_text(ctx), ""] + _md_table(VALIDATION_HEAD, _validation_rows(ctx))
    if ctx.get("fullset") is not None:
        lines += ["", "## At the full training set (drill-down)", "", _fullset_text(ctx), ""]
        lines += _md_table(FULLSET_HEAD, _fullset_rows(ctx))
    validated = ctx["validation"] is not None
    for kind, explanation in KINDS.items():
        lines += ["", f"## Top {kind} pairs", "", f"{explanation.capitalize()}.", ""]
        table = ctx["tables"][kind]
        if table.empty:
            lines.append("_None found._")
            continue
        head = _pair_head(ctx["trak"], validated, ctx.get("units") is not None)
        lines += _md_table(head, _pair_rows(table, ctx["trak"], validated))
        r = ctx["recall"][kind]
        if r is not None:
            lines += ["", (f"Planted {kind} pairs found in this top {len(table)}: **{r['found']} of "
                           f"{r['planted']}** (recall {r['recall']:.2f}).")]
    lines += ["", PAIR_NOTE + (" " + TRAK_NOTE if ctx["trak"] else "")]
    if drillable(ctx):
        lines += ["", "## Inside the top unit pairs (drill-down)", "", _drill_text(ctx)]
        rows = _drill_rows(ctx)
        if rows:
            lines += [""] + _md_table(DRILL_HEAD, rows)
        elif ctx.get("drill") is not None:
            lines += ["", "_No example pair of the drill-down's report lies inside a drilled unit pair._"]
    lines += ["", "## Higher-order interactions (degree 3)", ""]
    if ctx["triples"] is None or ctx["triples"].empty:
        lines.append(f"_{ctx['name']} found no degree-3 interactions._")
    else:
        lines += [_triples_text(ctx), ""] + _md_table(TRIPLE_HEAD, _triple_rows(ctx["triples"]))
    lines += ["", "## Heatmaps of pairwise scores", ""]
    lines += [f"![{text}]({file})" for file, text in ctx["images"].items() if file.startswith("heatmap")]
    note = no_heatmap_note(ctx)
    if note:
        lines.append(f"_{note}_")
    lines += ["", "## How far to trust this", "",
              FAITH_NOTE, ""]
    lines += _md_table(FAITH_HEAD, _faith_rows(ctx))
    if "faithfulness_curve.png" in ctx["images"]:
        lines += ["", "![faithfulness vs budget](faithfulness_curve.png)"]
    lines += ["", "## Run configuration", "", "```yaml", _config_yaml(ctx["cfg"]).rstrip(), "```", "",
              "## Files", ""]
    lines += [f"* `{f}`: {text}" for f, text in FILES]
    return "\n".join(lines) + "\n"
