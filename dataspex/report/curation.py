"""The curation summary: what to do about each of the top pairs (drop, relabel, keep one), which training
examples to review, and the predicted change in the mean test loss if they are all removed."""

from __future__ import annotations

import numpy as np
import pandas as pd

from dataspex.report.text import KINDS
from dataspex.validate.analysis import ELSEWHERE_NUMBERS, removal_verdict, validated_harmful

SUMMARY_ROWS = 5  # pairs per kind in the curation summary


def curation_actions(tables: dict, result, data, validation, units=None) -> pd.DataFrame:
    """What to do about each of the top pairs that are findings (held-out q-value at most ``report.q_max``; see
    :mod:`dataspex.fit.significance`), with the test-loss change to expect if both are removed. A pair the held-out
    retrains do not support gets no action: it stays a candidate in the pair tables. With ``units`` the pairs are
    units and the actions act on every member (no relabelling: a unit's members need not share a label)."""
    rows = []
    # A validation is of one claim: the pair at its test example. The same pair can be a harmful finding at one test
    # example and a redundant one at another (unplanted WordNet at 16n: (159, 236) at tests 38 and 60), and a
    # verdict read off another test example would be another claim's.
    vkey = {} if validation is None else {(r.i, r.j, r.test): r for r in validation.itertuples()}
    for kind in KINDS:
        table = tables[kind]
        for row in table[table["finding"].astype(bool)].head(SUMMARY_ROWS).itertuples():
            if kind == "harmful":
                action = "drop both" if row.pattern == "masking" else "drop either"
                if units is None and data.task == "classification" and all(
                        label != row.test_label and _similar(text, row.test_text) >= 0.5
                        for text, label in ((row.text_i, row.label_i), (row.text_j, row.label_j))):
                    # both read like the test example but carry the other label: likely mislabelled copies
                    action = f"relabel both as '{row.test_label}'? (else drop both)"
            else:
                action = "keep at least one (dropping one is safe, both is not)"
            predicted = float(-result.pair_effects("full", output=int(row.test))[row.i, row.j])
            v = vkey.get((row.i, row.j, row.test))
            done = v is not None and v.verdict != "pending"
            removal = getattr(v, "removal", "unclear") if done else "-"
            # from the interval, so validations written before the column existed read the same
            removal_mean = removal_verdict(getattr(v, "removal_mean_ci_low", np.nan),
                                           getattr(v, "removal_mean_ci_high", np.nan)) if done else "-"
            # validations written before the other test examples were measured have no such column: "-"
            away = getattr(v, "removal_elsewhere", "-") if done else "-"
            rows.append({"kind": kind, "rank": row.rank, "i": row.i, "j": row.j, "pattern": row.pattern,
                         "action": action, "test": row.test,
                         "predicted_change_if_both_removed": predicted,
                         "realised_change_if_both_removed": getattr(v, "realised_removal", np.nan) if done else np.nan,
                         "realised_low": getattr(v, "removal_ci_low", np.nan) if done else np.nan,
                         "realised_high": getattr(v, "removal_ci_high", np.nan) if done else np.nan,
                         "verdict": v.verdict if v is not None else "not validated", "removal": removal,
                         "removal_mean": removal_mean,
                         **{key: getattr(v, key, np.nan) if done else np.nan for key in (
                             "realised_removal_mean_loss", "removal_mean_ci_low", "removal_mean_ci_high")},
                         "removal_elsewhere": away if isinstance(away, str) else "-",
                         **{key: getattr(v, key, np.nan) if done else np.nan for key in ELSEWHERE_NUMBERS},
                         "text_i": row.text_i, "label_i": row.label_i, "text_j": row.text_j,
                         "label_j": row.label_j, "test_text": row.test_text, "test_label": row.test_label})
    return pd.DataFrame(rows)


def _similar(a: str, b: str) -> float:
    """Word-set Jaccard similarity of two texts (a cheap "is this a near-copy" check)."""
    wa, wb = set(str(a).lower().split()), set(str(b).lower().split())
    return len(wa & wb) / max(len(wa | wb), 1)


def examples_to_review(actions: pd.DataFrame, validated: bool) -> list[int]:
    """The training examples of the summary's harmful pairs: with ``validated=False`` all of them (what the
    ranking model predicts), with ``validated=True`` only those of pairs whose interaction ``dataspex validate``
    confirmed and whose removal lowered both its test example's loss and the mean test loss in its retrains
    (possibly none; ``validated_harmful``)."""
    if actions.empty:
        return []
    harmful = validated_harmful(actions) if validated else actions[actions["kind"] == "harmful"]
    return sorted({int(x) for x in np.concatenate([harmful["i"].to_numpy(), harmful["j"].to_numpy()])})


def drop_all_effect(result, n_units: int, examples: list[int]) -> float | None:
    """Predicted change in the mean test loss from removing ``examples`` (columns of the masks: training examples,
    or units) from the full training set; None when
    ``examples`` is empty or no coefficient of the mean test loss involves any of them (the model then predicts
    exactly 0 by construction, which is not a prediction that removing them is harmless)."""
    if not examples:
        return None
    names = result.output_names or []
    column = names.index("mean") if "mean" in names else None
    coef = result.fourier[:, column] if column is not None else result.fourier.mean(axis=1)
    chosen = set(int(x) for x in examples)
    if not any(c != 0 and chosen.intersection(key) for key, c in zip(result.keys, coef)):
        return None
    full = np.ones((2, n_units), dtype=np.uint8)
    full[1, examples] = 0
    pred = result.predict(full)
    values = pred[:, column] if column is not None else pred.mean(axis=1)
    return float(values[1] - values[0])


def acted_pairs(actions: pd.DataFrame, source: str) -> set[tuple[int, int]]:
    """The harmful pairs ``dataspex curate`` acts on with ``curate.actions=source`` (``validated``: those of
    :func:`validated_harmful`; ``predicted``: every harmful finding), as (i, j)."""
    if actions.empty:
        return set()
    harmful = actions[actions["kind"] == "harmful"]
    if source == "validated":
        harmful = validated_harmful(harmful)
    return {(int(r.i), int(r.j)) for r in harmful.itertuples()}


def decide(actions: pd.DataFrame, validation, curation: dict | None) -> dict:
    """The report's bottom line: whether a curation team should change its data set on this run's evidence.

    A validated removal is measured on the test examples that chose it, so it says nothing yet about data the
    ranking never saw; only ``dataspex curate``'s eval split does (on unplanted WordNet a confirmed pair that
    passed every bar of ``validate`` changed the eval loss by +0.002 [-0.005, +0.008] when dropped;
    benchmarks/README.md, "The report's bottom line"). So the answer follows the evidence furthest along the path:

    * ``act`` / ``do not act`` / ``nothing to act on``: ``curate`` ran on the current actions and its verdict was
      helped / hurt / anything else (or it found nothing to act on);
    * ``curate next``: validated actions exist but ``curate`` has not measured them (never ran, the fit changed
      since, or it acted on another set of pairs: ``reason`` says which);
    * ``validate next``: only predicted actions (not validated yet);
    * ``nothing to act on`` also when ``validate`` ran and no harmful pair passed it, or when there is no
      harmful finding at all.

    Returns {"status", "reason", "pairs": [[i, j], ...] (the pairs the status is about), "curation": the
    ``curation.json`` summary it rests on, or None}."""
    source = (curation or {}).get("actions", "validated")
    now = acted_pairs(actions, source)
    if curation is not None:
        measured = {tuple(int(x) for x in (c.get("evidence") or {}).get("pair", ())) for c in curation["changes"]}
        why_not = ("the fit changed since it ran" if curation.get("stale") else
                   "it found nothing to act on then" if measured != now and not measured else
                   "it acted on other pairs than the report's current actions" if measured != now else None)
        verdict = curation.get("verdict")
        if why_not is None and verdict != "nothing to act on" and not curation.get("seeds"):
            why_not = "it has no complete replicate yet"
        if why_not is None:
            status = {"helped": "act", "hurt": "do not act"}.get(verdict, "nothing to act on")
            return {"status": status, "reason": f"curate: {verdict}", "pairs": sorted(map(list, measured)),
                    "curation": curation}
        if now:
            return {"status": "curate next", "reason": why_not, "pairs": sorted(map(list, now)), "curation": curation}
        # the measured pairs are no longer actions: the evidence below decides, curate's numbers are history
    validated = acted_pairs(actions, "validated")
    if validated:
        return {"status": "curate next", "reason": "not curated yet", "pairs": sorted(map(list, validated)),
                "curation": None}
    predicted = acted_pairs(actions, "predicted")
    if validation is None and predicted:
        return {"status": "validate next", "reason": "not validated yet", "pairs": sorted(map(list, predicted)),
                "curation": None}
    reason = "no harmful pair passed validation" if validation is not None and predicted else "no harmful finding"
    return {"status": "nothing to act on", "reason": reason, "pairs": [], "curation": None}
