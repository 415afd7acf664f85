"""The report (Markdown, HTML, tables, figures) and the ``dataspex.load_run`` API.

Most tests here read a *synthetic* run: a real run directory (made by ``dataspex design`` on the tiny demo
data) whose fit and held-out results are written from a known set function instead of fine-tunes, so the
estimators find real pairs (and a triple) in seconds. ``synthetic_run()`` builds it once per session; tests
that change a run work on a copy.
"""

from __future__ import annotations

import atexit
import functools
import html
import json
import os
import re
import shutil
import tempfile

import numpy as np
import pandas as pd
import pytest

from tests.conftest import TINY, run_cli

pytestmark = pytest.mark.slow

# Small and fast: enough random masks for ProxySPEX to see the planted structure (with leaves small enough
# for 48 masks); one refit for the faithfulness curve.
SYNTHETIC_ARGS = [a for a in TINY if not a.startswith("design.")] + [
    "design.m=48", "design.heldout=16", "+estimators.proxyspex.min_child_samples=3"]
REPORT_ARGS = ["report.curve_fractions=[0.5]"]


def synthetic_losses(masks: np.ndarray, planted: list[dict], n_test: int, seed: int = 0) -> np.ndarray:
    """Test losses (m, n_test) of a known set function: each planted harmful pair raises its test example's
    loss when either is kept (masking), each redundant pair raises it when both are gone, and the first bulk
    test example has a three-way term on examples (0, 1, 2) of the first bulk... (any three not planted)."""
    rng = np.random.default_rng(seed)
    x = masks.astype(float)
    Y = 0.5 + 0.05 * rng.standard_normal((len(masks), n_test))
    used = set()
    for p in planted:
        i, j, t = p["i"], p["j"], p["test"]
        used |= {i, j}
        either = np.maximum(x[:, i], x[:, j])
        Y[:, t] += 2.0 * either if p["kind"] == "harmful" else 2.0 * (1 - either)
    free = [k for k in range(masks.shape[1]) if k not in used][:3]
    bulk = [t for t in range(n_test) if t not in {p["test"] for p in planted}]
    if len(free) == 3 and bulk:
        Y[:, bulk[0]] += 1.5 * x[:, free[0]] * x[:, free[1]] * x[:, free[2]]
    return Y


def make_synthetic_run(run_dir: str, extra=(), proxyspex: bool = True, report: bool = True) -> str:
    """``dataspex design`` + synthetic results for the fit and held-out masks + ``fit`` + ``report`` (without
    ProxySPEX, the slowest fit, when ``proxyspex`` is false; without the report when ``report`` is false)."""
    import dataspex
    from dataspex.store import RunStore

    args = SYNTHETIC_ARGS if proxyspex else [a for a in SYNTHETIC_ARGS if "proxyspex" not in a] + [
        "~estimators.proxyspex"]
    run_cli("design", f"run_dir={run_dir}", *args, *extra)
    run = dataspex.load_run(run_dir)
    design, data = run.design, run.data
    Y = synthetic_losses(design.masks, data.planted, data.n_test)
    RunStore(run_dir).write_results(design.mask_ids, design.masks, Y, -Y)
    run_cli("fit", f"run_dir={run_dir}")
    if report:
        run_cli("report", f"run_dir={run_dir}", *REPORT_ARGS)
    return run_dir


@functools.cache
def synthetic_run() -> str:
    """One synthetic run per test session (read-only: copy it before changing it)."""
    root = tempfile.mkdtemp(prefix="dataspex-synthetic-")
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    return make_synthetic_run(os.path.join(root, "run"))


def copy_run(tmp_path) -> str:
    target = str(tmp_path / "run")
    shutil.copytree(synthetic_run(), target)
    return target


def write_validation(run_dir: str, removal: dict, confirmed=(), elsewhere: dict | None = None,
                     mean_unclear=()) -> pd.DataFrame:
    """Validation files as `dataspex validate` writes them, without its retrains: the report's top two harmful
    and top redundant pair, each with the ``removal`` given by kind and rank (e.g. ``{("harmful", 1):
    "lowered"}``; "unclear" otherwise) and verdict "confirmed" for the (kind, rank) in ``confirmed``, "not
    confirmed" otherwise; the mean test loss moves as the test example's loss does (interval change/4 +- 0.1),
    except for the (kind, rank) in ``mean_unclear`` (-0.25 [-0.3, +0.05]). ``elsewhere``: the removal's verdict
    on the other test examples by kind and rank ("unclear" otherwise: change +0.01 [-0.04, +0.06]); None writes
    no such columns, as validations did before they were measured."""
    from dataspex.store import RunStore
    from dataspex.validate import save_validation

    pairs = pd.read_parquet(os.path.join(run_dir, "report", "pairs.parquet"))
    top = pd.concat([pairs[pairs["kind"] == "harmful"].head(2), pairs[pairs["kind"] == "redundant"].head(1)])
    rows = []
    for p in top.itertuples():
        how = removal.get((p.kind, int(p.rank)), "unclear")
        change = {"lowered": -1.0, "raised": 1.0, "unclear": 0.0}[how]
        rows.append({"kind": p.kind, "rank": int(p.rank), "i": int(p.i), "j": int(p.j), "test": int(p.test),
                     "pattern": p.pattern, "predicted": float(p.score), "realised": 0.01, "se": 0.1, "ci_low": -0.2,
                     "ci_high": 0.2, "seeds": 2,
                     "verdict": "confirmed" if (p.kind, int(p.rank)) in set(confirmed) else "not confirmed",
                     "realised_removal": change,
                     "removal_ci_low": change - 0.5 if how != "unclear" else -0.5,
                     "removal_ci_high": change + 0.5 if how != "unclear" else 0.5, "removal": how,
                     "realised_removal_mean_loss": change / 4,
                     "removal_mean_ci_low": change / 4 - 0.1 if how != "unclear" else -0.5,
                     "removal_mean_ci_high": change / 4 + 0.1 if how != "unclear" else 0.5, "level": 0.9})
        if (p.kind, int(p.rank)) in mean_unclear:  # its own test example only: the mean interval holds 0
            rows[-1].update(removal_mean_ci_low=-0.3, removal_mean_ci_high=0.05)
        if elsewhere is not None:
            away = elsewhere.get((p.kind, int(p.rank)), "unclear")
            shift = {"lowered": -0.1, "raised": 0.1, "unclear": 0.0}[away]
            rows[-1].update(removal_elsewhere=away, realised_removal_elsewhere=0.01 + shift,
                            removal_elsewhere_ci_low=-0.04 + shift, removal_elsewhere_ci_high=0.06 + shift,
                            n_elsewhere=3)
    table = pd.DataFrame(rows)
    save_validation(RunStore(run_dir), table, {"estimator": "proxyspex", "ranking_estimand": "uniform",
                                               "compared_estimand": "full", "top_k": 2, "kinds": ["harmful", "redundant"],
                                               "seeds": 2, "level": 0.9, "output": "loss", "seed_policy": "per_mask",
                                               "engine": "batched", "n_training_sets": 0, "curated": None})
    return table


# ----------------------------------------------------------------------------------------------- the report

def test_report_writes_every_file():
    out = os.path.join(synthetic_run(), "report")
    for name in ("report.md", "report.html", "pairs.csv", "pairs.parquet", "interactions.parquet",
                 "faithfulness_curve.csv", "faithfulness_curve.png", "heatmap.png", "heatmap_proxyspex.png",
                 "summary.json", "triples.csv", "triples.parquet"):
        assert os.path.getsize(os.path.join(out, name)) > 0, name


def test_report_finds_the_planted_pairs_and_says_what_to_do():
    out = os.path.join(synthetic_run(), "report")
    summary = json.load(open(os.path.join(out, "summary.json")))
    assert summary["recall_at_k"]["harmful"]["recall"] == 1.0
    assert summary["recall_at_k"]["redundant"]["recall"] == 1.0
    pairs = pd.read_parquet(os.path.join(out, "pairs.parquet"))
    for col in ("text_i", "text_j", "test_text", "also_moves", "pattern", "score", "joint_effect"):
        assert col in pairs.columns, col
    top = pairs[pairs["kind"] == "harmful"].iloc[0]
    assert top["pattern"] == "masking" and top["label_i"] != top["test_label"]
    md = open(os.path.join(out, "report.md")).read()
    for heading in ("## Summary for the curation team", "## Validation by retraining", "## Top harmful pairs",
                    "## Top redundant pairs", "## Higher-order interactions (degree 3)",
                    "## Heatmaps of pairwise scores", "## How far to trust this", "## Run configuration"):
        assert heading in md, heading
    # the harmful pair's examples are mislabelled paraphrases of the test example: suggest relabelling both
    assert f"#{top['i']} + #{top['j']}" in md and "relabel both as" in md
    assert summary["examples_to_review_predicted"] and top["i"] in summary["examples_to_review_predicted"]
    assert summary["examples_to_review_validated"] is None and "examples_to_review" not in summary
    assert "Not validated yet" in md and "Examples to drop or relabel, predicted (top harmful pairs): #" in md
    assert "confirmed 7 of 19 harmful findings and 19 of 25 redundant ones" in md  # the real-text base rate
    assert "Examples to drop or relabel, validated: none yet (not validated)." in md
    assert summary["bottom_line"]["status"] == "validate next"
    assert "* **Bottom line: not an action yet.** The ranking model predicts harm from #" in md
    page = open(os.path.join(out, "report.html")).read()  # the page renders the emphasis, not the asterisks
    assert "<li><strong>Bottom line: not an action yet.</strong> The ranking model predicts harm from #" in page
    assert "run <code>dataspex validate</code> and then <code>dataspex curate</code>" in page


def test_report_lists_the_planted_triple():
    triples = pd.read_parquet(os.path.join(synthetic_run(), "report", "triples.parquet"))
    run = __import__("dataspex").load_run(synthetic_run())
    used = {x for p in run.data.planted for x in (p["i"], p["j"])}
    free = tuple(k for k in range(run.data.n_train) if k not in used)[:3]
    first = tuple(triples.loc[0, ["i", "j", "l"]])
    assert first == free and triples.loc[0, "score"] > 0  # 1.5 x_a x_b x_c: third difference +1.5
    assert triples.loc[0, "score"] == pytest.approx(1.5, abs=0.4)


def test_html_is_self_contained():
    page = open(os.path.join(synthetic_run(), "report", "report.html")).read()
    assert page.startswith("<!DOCTYPE html>") and "<script" not in page
    assert page.count("data:image/png;base64,") >= 3  # heatmaps and the faithfulness curve, inlined
    for sid in ("summary", "validation", "harmful", "redundant", "higher-order", "heatmaps", "faithfulness",
                "config", "files"):
        assert f'<section id="{sid}">' in page, sid
    # no external resources
    assert "http://" not in page.replace("http://www.w3.org", "") and "https://" not in page
    assert "src=\"" not in page.replace('src="data:image/png;base64,', "")


def test_faithfulness_curve_has_every_budget():
    curve = pd.read_csv(os.path.join(synthetic_run(), "report", "faithfulness_curve.csv"))
    for name in ("linear", "proxyspex"):
        part = curve[curve["estimator"] == name]
        assert part["n_masks"].tolist() == [24, 48], part
        assert part["r2"].notna().all()
    full = curve[(curve["estimator"] == "proxyspex") & (curve["fraction"] == 1.0)]["r2"].iloc[0]
    assert full > 0.2  # noise-only test examples pull the mean over outputs down


def test_report_uses_trak_scores_when_present(tmp_path, monkeypatch):
    from dataspex.fit import trak

    run_dir = copy_run(tmp_path)
    run = __import__("dataspex").load_run(run_dir)
    fake = np.arange(run.data.n_train * run.data.n_test, dtype=float).reshape(run.data.n_train, run.data.n_test)
    monkeypatch.setattr(trak, "load_trak_scores", lambda store, **kw: fake)

    from omegaconf import OmegaConf

    from dataspex.report import write_report

    cfg = OmegaConf.load(os.path.join(run_dir, "config.yaml"))
    cfg.run_dir = run_dir
    cfg.report.curve_fractions = [0.5]  # as cached: no refits
    write_report(cfg, run.store, run.data)
    pairs = pd.read_parquet(os.path.join(run_dir, "report", "pairs.parquet"))
    row = pairs.iloc[0]
    assert row["trak_i"] == fake[row["i"], row["test"]] and row["trak_j"] == fake[row["j"], row["test"]]
    assert "TRAK i / j" in open(os.path.join(run_dir, "report", "report.md")).read()


# ----------------------------------------------------------------------------------------------- the API

def test_load_run_api():
    import dataspex
    from dataspex.estimators import InteractionResult

    run = dataspex.load_run(synthetic_run())
    assert len(run.train_texts) == run.data.n_train == 10
    assert len(run.design) == 80 and set(run.design.roles) == {"fit", "heldout", "replicate"}  # 48 + 16 + 16
    res = run.results
    assert len(res) == 80 and {"mask_id", "role", "n_kept", "loss_0", "margin_0"} <= set(res.columns)
    assert set(run.fitted) == {"linear", "quadratic", "proxyspex"}
    assert isinstance(run.fitted["proxyspex"], InteractionResult)
    faith = run.faithfulness.set_index("estimator")["r2_pooled"]
    assert set(faith.index) == {"linear", "quadratic", "proxyspex"}
    assert run.ranking_estimator == faith.idxmax()  # report.estimator=auto: the best pooled held-out R^2
    live = run.pairs("harmful", k=3)
    assert {"i", "j", "text_i", "text_j", "test_text"} <= set(live.columns)
    assert run.report_pairs is not None and run.triples is not None and run.validation is None
    assert run.summary["estimator"] == faith.idxmax() and run.report_html.endswith("report.html")
    assert run.faithfulness_curve is not None
    coefs = run.coefficients()
    assert {"output", "key", "order", "fourier"} <= set(coefs.columns)


def test_load_run_exports_shapiq():
    shapiq = pytest.importorskip("shapiq")
    import dataspex

    run = dataspex.load_run(synthetic_run())
    harmful = [p for p in run.data.planted if p["kind"] == "harmful"][0]
    iv = run.to_shapiq(output=harmful["test"])
    assert isinstance(iv, shapiq.InteractionValues) and iv.n_players == run.data.n_train
    # f = 0.5 + 2 max(x_i, x_j): Moebius a[i] = a[j] = 2, a[i, j] = -2
    assert iv[(harmful["i"], harmful["j"])] == pytest.approx(-2.0, abs=0.35)


def test_load_run_refuses_a_non_run(tmp_path):
    import dataspex
    from dataspex.core.errors import DataspexError

    with pytest.raises(DataspexError, match="not a dataspex run directory"):
        dataspex.load_run(tmp_path)


# ----------------------------------------------------------------------------------------------- examples to review

def test_summary_keeps_predicted_and_validated_examples_apart(tmp_path):
    """After validation with nothing confirmed, the predicted list stays and the validated one is [] (it never
    silently replaces the predicted one); the report text says both."""
    import dataspex

    run_dir = copy_run(tmp_path)
    before = json.load(open(os.path.join(run_dir, "report", "summary.json")))
    predicted = before["examples_to_review_predicted"]
    assert predicted and before["examples_to_review_validated"] is None
    assert before["predicted_mean_loss_change_if_predicted_removed"] is not None
    assert before["predicted_mean_loss_change_if_validated_removed"] is None

    write_validation(run_dir, {})  # nothing lowered the test loss when removed
    run_cli("report", f"run_dir={run_dir}", *REPORT_ARGS)
    summary = dataspex.load_run(run_dir).summary
    assert summary["examples_to_review_predicted"] == predicted
    assert summary["examples_to_review_validated"] == []
    assert summary["predicted_mean_loss_change_if_validated_removed"] is None
    assert "examples_to_review" not in summary
    assert summary["bottom_line"] == {"status": "nothing to act on", "reason": "no harmful pair passed validation",
                                      "pairs": []}
    md = open(os.path.join(run_dir, "report", "report.md")).read()
    page = open(os.path.join(run_dir, "report", "report.html")).read()
    ids = ", ".join(f"#{x}" for x in predicted)
    for text in (md, html.unescape(page)):  # the page escapes the apostrophes
        assert f"Examples to drop or relabel, predicted (top harmful pairs): {ids}." in text
        assert ("Examples to drop or relabel, validated: none. No harmful pair was confirmed as a pair and "
                "lowered both its test example's loss and the mean test loss when removed: nothing to drop on this "
                "evidence.") in text

    # a removal that helped without a confirmed interaction is not a validated pair action
    write_validation(run_dir, {("harmful", 1): "lowered"})
    run_cli("report", f"run_dir={run_dir}", *REPORT_ARGS)
    assert dataspex.load_run(run_dir).summary["examples_to_review_validated"] == []

    table = write_validation(run_dir, {("harmful", 1): "lowered"}, confirmed={("harmful", 1)})  # confirmed, helped
    run_cli("report", f"run_dir={run_dir}", *REPORT_ARGS)
    summary = dataspex.load_run(run_dir).summary
    first = table[table["kind"] == "harmful"].iloc[0]
    assert summary["examples_to_review_validated"] == sorted([int(first["i"]), int(first["j"])])
    assert summary["examples_to_review_predicted"] == predicted
    assert set(summary["examples_to_review_validated"]) <= set(predicted)
    assert summary["predicted_mean_loss_change_if_validated_removed"] is not None
    assert summary["bottom_line"] == {"status": "curate next", "reason": "not curated yet",
                                      "pairs": [[int(first["i"]), int(first["j"])]]}
    md = open(os.path.join(run_dir, "report", "report.md")).read()
    assert f"Examples to drop or relabel, predicted (top harmful pairs): {ids}." in md
    validated = ", ".join(f"#{x}" for x in summary["examples_to_review_validated"])
    assert ("Examples to drop or relabel, validated (harmful pairs whose interaction the retrains confirmed and "
            f"whose removal lowered both its test example's loss and the mean test loss): {validated}.") in md

    # confirmed, and its test example's loss fell, but the mean test loss did not measurably: a one-example fix,
    # named as such, and not an action on the data set
    table = write_validation(run_dir, {("harmful", 1): "lowered"}, confirmed={("harmful", 1)},
                             mean_unclear={("harmful", 1)})
    run_cli("report", f"run_dir={run_dir}", *REPORT_ARGS)
    assert dataspex.load_run(run_dir).summary["examples_to_review_validated"] == []
    md = open(os.path.join(run_dir, "report", "report.md")).read()
    first = table[table["kind"] == "harmful"].iloc[0]
    assert ("nothing to drop on this evidence. Confirmed, but a fix for one test example only (the mean test loss "
            f"did not measurably fall): #{int(first['i'])} + #{int(first['j'])} (test #{int(first['test'])}: "
            "-1.000; mean test loss -0.250 [-0.300, +0.050]).") in md


def test_report_says_what_each_validated_removal_did_beyond_its_test_example(tmp_path):
    """A validated removal is described by what it did to the mean loss of the test examples its pair was not
    chosen on (lowered, no measurable change, raised), with the caution that only the eval split speaks for unseen
    data; a validation written before that was measured is named as such, not guessed."""
    run_dir = copy_run(tmp_path)
    harmful1 = {("harmful", 1): "lowered"}
    table = write_validation(run_dir, harmful1, confirmed={("harmful", 1)})  # no columns: an older validation
    first = table[table["kind"] == "harmful"].iloc[0]
    pair, test = f"#{int(first['i'])} + #{int(first['j'])}", f"#{int(first['test'])}"
    run_cli("report", f"run_dir={run_dir}", *REPORT_ARGS)
    md = open(os.path.join(run_dir, "report", "report.md")).read()
    assert ("What these removals did to the other test examples is not measured (validated before dataspex "
            "measured it): re-run `dataspex validate run_dir=...`, which reuses its retrains.") in md
    caution = (" The test set chose these pairs, so only `dataspex curate`'s eval split says whether a removal helps "
               "data the ranking never saw.")
    expected = {
        "unclear": (f"Beyond their own test examples: removing {pair} (test {test}; the others +0.010 [-0.040, "
                    "+0.060]) did not measurably change the mean loss of the other test examples." + caution),
        "lowered": (f"Beyond their own test examples: removing {pair} (test {test}; the others -0.090 [-0.140, "
                    "-0.040]) lowered the mean loss of the other test examples too." + caution),
        "raised": (f"Beyond their own test examples: removing {pair} (test {test}; the others +0.110 [+0.060, "
                   "+0.160]) raised the mean loss of the other test examples." + caution),
    }
    for away, sentence in expected.items():
        write_validation(run_dir, harmful1, confirmed={("harmful", 1)}, elsewhere={("harmful", 1): away})
        run_cli("report", f"run_dir={run_dir}", *REPORT_ARGS)
        md = open(os.path.join(run_dir, "report", "report.md")).read()
        assert sentence in md
        assert "removing both: other test examples" in md  # the validation table's column
    # the actions table carries the same verdict and numbers
    assert re.search(rf"\| {re.escape(pair)} \| [^|]+ \| {test} \| [^|]+ \| [^|]+ \| lowered \| "
                     r"lowered -0\.250 \[-0\.350, -0\.150\] \| raised \+0\.110 \[\+0\.060, \+0\.160\] \|", md)


def test_curation_line_explains_a_still_eval_split_by_removals_measured_only_at_their_test_examples():
    """curate's sentence adds why the eval split may not have moved only when no removal acted on lowered the
    other test examples' loss and curation did not help."""
    from dataspex.report.text import _curation_line

    def cur(verdict, scopes):
        changes = [{"row": k, "evidence": {"test": 5 + k, **({} if s is None else {"removal_elsewhere": s})}}
                   for k, s in enumerate(scopes)]
        return {"verdict": verdict, "changes": changes, "actions": "validated", "n_eval": 10, "seeds": 4,
                "level": 0.9, "curated_vs_full": {"mean": 0.001, "low": -0.01, "high": 0.012}}

    why = ("None of the removals acted on lowered the mean loss of the test examples its pair was not chosen on "
           "(`dataspex validate`): they were measured to help test #5, #6, so an eval split without texts like "
           "those has little to gain.")
    assert _curation_line(cur("no measurable effect", ["unclear", "raised"])).endswith(why)
    assert why not in _curation_line(cur("no measurable effect", ["unclear", "lowered"]))
    assert why not in _curation_line(cur("helped", ["unclear", "unclear"]))
    assert why not in _curation_line(cur("no measurable effect", [None, None]))  # curated before it was measured


def test_report_warns_about_diverged_masks(tmp_path):
    """A mask whose retrain diverged (an absurd test loss) is named at the top of the summary."""
    from omegaconf import OmegaConf

    from dataspex.report import write_report
    from dataspex.store import RunStore

    run_dir = copy_run(tmp_path)
    store = RunStore(run_dir)
    results = store.load_results()
    losses = results.losses.copy()
    losses[3, 0] = 6.7e7  # as train.lr=1e6 gives
    for path in store.result_files():
        os.unlink(path)
    store.write_results(results.mask_ids, results.masks, losses, results.margins)
    run = __import__("dataspex").load_run(run_dir)
    cfg = OmegaConf.load(os.path.join(run_dir, "config.yaml"))
    cfg.run_dir = run_dir
    cfg.report.curve_fractions = [0.5]  # as cached: no refits
    write_report(cfg, run.store, run.data)
    text = open(os.path.join(run_dir, "report", "report.md")).read()
    assert (f"training diverged or did not converge on 1 of {len(results)} masks: {int(results.mask_ids[3])} "
            "(test loss above 1000 nats: 1)") in text, text[:2000]


# ----------------------------------------------------------------------------------------------- findings

def test_report_lists_findings_only_where_the_heldout_retrains_support_them(tmp_path):
    """Planted pairs: each is a finding (held-out q <= report.q_max) and gets an action. Pure noise in place of the
    retrains (the same run, rows shuffled against the masks): the estimator still ranks pairs, but none is a finding,
    there is nothing to act on, and the summary says so."""
    from dataspex.store import RunStore

    out = os.path.join(synthetic_run(), "report")
    pairs = pd.read_parquet(os.path.join(out, "pairs.parquet"))
    summary = json.load(open(os.path.join(out, "summary.json")))
    planted = {(p["i"], p["j"]) for p in __import__("dataspex").load_run(synthetic_run()).data.planted}
    found = pairs[pairs["finding"]]
    assert planted <= {(int(i), int(j)) for i, j in zip(found["i"], found["j"])}
    assert (found["q_value"] <= 0.1).all() and (pairs.loc[~pairs["finding"], "q_value"].fillna(1) > 0.1).all()
    assert summary["pair_tests"]["tested"] and summary["pair_tests"]["baseline"] == "linear"
    assert summary["pair_tests"]["n_heldout"] == 16 and summary["pair_tests"]["n_findings"] == len(found)
    from dataspex.report import SUMMARY_ROWS

    harmful = found[found["kind"] == "harmful"].head(SUMMARY_ROWS)  # the summary's harmful findings
    assert summary["examples_to_review_predicted"] == sorted({int(x) for x in np.r_[harmful["i"], harmful["j"]]})
    assert (f"{len(found)} are findings (Benjamini-Hochberg q <= 0.1; on data where no pair interacts up to 10% of "
            "studies still list one, so a finding is a candidate until `dataspex validate` retrains it)") \
        in open(os.path.join(out, "report.md")).read()
    assert "less power than at design.p=0.5" not in open(os.path.join(out, "report.md")).read()  # p = 0.5: balanced
    assert summary["pair_tests"]["sparsest_cell"] >= 16 / 8
    # the pooled test reads a pair exactly when each of its four cells holds a held-out mask
    assert summary["pair_tests"]["n_untested"] == int(pairs["p_value"].isna().sum())
    assert (pairs["p_value"].isna() == (pairs["heldout_cell"] == 0)).all() and (pairs["heldout_cell"] >= 0).all()

    run_dir = copy_run(tmp_path)
    store = RunStore(run_dir)
    results = store.load_results()
    order = np.random.default_rng(0).permutation(len(results.mask_ids))
    for path in store.result_files():
        os.unlink(path)
    store.write_results(results.mask_ids, results.masks, results.losses[order], results.margins[order])
    run_cli("fit", f"run_dir={run_dir}")
    # auto ranks by the best pooled held-out R^2, linear included: on shuffled losses no model beats the mean
    run_cli("report", f"run_dir={run_dir}", *REPORT_ARGS)
    faith = json.load(open(os.path.join(run_dir, "fit", "faithfulness.json")))
    best = max(faith, key=lambda n: faith[n]["r2_pooled"])
    md = open(os.path.join(run_dir, "report", "report.md")).read()
    assert json.load(open(os.path.join(run_dir, "report", "summary.json")))["estimator"] == best
    assert f"No fitted model predicts held-out retrains better than their mean (best pooled R^2 " \
           f"{faith[best]['r2_pooled']:.3f})" in md
    if best == "linear":
        assert "which has no pair terms: pairs do not improve the held-out fit over single-example effects" in md
        assert len(pd.read_parquet(os.path.join(run_dir, "report", "pairs.parquet"))) == 0
    # a pair model named on purpose lists its pairs, and the held-out test makes none a finding
    run_cli("report", f"run_dir={run_dir}", "report.estimator=proxyspex", *REPORT_ARGS)
    summary = json.load(open(os.path.join(run_dir, "report", "summary.json")))
    pairs = pd.read_parquet(os.path.join(run_dir, "report", "pairs.parquet"))
    assert len(pairs) > 0 and not pairs["finding"].any()
    assert summary["pair_tests"]["n_findings"] == 0 and summary["examples_to_review_predicted"] == []
    md = open(os.path.join(run_dir, "report", "report.md")).read()
    assert "none is a finding at q <= 0.1: the held-out retrains do not support any listed pair" in md
    assert "Examples to drop or relabel, predicted: none (no harmful pair is a finding" in md


def test_trust_leads_the_summary_and_an_unfaithful_model_gets_no_actions(tmp_path):
    """The synthetic run's held-out masks have seed replicates (other noise draws): the summary opens with the
    ranking model's pooled R^2 beside the ceiling they give; with report.trust_r2 above that R^2 the same pairs
    stay in the tables as candidates and the summary has no actions."""
    from dataspex.fit.faithfulness import ceiling_se, pooled_ceiling
    from dataspex.store import RunStore

    run_dir = copy_run(tmp_path)
    summary = json.load(open(os.path.join(run_dir, "report", "summary.json")))
    trust = summary["trust"]
    store = RunStore(run_dir)
    design = store.load_design()
    results = store.load_results(design)
    of = design.meta["replicate"]["of"]
    row = {int(m): r for r, m in enumerate(results.mask_ids)}
    expected = pooled_ceiling(results.losses[[row[a] for a in of]], results.losses[design.rows("replicate")])
    assert trust["ceiling"]["n_masks"] == 16 and trust["ceiling"]["pooled"] == pytest.approx(expected)
    assert trust["trusted"] and summary["examples_to_review_predicted"]
    md = open(os.path.join(run_dir, "report", "report.md")).read()
    first = md.split("## Summary for the curation team", 1)[1].strip().splitlines()[0]
    se = trust["ceiling"]["pooled_se"]
    a = results.losses[[row[x] for x in of]]
    assert se == pytest.approx(ceiling_se(a, results.losses[design.rows("replicate")])) and 0 < se < 0.2
    r2 = trust["r2_pooled"]
    assert first.startswith(f"* Trust: the ranking model {summary['estimator']} has pooled held-out R^2 "
                            f"{r2:.3f} from 48 retrains (16 held out); noise ceiling {expected:.3f} +- {se:.3f} (16 "
                            "held-out retrains repeated under another seed: no model of the training set can beat it; "
                            "+- is its bootstrap standard error, which four times the replicates would about halve: "
                            f"design.replicates, at most design.heldout); the model reaches {r2 / expected:.0%} of it, "
                            f"{r2 / (expected + se):.0%} to {r2 / (expected - se):.0%} with the ceiling one standard "
                            "error either way.")

    run_cli("report", f"run_dir={run_dir}", "report.trust_r2=0.999", *REPORT_ARGS)
    summary = json.load(open(os.path.join(run_dir, "report", "summary.json")))
    md = open(os.path.join(run_dir, "report", "report.md")).read()
    assert not summary["trust"]["trusted"] and summary["examples_to_review_predicted"] == []
    assert "**Not faithful enough to act on** (below report.trust_r2=0.999" in md
    assert "Examples to drop or relabel, predicted: none" in md and "| suggested action |" not in md
    pairs = pd.read_parquet(os.path.join(run_dir, "report", "pairs.parquet"))
    assert pairs["finding"].any()  # the candidates are still there, with their tests


def test_a_ranking_model_without_pair_terms_draws_no_heatmap_and_leaves_none_behind(tmp_path):
    run_dir = copy_run(tmp_path)
    out = os.path.join(run_dir, "report")
    assert {"heatmap.png", "heatmap_proxyspex.png"} <= set(os.listdir(out))  # the pair model's report, copied
    run_cli("report", f"run_dir={run_dir}", "report.estimator=linear", *REPORT_ARGS)
    assert not [f for f in os.listdir(out) if f.startswith("heatmap")]  # a blank square, or the last model's
    note = "linear has no pair terms (it models single-example effects only), so there is no pair to draw."
    assert f"## Heatmaps of pairwise scores\n\n_{note}_" in open(os.path.join(out, "report.md")).read()
    assert note in open(os.path.join(out, "report.html")).read()


def test_the_validated_interactions_size_at_the_full_set_is_their_median_ratio_to_the_prediction():
    from omegaconf import OmegaConf

    from dataspex.report.text import _full_set_size

    validation = pd.DataFrame({"predicted": [0.5, -0.4, 0.2, 0.3, 0.0], "realised": [0.1, 0.2, 0.2, np.nan, 0.1]})
    cfg = OmegaConf.create({"design": {"p": 0.5}})
    # ratios 0.2, -0.5, 1.0 (the NaN and the zero prediction are left out): median 0.2; two keep their sign
    assert _full_set_size(validation, cfg).startswith(
        "At the full training set the 3 validated interactions came to a median 0.20 of their predicted size (2 of 3 "
        "with the predicted sign): the predictions describe half-size training sets")
    assert "describe 90%-size training sets" in _full_set_size(validation, OmegaConf.create({"design": {"p": 0.9}}))
    assert _full_set_size(validation.iloc[4:], cfg) == ""
