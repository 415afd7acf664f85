"""Formatting and row builders shared by the Markdown and HTML renderers: numbers, intervals, the intro and
the summary's bullet points, the rows and headers of every table, the notes under them and the list of
files. Everything here reads the report's ``ctx`` (see :func:`dataspex.report.context.gather`) and returns
plain text; nothing here writes a file."""

from __future__ import annotations

import numpy as np
import pandas as pd
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from dataspex.fit.estimators.vocabulary import PAIR_KINDS
from dataspex.fit.faithfulness import limit_above_ceiling
from dataspex.fit.planning import CEILING_SHARE, describe_range
from dataspex.fit.significance import STARVED_CELL_SHARE
from dataspex.store import health
from dataspex.validate.analysis import ELSEWHERE_NUMBERS, validated_harmful

# The pair lists the report shows, with what each kind means for the test loss.
KINDS = {kind: PAIR_KINDS[kind] for kind in ("harmful", "redundant")}
ESTIMANDS = {
    "uniform": "average second difference over random half-size training sets (4 x Fourier coefficient)",
    "full": "second difference at the full training set: f(all-i-j) - f(all-i) - f(all-j) + f(all)",
}


def _label(data, split, idx) -> str:
    if split.labels is None:
        return split.completions[idx]
    return data.label_names[int(split.labels[idx])]


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
    r2 = f"pooled {_fmt(f.get('r2_pooled'), '.3f')}, mean over test examples {_fmt(f['r2_mean_over_outputs'], '.3f')}"
    return [
        ("Run", store.run_dir),
        ("Model", (f"{cfg.model.name_or_path} ({data.task}), LoRA r={cfg.lora.r} on {list(cfg.lora.target_modules)} "
                   f"(layers: {cfg.lora.layers or 'all'})")),
        ("Data", f"{data.n_train} training and {data.n_test} test examples" + (
            "" if ctx.get("units") is None else
            f"; masks over {ctx['units'].n_units} units ({ctx['units'].spec}): a pair is two units, each kept or "
            "dropped with all its members")),
        ("Ranked by", (f"{ctx['name']} (held-out R^2 {r2}, {f['n_fit_masks']} retrains); score = interaction on "
                       f"{ctx['output'].what} in {ctx['output'].unit}, estimand {ctx['estimand']}: "
                       f"{ESTIMANDS[ctx['estimand']]}" + output_note(ctx))),
    ]


def _ids(examples, units=None) -> str:
    """Training examples as ``#3, #7``; with ``units`` (the columns are units) ``#3 (source A, 12 examples)``."""
    if units is None:
        return ", ".join(f"#{x}" for x in examples)
    sizes = units.sizes()
    return ", ".join(f"#{x} ({units.names[x]}, {sizes[x]} examples)" for x in examples)


def _headline(ctx) -> list[str]:
    """The summary's bullet points (plain text, shared by HTML and Markdown)."""
    out = []
    diverged = ctx.get("diverged")
    if diverged and diverged["n_flagged"]:
        out.append(f"Warning: training diverged or did not converge on {health.summary(diverged)}; their "
                   "retrains are in every fit above and likely useless: lower train.lr and retrain in a new run_dir.")
    out += _trust_lines(ctx["trust"])
    out.append(_bottom_line(ctx["decision"], ctx.get("units")))
    out += _ranking_lines(ctx)
    validation, vmeta = ctx["validation"], ctx["vmeta"]
    if validation is not None:
        level = round(100 * vmeta["level"])
        for kind in KINDS:
            part = validation[validation["kind"] == kind]
            if len(part):  # validations written before validate.select existed took the top of each list
                what = {"findings": f"{kind} findings", "drilled": f"{kind} pairs that held at the full set in the "
                        "drill-down"}.get(vmeta.get("select", "top"), f"top {kind} pairs")
                out.append(f"{int((part['verdict'] == 'confirmed').sum())} of {len(part)} {what} "
                           f"confirmed by retraining ({_seeds_text(vmeta, part['seeds'])}, {level}% interval)."
                           f"{_underpowered(part)}")
        size = _full_set_size(validation, ctx["cfg"])
        if size:
            out.append(size)
        if vmeta.get("stale"):
            out.append("The fit changed after validation: predictions in the validation table may be out of date; "
                       "re-run `dataspex validate`.")
    else:
        out.append("Not validated yet: run `dataspex validate run_dir=...` to retrain the findings directly "
                   f"({REAL_TEXT_CONFIRMED}).")
    if ctx.get("fullset") is not None:
        out.append(_fullset_line(ctx["fullset"]))
    out.append(_evidence_line(ctx))
    predicted, confirmed = ctx["examples_predicted"], ctx["examples_validated"]
    what = "Examples to drop or relabel" if ctx.get("units") is None else "Units to drop (every member)"
    if predicted:
        out.append(f"{what}, predicted (top harmful pairs): "
                   f"{_ids(predicted, ctx.get('units'))}. "
                   f"{_drop_sentence(ctx['drop_effect']['predicted'], ctx['output'].unit)} (an extrapolation to "
                   f"the full training set from {_retrain_size(ctx['cfg'])} retrains)."
                   f"{_rise_warning(ctx['drop_effect']['predicted'], ctx['actions'], ctx.get('units'))}")
    elif not ctx["trust"]["trusted"] and ctx["tables"]["harmful"].get("finding", pd.Series(dtype=bool)).any():
        out.append(f"{what}, predicted: none (the ranking model is below report.trust_r2: the "
                   "pair tables list candidates only, findings included).")
    else:
        out.append(f"{what}, predicted: none (no harmful pair is a finding: the pair tables "
                   "list candidates only).")
    if confirmed is None:
        out.append(f"{what}, validated: none yet (not validated).")
    elif confirmed:
        out.append(f"{what}, validated (harmful pairs whose interaction the retrains confirmed "
                   f"and whose removal lowered both its test example's loss and the mean test loss): "
                   f"{_ids(confirmed, ctx.get('units'))}. "
                   f"{_drop_sentence(ctx['drop_effect']['validated'], ctx['output'].unit)}.")
        out.append(_scope_sentence(validated_harmful(ctx["actions"]), ctx.get("units")))
    else:
        out.append(f"{what}, validated: none. No harmful pair was confirmed as a pair and "
                   "lowered both its test example's loss and the mean test loss when removed: nothing to drop on "
                   f"this evidence.{_local_only(ctx['actions'])}")
    cur = (vmeta or {}).get("curated") or {}
    if cur.get("status") == "done":
        n_confirmed = int(((validation["kind"] == "harmful") & (validation["verdict"] == "confirmed")).sum())
        noun = "examples" if ctx.get("units") is None else "units"
        out.append(f"Measured: retraining without all {len(cur['dropped'])} {noun} of the harmful pairs that "
                   f"`dataspex validate` retrained ({n_confirmed} of them confirmed; "
                   f"{_ids(cur['dropped'], ctx.get('units'))}) changed "
                   "the mean test loss by "
                   f"{_fmt(cur['mean_loss_change'])} {ctx['output'].unit} {_ci(cur['ci_low'], cur['ci_high'])}"
                   f"{_curated_elsewhere(cur)} ({cur['seeds']} seeds, {round(100 * cur['level'])}% interval).")
    line = _curation_line(ctx.get("curation"))
    if line:
        out.append(line)
    return out


def _pairs_text(pairs, units=None) -> str:
    return ", ".join(" + ".join(_ids([x], units) for x in pair) for pair in pairs)


def _bottom_line(decision: dict, units=None) -> str:
    """The one sentence a team acts on (:func:`dataspex.report.curation.decide`): act, do not act, nothing to act
    on, or which step comes next, with the eval-split numbers it rests on."""
    status, cur, pairs = decision["status"], decision["curation"], decision["pairs"]
    if cur is not None and status in ("act", "do not act", "nothing to act on") and cur.get("seeds"):
        full, rand = cur["curated_vs_full"], cur.get("curated_vs_random")
        numbers = (f"eval loss {_fmt(full['mean'])} nats {_ci(full['low'], full['high'])} against the full set"
                   + ("" if rand is None else
                      f", {_fmt(rand['mean'])} {_ci(rand['low'], rand['high'])} against random removal of as many")
                   + f"; {cur['n_eval']} eval examples, {cur['seeds']} paired seeds, `dataspex curate`")
        what = (f"the {len(cur['changes'])} changes of curate.actions={cur['actions']} "
                f"(pairs {_pairs_text(pairs, units)})")
        if status == "act":
            return (f"**Bottom line: act.** Applying {what} lowered the loss on data the ranking never saw, beyond "
                    f"random removal ({numbers}). The curated training set: `{cur['curated_file']}`.")
        if status == "do not act":
            return (f"**Bottom line: do not act.** Applying {what} raised the loss on data the ranking never saw "
                    f"({numbers}).")
        local = (" What `dataspex validate` confirmed holds for the test examples that chose these pairs, and the "
                 "eval split shows no gain beyond them: inspect those examples (a fix for texts like them may still "
                 "be wanted) rather than change the data set for a general gain."
                 if cur["actions"] == "validated" else "")
        how = ("lowered the loss on data the ranking never saw, but not measurably more than removing as many random "
               "examples" if full["high"] < 0 else "did not measurably lower the loss on data the ranking never saw")
        return f"**Bottom line: nothing to act on.** Applying {what} {how} ({numbers}).{local}"
    if status == "nothing to act on":
        if cur is not None:  # curate itself found nothing to act on (its numbers were handled above)
            return f"**Bottom line: nothing to act on**: {cur['why']} (`dataspex curate`)."
        why = {"no harmful pair passed validation": "no harmful pair passed `dataspex validate` (below)",
               "no harmful finding": "the report has no harmful finding it trusts (below)"}
        return f"**Bottom line: nothing to act on**: {why[decision['reason']]}."
    if status == "curate next":
        since = "" if decision["reason"] == "not curated yet" else f" (`dataspex curate` ran, but {decision['reason']})"
        return (f"**Bottom line: not an action yet.** Removing {_pairs_text(pairs, units)} passed `dataspex validate` "
                "on the test examples that chose them; whether it helps data the ranking never saw is what "
                f"`dataspex curate` measures on an eval split{since}: run it before changing the data set.")
    return (f"**Bottom line: not an action yet.** The ranking model predicts harm from {_pairs_text(pairs, units)}; "
            "run `dataspex validate` and then `dataspex curate` before changing the data set.")


def _seeds_text(vmeta: dict, seeds=None) -> str:
    """'16 seeds'; where validate.max_seeds added seeds, the range over the pairs (``seeds``: their counts, default
    the validation's largest) and why: '16-64 seeds, grown from 16 ...'."""
    seeds = [int(x) for x in ([] if seeds is None else seeds) if int(x) > 0] or [int(vmeta["seeds"])]  # 0: pending
    lo, hi = min(seeds), max(seeds)
    count = f"{lo}" if lo == hi else f"{lo}-{hi}"
    first = vmeta.get("first_seeds")
    grown = f", grown from {first} where an interval was wider than half its predicted interaction" if first and \
        hi > first else ""
    return f"{count} seeds{grown}"


def _underpowered(part: pd.DataFrame) -> str:
    """The not-confirmed pairs whose interval is still wider than half their predicted interaction: for them
    "not confirmed" may mean too few seeds rather than a wrong prediction ('' if none, or for validations
    written before ``seeds_needed`` existed)."""
    if "seeds_needed" not in part:
        return ""
    wide = part[(part["verdict"] == "not confirmed") & (part["seeds_needed"] > part["seeds"])]
    if wide.empty:
        return ""
    pairs = ", ".join(f"({r.i}, {r.j}) needs about {_fmt(r.seeds_needed, '.0f')}" for r in wide.itertuples())
    return (f" Not confirmed with too few seeds to tell (interval wider than half the predicted interaction): "
            f"{pairs} (validate.max_seeds).")


def _local_only(actions: pd.DataFrame) -> str:
    """The confirmed harmful pairs that fixed their own test example without lowering the mean test loss ('' if
    none): named, since a team may still want that one example fixed."""
    if actions.empty or "removal_mean" not in actions:
        return ""
    rows = actions[(actions["kind"] == "harmful") & (actions["verdict"] == "confirmed")
                   & (actions["removal"] == "lowered") & (actions["removal_mean"] != "lowered")]
    if rows.empty:
        return ""
    pairs = "; ".join(f"#{r.i} + #{r.j} (test #{r.test}: {_fmt(r.realised_change_if_both_removed)}; mean test loss "
                      f"{_fmt(r.realised_removal_mean_loss)} {_ci(r.removal_mean_ci_low, r.removal_mean_ci_high)})"
                      for r in rows.itertuples())
    return (f" Confirmed, but a fix for one test example only (the mean test loss did not measurably fall): "
            f"{pairs}.")


def _scope_sentence(validated: pd.DataFrame, units=None) -> str:
    """What each validated removal did to the test examples its pair was not chosen on (their mean loss: lowered,
    no measurable change, raised), and a caution that only an eval split says whether it helps unseen data."""
    if "removal_elsewhere" not in validated or (validated["removal_elsewhere"] == "-").any():
        return ("What these removals did to the other test examples is not measured (validated before dataspex "
                "measured it): re-run `dataspex validate run_dir=...`, which reuses its retrains.")
    parts = []
    for what, text in (("lowered", "lowered the mean loss of the other test examples too"),
                       ("unclear", "did not measurably change the mean loss of the other test examples"),
                       ("raised", "raised the mean loss of the other test examples"),
                       ("n/a", "has no other test example to measure")):
        rows = validated[validated["removal_elsewhere"] == what]
        if len(rows):
            pairs = " and ".join(f"{' + '.join(_ids([x], units) for x in (r.i, r.j))} (test #{r.test}; the others "
                                 f"{_fmt(r.realised_removal_elsewhere)} "
                                 f"{_ci(r.removal_elsewhere_ci_low, r.removal_elsewhere_ci_high)})"
                                 for r in rows.itertuples())
            parts.append(f"removing {pairs}{' each' if len(rows) > 1 else ''} {text}")
    return ("Beyond their own test examples: " + ". ".join(p if k == 0 else p[0].upper() + p[1:]
                                                          for k, p in enumerate(parts))
            + ". The test set chose these pairs, so only `dataspex curate`'s eval split says whether a removal "
            "helps data the ranking never saw.")


def _curated_elsewhere(cur: dict) -> str:
    """The curated removal's change on the test examples its pairs were not chosen on ('' for validations written
    before it was measured)."""
    if "elsewhere_change" not in cur or not cur.get("n_elsewhere"):
        return ""
    return (f", and that of the {cur['n_elsewhere']} test examples the pairs were not chosen on by "
            f"{_fmt(cur['elsewhere_change'])} {_ci(cur['elsewhere_ci_low'], cur['elsewhere_ci_high'])}")


# What `dataspex validate` made of findings on real text without planted pairs, by kind: the base rate a team
# should read a list of unvalidated findings with (benchmarks/confirmed_by_kind.py on eight runs, 4n to 16n fit
# retrains; benchmarks/README, *Two stages*).
REAL_TEXT_CONFIRMED = ("on eight real-text runs without planted pairs in benchmarks/README, `dataspex validate` "
                       "confirmed 7 of 19 harmful findings and 19 of 25 redundant ones at the full training set; 16 "
                       "and 24 came out with the predicted sign, at a median 0.47 and 0.43 of the predicted size")


def _full_set_size(validation: pd.DataFrame, cfg) -> str:
    """How large the validated interactions came out at the full training set against their predictions, which
    describe retrains of ``design.p``'s size: the median of realised / predicted and how many kept the predicted
    sign ('' without a pair to compare)."""
    v = validation[np.isfinite(validation["realised"]) & (validation["predicted"] != 0)]
    if not len(v):
        return ""
    ratio = float((v["realised"] / v["predicted"]).median())
    same = int((np.sign(v["realised"]) == np.sign(v["predicted"])).sum())
    return (f"At the full training set the {len(v)} validated interactions came to a median {ratio:.2f} of their "
            f"predicted size ({same} of {len(v)} with the predicted sign): the predictions describe "
            f"{_retrain_size(cfg)} training sets, and an interaction's size changes with how much of the set is kept "
            "(on five validations of real text without planted pairs in benchmarks/README the interactions shrank "
            "at the full set, to a median 0.22 to 0.89 of their predicted size per run).")


def _retrain_size(cfg) -> str:
    """The retrains' size in words: "half-size" at the default kept fraction, else e.g. "90%-size"."""
    p = float(OmegaConf.select(cfg, "design.p", default=0.5))
    return "half-size" if p == 0.5 else f"{100 * p:.0f}%-size"


def _drop_sentence(effect: float | None, unit: str = "nats") -> str:
    """What the ranking model predicts for removing a list of examples at once, in the modelled output's ``unit``;
    None = it has no term on any of them for the mean test loss, so it predicts nothing (printing "+0.000" would
    read as "harmless")."""
    if effect is None:
        return ("The ranking model has no term on these examples for the mean test loss: the change if all are "
                "removed is not predicted")
    return f"The ranking model predicts a change of {_fmt(effect)} {unit} in the mean test loss if all are removed"


def _rise_warning(effect: float | None, actions: pd.DataFrame, units=None) -> str:
    """When the ranking model predicts that removing every example of the harmful findings *raises* the mean test
    loss, say so and why it can (the same examples lower other test examples' losses, some in a redundant finding),
    so the list is not read as advice; '' otherwise."""
    if effect is None or not effect > 0:
        return ""
    harmful = actions[actions["kind"] == "harmful"]
    chosen = set(harmful["i"]) | set(harmful["j"])
    both = [f"{_ids([r.i], units)} + {_ids([r.j], units)} (test #{r.test})" for r in actions.itertuples()
            if r.kind == "redundant" and (r.i in chosen or r.j in chosen)]
    also = f"; redundant findings share examples with them: {', '.join(both)}" if both else ""
    return (" That is a rise: by the ranking model these examples lower the loss of other test examples more than "
            f"they raise it where they were found harmful{also}. Removing all of them is not advised; `dataspex "
            "validate` measures each pair's removal on the mean test loss.")


def _curation_line(cur: dict | None) -> str | None:
    """One sentence on what ``dataspex curate`` measured on the eval split (None before it has run)."""
    if not cur:
        return None
    stale = " (the fit changed since: re-run `dataspex curate`)" if cur.get("stale") else ""
    if cur.get("verdict") == "nothing to act on":
        return f"Curation (`dataspex curate`, curate.actions={cur['actions']}): nothing to act on: {cur['why']}{stale}."
    if not cur.get("seeds"):
        return f"Curation (`dataspex curate`): no complete replicate yet{stale}."
    n_changed = len(cur["changes"])
    level = round(100 * cur["level"])
    parts = [f"against the full set {_fmt(cur['curated_vs_full']['mean'])} "
             f"{_ci(cur['curated_vs_full']['low'], cur['curated_vs_full']['high'])}"]
    for key, what in [("curated_vs_random", "against random removal of as many")] + [
            (k, f"against {k[len('curated_vs_'):]}'s removals") for k in sorted(cur)
            if k.startswith("curated_vs_") and k not in ("curated_vs_full", "curated_vs_random")]:
        if key in cur:
            parts.append(f"{what} {_fmt(cur[key]['mean'])} {_ci(cur[key]['low'], cur[key]['high'])}")
    return (f"Curation (`dataspex curate`, {n_changed} examples changed, curate.actions={cur['actions']}), scored on "
            f"the {cur['n_eval']} eval examples no attribution used, {cur['seeds']} paired seeds, {level}% "
            f"intervals: **{cur['verdict']}**. Eval loss change of the curated set: {'; '.join(parts)} nats{stale}."
            f"{_curation_scope(cur)}")


def _curation_scope(cur: dict) -> str:
    """Why an eval split may not move: no removal acted on lowered the other test examples' loss in `validate`'s
    retrains, so what it was measured to help is its own test example (an eval split holding texts like those
    can still gain: the demo's does)."""
    scopes = {(c.get("evidence") or {}).get("removal_elsewhere") for c in cur.get("changes", [])}
    if cur.get("verdict") == "helped" or not scopes or not scopes <= {"unclear", "raised"}:
        return ""
    tests = sorted({int(c["evidence"]["test"]) for c in cur["changes"]})
    return (" None of the removals acted on lowered the mean loss of the test examples its pair was not chosen on "
            f"(`dataspex validate`): they were measured to help test {', '.join(f'#{t}' for t in tests)}, so an "
            "eval split without texts like those has little to gain.")


def _need(need: dict | None, what: str, trust: dict) -> str:
    """What the ranking model's faithfulness curve says of the retrains ``what`` needs, with how far such curves
    have been off (``trust["record"]``: :func:`dataspex.fit.planning.extrapolation_record`)."""
    record = trust.get("record")
    if need is None:
        return ""
    if need["doublings"] == 0:
        return f" It already reaches {what}."
    if trust.get("short_pilot"):  # fewer fit masks than units: the figure is no forecast
        return (f" How many retrains {what} needs: not yet known; {record} (`dataspex plan` gives the next step: "
                f"grow the run to {trust['n_units']} fit retrains).")
    if need["n_masks"] is None:
        return f" To reach {what}: {need['why']}."
    far = f", {need['doublings']:.1f} doublings beyond this run: a long extrapolation" if need["doublings"] > 2 else ""
    if need.get("toward") is not None:
        span = describe_range(need.get("range"), need.get("range_se") or 0.0)
        return (f" Its faithfulness curve (a power law to {need['toward']} R^2 {need['asymptote']:.3f}) extrapolates "
                f"to about {need['n_masks']} fit retrains for {what}" + (f" ({span})" if span else "") + far
                + (f"; {record}" if record else "")
                + " (`dataspex plan` prints the study and the log2 line's figure beside it).")
    return (f" Its faithfulness curve (R^2 against log2 retrains) extrapolates to about {need['n_masks']} fit "
            f"retrains for {what}{far}" + (f"; {record}" if record else "")
            + " (`dataspex plan` prints the study and a second, power-law estimate).")


def _ceiling_se(c: dict) -> str:
    se = c.get("pooled_se")
    return "" if se is None or not np.isfinite(se) else f" +- {se:.3f}"


def _share(pooled, c: dict) -> str:
    """"; the model reaches 82% of it, 77% to 86% with the ceiling one standard error either way": the ranking
    model's share of the ceiling and how far the ceiling's own sampling error moves it ('' without a share)."""
    if pooled is None or not np.isfinite(pooled) or c["pooled"] <= 0:
        return ""
    share = f"; the model reaches {pooled / c['pooled']:.0%} of it"
    se = c.get("pooled_se")
    if se is None or not np.isfinite(se) or se <= 0 or se >= c["pooled"]:
        return share
    return (f"{share}, {pooled / (c['pooled'] + se):.0%} to {pooled / (c['pooled'] - se):.0%} with the ceiling one "
            "standard error either way")


def _replicates_hint(c: dict) -> str:
    # A bootstrap SE falls as 1 / sqrt(replicates): 0.036-0.068 from 16 replicates and 0.016-0.019 from 128 on four
    # real-text runs (benchmarks/README, 'Without plants, to 16n'); four times the replicates halve it.
    if c.get("pooled_se") is None:
        return ""
    return "; +- is its bootstrap standard error" + ("" if c["n_masks"] >= 64 else (
        ", which four times the replicates would about halve: design.replicates, at most design.heldout"))


def _limit(trust: dict) -> str:
    """" Main effects alone reach at most R^2 ... on this run at any budget ...": the run's main-effects limit
    (:func:`dataspex.fit.faithfulness.main_effects_limit`), beside the ceiling ('' where it was not measured)."""
    limit, c = trust.get("limit") or {}, trust["ceiling"]
    if limit.get("r2") is None:
        return ""
    share = f" ({limit['r2'] / c['pooled']:.0%} of the ceiling)" if c.get("pooled") else ""
    reach = trust.get("reach") or {}
    pairs = "" if reach.get("r2") is None else (
        f" The ranking model's {reach['n_pairs']} screened pairs hold {reach['pairs']:.3f} +- {reach['pairs_se']:.3f} "
        f"of a retrain's variance (estimated from pairs of retrains, no model): with main effects it explains at most "
        f"R^2 {reach['r2']:.3f} +- {reach['r2_se']:.3f} at any budget.")
    return (f" Main effects alone reach at most R^2 {limit['r2']:.3f} +- {limit['r2_se']:.3f} on this run at any "
            f"budget{share}: least squares on {limit['K']} disjoint blocks of {limit['block_masks']} fit masks, its "
            f"variance removed{limit_above_ceiling(limit, c)}; past it only interaction terms explain the "
            f"retrains.{pairs}")


def _trust_lines(trust: dict) -> list[str]:
    """The first lines of the summary: how faithful the ranking model is, beside the noise ceiling, and
    whether the report's lists are actions or only candidates."""
    c, pooled = trust["ceiling"], trust["r2_pooled"]
    if c.get("pooled") is not None:
        ceiling = (f"noise ceiling {_fmt(c['pooled'], '.3f')}{_ceiling_se(c)} ({c['n_masks']} held-out retrains "
                   f"repeated under another seed: no model of the training set can beat it{_replicates_hint(c)})"
                   f"{_share(pooled, c)}")
    else:
        ceiling = f"noise ceiling not measured ({c.get('why')})"
    head = (f"Trust: the ranking model {trust['estimator']} has pooled held-out R^2 {_fmt(pooled, '.3f')} from "
            f"{trust['n_fit_masks']} retrains ({trust['n_heldout_masks']} held out); {ceiling}.{_limit(trust)}")
    if not trust["trusted"]:
        goal = f"report.trust_r2={trust['trust_r2']:g}"
        return [f"{head} **Not faithful enough to act on** (below {goal}: under it, the top pairs were not "
                f"confirmed by retraining on real text; benchmarks/README, section Trust threshold): the tables below "
                f"list candidates, and there are no actions.{_need(trust['need_trust'], goal, trust)}"]
    extra = (_need(trust["need_ceiling"], f"{CEILING_SHARE:.0%} of the ceiling", trust)
             if trust["need_ceiling"] else "")
    return [head + extra]


def _ranking_lines(ctx) -> list[str]:
    """What the choice of ranking model says before any pair: no model beats the mean, or the best one has no
    pair terms (``report.estimator=auto`` then lists no pair)."""
    out, name = [], ctx["name"]
    pooled = {n: f.get("r2_pooled") for n, f in ctx["faithfulness"].items()}
    best = max((v for v in pooled.values() if v is not None and np.isfinite(v)), default=None)
    if best is not None and best <= 0:
        out.append(f"No fitted model predicts held-out retrains better than their mean (best pooled R^2 "
                   f"{_fmt(best, '.3f')}): nothing in this report is supported by the retrains; more retrains or "
                   "a less noisy output are needed before any list below means anything.")
    linear = next((n for n, r in ctx["fitted"].items() if r.degree < 2 and pooled.get(n) is not None), None)
    if ctx["result"].degree >= 2 and linear is not None and pooled.get(name) is not None \
            and pooled[name] < pooled[linear]:
        out.append(f"Warning: the ranking model {name} (pooled held-out R^2 {_fmt(pooled[name], '.3f')}) is less "
                   f"faithful than the linear datamodel {linear} ({_fmt(pooled[linear], '.3f')}): its pair terms do "
                   "not improve the held-out fit, and on real text such a model's findings did not hold up when "
                   "retrained (0 of 3; benchmarks/README, Trust threshold). Treat its pairs as candidates until "
                   "`dataspex validate` confirms them.")
    if ctx["result"].degree < 2:
        others = ", ".join(f"{n} {_fmt(v, '.3f')}" for n, v in pooled.items() if n != name)
        out.append(f"The most faithful model is {name} (pooled held-out R^2 {_fmt(pooled.get(name), '.3f')}; "
                   f"{others or 'no other model'}), which has no pair terms: pairs do not improve the held-out fit "
                   "over single-example effects, so no pair is reported.")
    return out


def _evidence_line(ctx) -> str:
    """One sentence: were the listed pairs tested on held-out retrains, and how many are findings."""
    ev = ctx["evidence"]
    if not ev["tested"]:
        return f"Pairs not tested on held-out retrains ({ev['why']}): every listed pair is a candidate, none a finding."
    against = f"against {ev['baseline']}'s main effects" if ev["baseline"] else "against the raw outputs"
    found = ev["n_findings"]
    # Benjamini-Hochberg at level q lists something on data without any interacting pair with probability up to q
    # (exactly q for independent p-values): measured 4-13 of 100 null studies at q = 0.1 on two real text sets
    # (benchmarks/README, "Are the pair tests' p-values right?"), so a finding is a candidate for validate.
    verdict = (f"{found} {'is a finding' if found == 1 else 'are findings'} (Benjamini-Hochberg q <= {ev['q_max']:g}; "
               f"on data where no pair interacts up to {ev['q_max'] * 100:g}% of studies still list one, so a "
               "finding is a candidate until `dataspex validate` retrains it)"
               if found else f"none is a finding at q <= {ev['q_max']:g}: the held-out retrains do not support any "
               "listed pair, so there is nothing to act on; the tables list candidates")
    how = {"welch": ", each cell its own variance (Welch)",
           "permutation": ", p-values from 1,999 permutations of the residuals"}.get(ev.get("test"), "")
    line = (f"Each listed pair was tested on the {ev['n_heldout']} held-out retrains that no estimator saw "
            f"({against}, one-sided on the predicted sign{how}): {verdict}.")
    untested = ev.get("n_untested", 0)
    if untested:
        line += (f" {untested} listed {'pair has' if untested == 1 else 'pairs have'} no p-value: a pair's four cells "
                 "(neither, one or both of its examples kept) each need held-out masks"
                 f"{' (2 for Welch)' if ev.get('test') == 'welch' else ''}, and the table says how many its sparsest "
                 "cell holds; such a pair is not a finding.")
    cell = ev.get("sparsest_cell")
    if cell is not None and cell < STARVED_CELL_SHARE * ev["n_heldout"]:
        line += (" The tests have less power than at design.p=0.5: the sparsest of a listed pair's four cells "
                 f"(neither, one or both of its examples kept) holds a median of {cell:g} of the {ev['n_heldout']} "
                 "held-out masks (a quarter at design.p=0.5); more held-out masks (design.heldout) find more real "
                 "pairs (benchmarks/README, 'Three times the held-out masks').")
    return line


def _action_rows(ctx) -> list[list[str]]:
    rows = []
    for a in ctx["actions"].itertuples():
        realised = "n/a" if _fmt(a.realised_change_if_both_removed) == "n/a" else \
            f"{_fmt(a.realised_change_if_both_removed)} {_ci(a.realised_low, a.realised_high)}"
        rows.append([a.kind, f"#{a.i} + #{a.j}", a.action, f"#{a.test}",
                     _fmt(a.predicted_change_if_both_removed), realised, a.removal, _mean_cell(a),
                     _elsewhere_cell(a), a.verdict,
                     f"#{a.i}: {a.text_i} [{a.label_i}]", f"#{a.j}: {a.text_j} [{a.label_j}]",
                     f"#{a.test}: {a.test_text} [{a.test_label}]"])
    return rows


ACTION_HEAD = ["kind", "pair", "suggested action", "test example", "predicted loss change if both removed",
               "realised (interval)", "removal", "mean test loss", "other test examples", "interaction", "example i",
               "example j", "affected test example"]


def _change_cell(row, value: str, low: str, high: str) -> str:
    """A realised change and its interval, ``-0.123 [-0.200, -0.050]``, from the columns named (n/a if absent)."""
    return (f"{_fmt(getattr(row, value, np.nan))} "
            f"{_ci(getattr(row, low, np.nan), getattr(row, high, np.nan))}")


def _mean_cell(row) -> str:
    """What removing both did to the mean test loss: verdict, change and interval (``-`` before validation)."""
    what = str(getattr(row, "removal_mean", "-"))
    if what in ("-", "pending"):
        return what
    return f"{what} {_change_cell(row, 'realised_removal_mean_loss', 'removal_mean_ci_low', 'removal_mean_ci_high')}"


def _elsewhere_cell(row) -> str:
    """The removal's verdict on the test examples the pair was not chosen on, with its mean change and interval
    (``-`` before validation, or for a validation written before it was measured)."""
    what = str(getattr(row, "removal_elsewhere", "-"))
    if what in ("-", "pending", "n/a"):
        return what
    return f"{what} {_change_cell(row, *ELSEWHERE_NUMBERS)}"


def output_note(ctx) -> str:
    """'' when the report models the test loss; else what "test loss" means in its text (the modelled output)."""
    o = ctx["output"]
    return "" if o.name == "loss" else (f". Output modelled: {o.what} ({o.unit}), a cost like the loss: where this "
                                        "report says \"test loss\" it means this output")


def change_note(ctx) -> str:
    """The unit sentence under the action table, for the modelled output."""
    o = ctx["output"]
    if o.name == "loss":
        return "Loss changes are in nats on the affected test example; positive = the loss goes up."
    return f"Changes are in {o.what} ({o.unit}) on the affected test example; positive = it goes up (worse)."


def action_head(ctx) -> list[str]:
    """:data:`ACTION_HEAD`, naming units where the design is over units."""
    if ctx.get("units") is None:
        return ACTION_HEAD
    return [{"example i": "unit i (every member)", "example j": "unit j (every member)"}.get(h, h) for h in ACTION_HEAD]
VALIDATION_HEAD = ["kind", "rank", "pair", "test example", "predicted (full)", "realised", "interval", "seeds",
                   "seeds needed", "verdict", "removing both: test loss", "removal", "removing both: mean test loss",
                   "removing both: other test examples"]


def _validation_rows(ctx) -> list[list[str]]:
    rows = []
    for v in ctx["validation"].itertuples():
        rows.append([v.kind, str(v.rank), f"({v.i}, {v.j})", f"#{v.test}", _fmt(v.predicted), _fmt(v.realised),
                     _ci(v.ci_low, v.ci_high), str(v.seeds), _fmt(getattr(v, "seeds_needed", None), ".0f"), v.verdict,
                     _change_cell(v, "realised_removal", "removal_ci_low", "removal_ci_high"),
                     str(getattr(v, "removal", "-")),
                     _change_cell(v, "realised_removal_mean_loss", "removal_mean_ci_low", "removal_mean_ci_high"),
                     _elsewhere_cell(v)])
    return rows


def _validation_text(ctx) -> str:
    vm = ctx["vmeta"]
    level = round(100 * vm["level"])
    return (f"Each pair's four training sets (full, minus i, minus j, minus both) were retrained "
            f"({_seeds_text(vm, ctx['validation']['seeds'])}; {vm['seed_policy']} seed policy, {vm['engine']} "
            "engine). Realised = mean over seeds of f(all-i-j) - f(all-i) - f(all-j) + f(all) on the pair's test "
            "example; interval = Student t at "
            f"{level}%; predicted = the same quantity from {vm['estimator']} (full estimand). **confirmed**: the "
            "interval excludes 0 on the predicted side. Removing both: realised change in the test loss "
            "f(all-i-j) - f(all), on the pair's test example (removal: lowered / raised when its interval excludes "
            "0), averaged over all test examples, and averaged over the other test examples (those the pair was not "
            "chosen on). Seeds needed = the seeds at which the interval would be at most half the predicted "
            "interaction (95% power if the prediction is right); `validate.max_seeds` caps the growth.")


def _pair_head(trak: bool, validated: bool, by_unit: bool = False) -> list[str]:
    head = ["rank", "pair", "pattern", "score", "joint effect", "held-out score", "q-value"]
    head += ["TRAK i / j"] if trak else []
    head += (["unit i", "unit j"] if by_unit else ["training example i", "training example j"])
    head += ["test example", "also moves"]
    head += ["validation"] if validated else []
    return head


def _pair_rows(table, trak: bool, validated: bool) -> list[list[str]]:
    rows = []
    for r in table.itertuples():
        q = "n/a" if _fmt(r.q_value) == "n/a" else f"{r.q_value:.3g}" + (" (finding)" if r.finding else "")
        row = [str(r.rank), f"({r.i}, {r.j})", r.pattern, _fmt(r.score), _fmt(r.joint_effect), _heldout_cell(r), q]
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


def _heldout_cell(r) -> str:
    """The held-out score column of a pair row: ``score +- se``; for a pair the run's held-out test could not read,
    why (its sparsest cell: :func:`dataspex.fit.significance.sparsest_cells`)."""
    cell = getattr(r, "heldout_cell", -1)
    if _fmt(r.heldout_score) == "n/a" and cell is not None and cell >= 0:
        return f"untested: {int(cell)} held-out {'mask' if cell == 1 else 'masks'} in its sparsest cell"
    return f"{_fmt(r.heldout_score)} +- {_fmt(r.heldout_se, '.3f')}"


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
             "raises the loss). Held-out score: the same pair's uniform score (average second difference) measured "
             "on the held-out retrains alone, beyond the linear model's main effects, +- its standard error; "
             "q-value: Benjamini-Hochberg over every listed pair of its one-sided test; a finding when at most "
             "report.q_max; untested: a cell of the pair has too few held-out masks for the test. Also moves: other "
             "test examples where the pair's score is at least half its strongest.")
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
         ("summary.json", ("the headline numbers; bottom_line (act / do not act / nothing to act on / the step "
                           "that comes next); the examples to review as two lists: "
                           "examples_to_review_predicted (the ranking model) and examples_to_review_validated "
                           "(confirmed by the retrains; null before `dataspex validate`)")),
         ("../fit/*.npz", ("the fitted models: `dataspex.estimators.InteractionResult.load`; "
                           "`dataspex.load_run(run_dir)` loads everything, `.to_shapiq()` exports shapiq "
                           "InteractionValues"))]


def no_heatmap_note(ctx) -> str | None:
    """Why the heatmaps section is empty, or None when it has a heatmap."""
    if any(f.startswith("heatmap") for f in ctx["images"]):
        return None
    return f"{ctx['name']} has no pair terms (it models single-example effects only), so there is no pair to draw."


def drillable(ctx) -> bool:
    """Whether the report has a drill-down section: a run over units that is not itself a drill-down."""
    units = ctx.get("units")
    return units is not None and units.spec != "drill"


DRILL_HEAD = ["unit pair", "kind", "rank", "example pair", "score", "q-value", "example x", "example y",
              "test example"]


def _drill_text(ctx) -> str:
    """The drill-down section's lead: where it is and how far to trust it (its ranking model's faithfulness)."""
    drill = ctx["drill"]
    if drill is None:
        return ("Not drilled yet: `dataspex drill run_dir=...` retrains random subsets of the members of the top "
                "unit pairs (the rest of the training set kept) and finds the example pairs inside them.")
    trust = drill.get("trust") or {}
    r2 = trust.get("r2_pooled")
    trusted = "" if trust.get("trusted", True) else " (below report.trust_r2: candidates only)"
    return (f"The drill-down `{drill['run_dir']}` retrained random subsets of the members of {len(drill['pairs'])} "
            f"unit pairs, every other example kept; its ranking model {drill['estimator']} has pooled held-out R^2 "
            f"{_fmt(r2, '.3f')} from {trust.get('n_fit_masks', 'n/a')} retrains{trusted}. Example pairs of its "
            "report that lie inside a drilled unit pair (rank within the drill-down's list of that kind; its own "
            "report has the rest):")


def _drill_rows(ctx) -> list[list[str]]:
    found = ctx["drill"]["found"] if ctx["drill"] is not None else []
    rows = []
    for r in getattr(found, "itertuples", lambda: [])():
        q = "n/a" if r.q_value is None or _fmt(r.q_value) == "n/a" else \
            f"{r.q_value:.3g}" + (" (finding)" if r.finding else "")
        rows.append([r.unit_pair, r.kind, str(r.rank), f"(#{r.x}, #{r.y})", _fmt(r.score), q, _cell(r.text_x),
                     _cell(r.text_y), f"#{r.test}"])
    return rows


FULLSET_HEAD = ["kind", "rank", "pair", "test example", "predicted (full)", "drill-down", "q-value", "at the full set"]


def _fullset_line(fullset: dict) -> str:
    """The summary's line on a drill-down over examples: how many drilled pairs hold at the full training set."""
    table, meta = fullset["table"], fullset["meta"]
    held = table[table["holds"].astype(bool)]
    names = "; ".join(f"{r.kind} ({r.i}, {r.j}) on #{r.test}" for r in held.itertuples())
    line = (f"At the full training set (drill-down, {meta.get('n_masks')} retrains without random halves of the "
            f"pairs' members): {len(held)} of {len(table)} drilled pairs hold (q <= {meta.get('q_max')})"
            + (f": {names}. `dataspex validate run_dir=... validate.select=drilled` retrains them (an approximate "
               "look, not a validation: below)." if len(held)
               else ": none of the drilled pairs measurably interacts there."))
    if fullset["stale"]:
        line += " The run was refitted after the drill-down chose its pairs: remove it and run `dataspex drill` again."
    return line


def _fullset_text(ctx) -> str:
    meta = ctx["fullset"]["meta"]
    return (f"`{ctx['fullset']['run_dir']}` retrained {meta.get('n_masks')} random subsets of the members of the run's "
            f"top pairs (each kept with probability {meta.get('p')}), every other training example kept. Drill-down = "
            "the pair's interaction on its test example at the full set (the second difference f(both kept) - "
            "f(i only) - f(j only) + f(neither), over the retrains that keep the other drilled pairs of the same "
            "test example, the other members' own effects fitted), +- its standard error; "
            f"predicted (full) = the same from {meta.get('ranking')}, whose sign is the side tested; q-value: "
            "Benjamini-Hochberg over the drilled pairs; a pair holds at q <= "
            f"{meta.get('q_max')}. Pairs ranked on half-size training sets can be smaller at the full set, where a "
            "team acts (on fresh real text a median 0.21-0.48 of their half-size size). This is a cheaper, "
            "approximate look at the full set, not a validation: with random members dropped around the pair, its "
            "estimates lay within noise of `dataspex validate`'s on four fresh real sets and further than their "
            "errors on a fifth (median 1.49 combined standard errors off), so the report's actions stay its "
            "findings; `validate.select=drilled` retrains the pairs that hold here (benchmarks/README.md, *Two "
            "stages*).")


def _fullset_rows(ctx) -> list[list[str]]:
    return [[r.kind, str(r.rank), f"({r.i}, {r.j})", f"#{r.test}", _fmt(r.predicted),
             f"{_fmt(r.estimate)} +- {_fmt(r.se, '.3f')}", f"{r.q_value:.3g}", "holds" if r.holds else "does not hold"]
            for r in ctx["fullset"]["table"].itertuples()]


def _config_yaml(cfg) -> str:
    try:
        return OmegaConf.to_yaml(cfg, resolve=True)
    except OmegaConfBaseException:  # e.g. an interpolation that needs Hydra's runtime
        return OmegaConf.to_yaml(cfg)


def _triples_text(ctx) -> str:
    return (f"Three-way interactions found by {ctx['name']}: score = third difference of the test loss "
            f"({ctx['estimand']} estimand), at the test example it moves most. Read them as context for the pairs: "
            "a triple matters when removing any one of its three examples changes how the other two interact.")
