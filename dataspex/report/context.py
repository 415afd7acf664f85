"""What the report shows, gathered from the run's stored artifacts (it only reads them; nothing is fitted
here): the fitted models and the one that ranks the pairs, the validation, the TRAK column, the ranked pair
and triple tables with their texts, the faithfulness curve and the curation summary, all in one ``ctx``
dict that the writers and renderers read."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from dataspex.core.errors import DataspexError
from dataspex.core.outputs import OUTPUTS
from dataspex.fit import trak
from dataspex.fit.artifacts import choose_estimator, load_fitted
from dataspex.fit.faithfulness import (
    estimator_bound,
    load_curve,
    noise_ceiling,
    run_main_effects_limit,
)
from dataspex.fit.planning import CEILING_SHARE, acted_forecast, extrapolation_record
from dataspex.fit.ranking import ranked_pairs, ranked_triples, score_stack
from dataspex.fit.significance import heldout_evidence
from dataspex.report.curation import curation_actions, decide, drop_all_effect, examples_to_review
from dataspex.report.drill import load_drill, load_fullset_drill
from dataspex.report.text import KINDS, _label
from dataspex.validate import load_validation
from dataspex.validate.curation import load_curation
from dataspex.store import health

log = logging.getLogger("dataspex")


# ------------------------------------------------------------------------------------------- loading

def load_trak(store, n_train: int, n_test: int):
    """TRAK scores (n_train, n_test) from ``dataspex trak``, or None (not run, or not available)."""
    try:
        scores = trak.load_trak_scores(store)
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

def unit_text(units, data, unit: int, shown: int = 2, width: int = 80) -> str:
    """A unit in words: its name, member count and its first ``shown`` member texts (each cut to ``width``)."""
    members = units.members(unit)
    texts = " / ".join(_cut(data.train.texts[x], width) for x in members[:shown])
    more = ", ..." if len(members) > shown else ""
    return f"{units.names[unit]}, {len(members)} example{'s' if len(members) != 1 else ''}: {texts}{more}"


def unit_label(units, data, unit: int) -> str:
    """A unit's labels: the most common one and its share (``noun.food 14/17``); causal LM: the member count."""
    members = units.members(unit)
    if data.train.labels is None:
        return f"{len(members)} completions"
    counts = np.bincount(data.train.labels[members], minlength=len(data.label_names))
    return f"{data.label_names[int(counts.argmax())]} {int(counts.max())}/{len(members)}"


def _cut(text: str, width: int) -> str:
    text = str(text).replace("\n", " ")
    return text if len(text) <= width else text[: width - 3] + "..."


def describe_pairs(table: pd.DataFrame, data, columns=("i", "j"), units=None) -> pd.DataFrame:
    """The pairs (or triples) with their training texts and labels, and the test example's; with ``units`` (a
    design over units) the columns name units, described by :func:`unit_text` and :func:`unit_label`."""
    out = table.copy()
    for c in columns:
        if units is None:
            out[f"text_{c}"] = [data.train.texts[x] for x in out[c]]
            out[f"label_{c}"] = [_label(data, data.train, x) for x in out[c]]
        else:
            out[f"text_{c}"] = [unit_text(units, data, int(x)) for x in out[c]]
            out[f"label_{c}"] = [unit_label(units, data, int(x)) for x in out[c]]
    out["test_text"] = [data.test.texts[t] for t in out["test"]]
    out["test_label"] = [_label(data, data.test, t) for t in out["test"]]
    return out


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


def planted_recall(table: pd.DataFrame, planted: list[dict], kind: str, units=None) -> dict | None:
    """Recall of the planted pairs of ``kind`` among the listed pairs (None when nothing was planted); with
    ``units``, of the unit pairs that hold a planted pair in two different units."""
    truth = {(p["i"], p["j"]) for p in planted if p["kind"] == kind}
    if units is not None:
        truth = {tuple(sorted((int(units.unit_of[i]), int(units.unit_of[j])))) for i, j in truth
                 if units.unit_of[i] != units.unit_of[j]}
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



# ------------------------------------------------------------------------------------------- the ctx dict

def load_models(cfg, store) -> tuple[dict, dict, str]:
    """The fitted estimators, their faithfulness scores and the name of the one that ranks the report's pairs."""
    fitted, faithfulness = load_fitted(store)
    name = choose_estimator(fitted, faithfulness, cfg.report.estimator)
    return fitted, faithfulness, name


def listed_pairs(result, k: int, estimand: str, n_test: int) -> dict:
    """The pairs the report lists, by kind (:data:`~dataspex.report.text.KINDS`): the top ``k`` of each ranked
    list (:func:`dataspex.fit.ranking.ranked_pairs`). The report's tables and ``dataspex validate``'s choice of
    findings both start from this, so they test and name the same pairs."""
    return {kind: ranked_pairs(result, kind, k, estimand, n_test) for kind in KINDS}


def pair_tables(result, data, k: int, estimand: str, stack, validation, trak_scores,
                units=None) -> tuple[dict, dict]:
    """The top ``k`` pairs of each kind with their texts, also-moves, TRAK and validation columns, and the recall
    of the planted pairs among them. ``trak_scores`` (n_units, n_test): per unit when the design has ``units``."""
    tables, recall = {}, {}
    for kind, listed in listed_pairs(result, k, estimand, data.n_test).items():
        table = describe_pairs(listed, data, units=units)
        table["also_moves"] = also_moves(table, stack)
        if trak_scores is not None:
            table["trak_i"] = [float(trak_scores[i, t]) for i, t in zip(table["i"], table["test"])]
            table["trak_j"] = [float(trak_scores[j, t]) for j, t in zip(table["j"], table["test"])]
        tables[kind] = _merge_validation(table, validation)
        recall[kind] = planted_recall(tables[kind], data.planted, kind, units)
    return tables, recall


def pair_evidence(design, results, fitted: dict, name: str, output: str, tables: dict,
                  q_max: float, pair_test: str) -> tuple[dict, dict]:
    """Each listed pair's held-out test (:mod:`dataspex.fit.significance`): the tables gain ``p_value``, ``q_value``
    (Benjamini-Hochberg over the pairs of every kind together) and ``finding`` (q <= ``q_max``); untested pairs are
    never findings."""
    kinds = list(tables)
    both = pd.concat([tables[k].assign(_kind=k) for k in kinds], ignore_index=True)
    tested, meta = heldout_evidence(design, results, fitted, name, output, both, pair_test)
    tested["finding"] = tested["q_value"].to_numpy() <= q_max  # NaN (untested) compares False
    meta["q_max"] = q_max
    meta["n_findings"] = int(tested["finding"].sum())
    out = {k: tested[tested["_kind"] == k].drop(columns="_kind").reset_index(drop=True) for k in kinds}
    return out, meta


def trust_summary(faithfulness: dict, name: str, curve: pd.DataFrame, ceiling: dict, trust_r2: float,
                  n_units: int | None = None, units=None, limit: dict | None = None,
                  bound: dict | None = None) -> dict:
    """How far to trust the ranking model ``name``: its pooled held-out R^2 and retrains, the run's noise ceiling,
    whether it clears ``report.trust_r2`` (``trusted``), and the fit retrains its faithfulness curve says it would
    need for the threshold (when below it) and for ``CEILING_SHARE`` of the ceiling (``need_trust``, ``need_ceiling``:
    :func:`dataspex.fit.planning.needed_retrains`), with ``record``, how far such curves have been off on real text
    for a run of this many fit masks over ``n_units`` units (the design's ``units``; None: training examples;
    :func:`dataspex.fit.planning.extrapolation_record`; None without ``n_units``), and ``short_pilot``: fewer fit
    masks than units, where the curve is no forecast. A model without a held-out score is not trusted. ``limit``:
    the run's :func:`dataspex.fit.faithfulness.main_effects_limit`; ``bound``: the most the ranking model can
    explain at any budget (:func:`dataspex.fit.faithfulness.estimator_bound`: the limit for a model of main effects
    only, its ``reach`` for a model of main effects and screened pairs), past which a goal gets no figure."""
    f = faithfulness[name]
    pooled = f.get("r2_pooled")
    out = {"estimator": name, "r2_pooled": pooled, "n_fit_masks": int(f["n_fit_masks"]),
           "n_heldout_masks": int(f.get("n_heldout_masks") or 0), "ceiling": ceiling, "trust_r2": trust_r2,
           "trusted": pooled is not None and bool(np.isfinite(pooled)) and pooled >= trust_r2,
           "need_trust": None, "need_ceiling": None,
           "record": None if n_units is None else extrapolation_record(int(f["n_fit_masks"]), n_units, units),
           "n_units": n_units, "short_pilot": n_units is not None and int(f["n_fit_masks"]) < n_units,
           "limit": limit or {"r2": None},
           "reach": bound if bound is not None and bound["kind"] == "screen" else {"r2": None}}
    goals = {}
    if not (pooled is not None and pooled >= trust_r2):
        goals["need_trust"] = trust_r2
    if ceiling.get("pooled") is not None:
        goals["need_ceiling"] = CEILING_SHARE * ceiling["pooled"]
    for key, goal in goals.items():
        acted = acted_forecast(curve, name, goal, ceiling.get("pooled"), bound, int(f["n_fit_masks"]), n_units)
        what = None if bound is None else ("main effects alone reach" if bound["kind"] == "main effects" else
                                           f"main effects and its {bound['n_pairs']} screened pairs explain")
        if acted["refused"] == "past":
            out[key] = {"n_masks": None, "doublings": None,
                        "why": f"no budget gets it there, as {what} at most R^2 {bound['r2']:.3f} on this run"}
        elif acted["refused"] == "within":
            out[key] = {"n_masks": None, "doublings": None,
                        "why": f"no figure, as {what} at most R^2 {bound['r2']:.3f} +- {bound['r2_se']:.3f} on "
                               "this run (the goal is within two of its standard errors: not excluded)"}
        else:  # the figure `dataspex plan` acts on, with the curve it came from where that is not the log2 line
            out[key] = {k: acted[k] for k in ("n_masks", "why", "doublings")}
            if acted["source"] != "log2 line":
                out[key].update(toward=acted["curve"].get("toward") or "the noise ceiling",
                                asymptote=acted["curve"]["ceiling"])
            if acted["range"] is not None:  # how far the bound's own standard error moves the figure
                out[key].update(range=acted["range"], range_se=bound["r2_se"])
            if n_units is not None and acted["source"] == "power law to its bound":
                out["record"] = extrapolation_record(int(f["n_fit_masks"]), n_units, units, bound=True)
    return out


def gather(cfg, store, data, fitted: dict, faithfulness: dict, name: str) -> dict:
    """Everything the report shows, as the ``ctx`` dict the writers and renderers read (the images are added by
    :func:`dataspex.report.write_report` once written). ``name`` is the estimator that ranks the pairs."""
    result, estimand, k = fitted[name], cfg.report.estimand, int(cfg.report.top_k)
    validation, vmeta = load_validation(store)
    design = store.load_design()
    units = design.units  # None: pairs name training examples; else units (design.units)
    trak_scores = load_trak(store, data.n_train, data.n_test)
    if trak_scores is not None and units is not None:  # a unit's first-order effect: its members' sum
        trak_scores = units.sum_rows(trak_scores)
    stack = score_stack(result, estimand)
    tables, recall = pair_tables(result, data, k, estimand, stack, validation, trak_scores, units)
    results = store.load_results(design)
    output = faithfulness[name].get("output", "loss")  # what the ranking model was fitted on
    tables, evidence = pair_evidence(design, results, fitted, name, output, tables, float(cfg.report.q_max),
                                     str(cfg.report.pair_test))
    triples = ranked_triples(result, k, estimand) if result.degree >= 3 else None
    if triples is not None:
        triples = describe_pairs(triples, data, columns=("i", "j", "l"), units=units)
    curve = load_curve(store, faithfulness, cfg.report.curve_fractions)
    diverged = health.flag_results(results)  # masks whose training diverged
    limit = run_main_effects_limit(design, results, output)
    bound = estimator_bound(design, results, output, faithfulness[name],
                            faithfulness[name].get("config") or cfg.estimators.get(name), limit)
    trust = trust_summary(faithfulness, name, curve, noise_ceiling(design, results, output),
                          float(cfg.report.trust_r2), design.n_units, units, limit, bound)
    actions = curation_actions(tables, result, data, validation, units)
    if not trust["trusted"]:  # an unfaithful ranking model gets candidates (the pair tables), never actions
        actions = actions.iloc[0:0]
    # Two lists, never one in place of the other: what the ranking model predicts, and (after `dataspex
    # validate`) what the retrains confirmed; None = not validated yet, [] = validated and nothing confirmed.
    predicted = examples_to_review(actions, validated=False)
    validated = examples_to_review(actions, validated=True) if validation is not None else None
    curation = load_curation(store)
    drop_effect = {"predicted": drop_all_effect(result, design.n_units, predicted),
                   "validated": None if validated is None else drop_all_effect(result, design.n_units, validated)}
    return {"cfg": cfg, "store": store, "data": data, "name": name, "estimand": estimand, "k": k, "units": units,
            "output": OUTPUTS[output],
            "tables": tables, "recall": recall, "faithfulness": faithfulness, "curve": curve,
            "validation": validation, "vmeta": vmeta, "triples": triples, "trak": trak_scores is not None,
            "actions": actions, "examples_predicted": predicted, "examples_validated": validated,
            "drop_effect": drop_effect, "diverged": diverged, "evidence": evidence, "trust": trust,
            "result": result, "fitted": fitted, "stack": stack, "curation": curation,
            "decision": decide(actions, validation, curation),
            "drill": load_drill(store, units), "fullset": load_fullset_drill(store, units)}


def summary(ctx) -> dict:
    """summary.json: the headline numbers. The training examples to review come as two lists:
    ``examples_to_review_predicted`` (both examples of each of the summary's top harmful pairs, as the ranking
    model predicts them) and ``examples_to_review_validated`` (those of pairs whose interaction the retrains of
    ``dataspex validate`` confirmed and whose removal lowered its test example's loss and the mean test loss; null
    before it has run, [] when none did), each with the ranking model's predicted change in the mean test loss if
    all of that list are removed (``predicted_mean_loss_change_if_predicted_removed`` /
    ``..._if_validated_removed``; null for an empty or missing list). The measured change is
    ``validation.curated``. ``bottom_line``: the report's answer to "change the data set?" (``status``: act, do
    not act, nothing to act on, curate next, validate next; ``reason``; ``pairs``), from
    :func:`dataspex.report.curation.decide`."""
    validation, vmeta, faithfulness, triples = ctx["validation"], ctx["vmeta"], ctx["faithfulness"], ctx["triples"]
    units = ctx.get("units")
    by_unit = {}
    if units is not None:  # the lists name units; the examples to review are their members
        by_unit = {"units": {"spec": units.spec, "n_units": units.n_units},
                   "units_to_review_predicted": ctx["examples_predicted"],
                   "units_to_review_validated": ctx["examples_validated"],
                   "drill": None if ctx.get("drill") is None else {
                       "run_dir": ctx["drill"]["run_dir"], "pairs": ctx["drill"]["pairs"],
                       "example_pairs": [[int(r.x), int(r.y)] for r in ctx["drill"]["found"].itertuples()]}}
    members = (lambda xs: xs) if units is None else (lambda xs: None if xs is None else units.members_of(xs))
    return {"estimator": ctx["name"], "estimand": ctx["estimand"], "output": ctx["output"].name, "top_k": ctx["k"],
            "recall_at_k": ctx["recall"],
            "faithfulness": {n: f["r2_mean_over_outputs"] for n, f in faithfulness.items()},
            **by_unit,
            "examples_to_review_predicted": members(ctx["examples_predicted"]),
            "examples_to_review_validated": members(ctx["examples_validated"]),
            "predicted_mean_loss_change_if_predicted_removed": ctx["drop_effect"]["predicted"],
            "predicted_mean_loss_change_if_validated_removed": ctx["drop_effect"]["validated"],
            "validation": None if validation is None else {
                "level": vmeta.get("level"), "seeds": vmeta.get("seeds"), "stale": vmeta.get("stale"),
                "confirmed": int((validation["verdict"] == "confirmed").sum()), "pairs": len(validation),
                "curated": vmeta.get("curated")},
            "full_set": None if ctx.get("fullset") is None else {
                "run_dir": ctx["fullset"]["run_dir"], "stale": ctx["fullset"]["stale"],
                "n_masks": ctx["fullset"]["meta"].get("n_masks"), "pairs": len(ctx["fullset"]["table"]),
                "hold": [[int(r.i), int(r.j)] for r in ctx["fullset"]["table"].itertuples() if r.holds]},
            "pair_tests": ctx["evidence"], "trust": ctx["trust"],
            "bottom_line": {key: ctx["decision"][key] for key in ("status", "reason", "pairs")},
            "degree3": 0 if triples is None else len(triples)}
