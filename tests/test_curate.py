"""`dataspex curate`: the curation design, the paired statistics, the curated file, and the stage end to end
(the fit is synthetic; the curation study's retrains are real fine-tunes scored on the demo's eval split)."""

from __future__ import annotations

import json
import os

import numpy as np
import pandas as pd
import pytest
from omegaconf import OmegaConf

from dataspex.core.data import Split, load_data
from dataspex.core.errors import DataspexError
from dataspex.core.export import format_for, split_frame, write_split
from dataspex.design.curation import CurationPlan, arm_masks, augmented_split, curation_design, random_removals
from dataspex.fit.baselines import top_harmful
from dataspex.stages.curate import plan_changes
from dataspex.store import Results
from dataspex.validate import t_interval
from dataspex.validate.curation import analyse_curation, curation_verdict
from tests.conftest import TINY, run_cli


# ------------------------------------------------------------------------------------------- the design

def test_arm_masks_over_the_augmented_split_are_exact():
    train = Split(["a", "b", "c", "d", "e", "f"], np.array([1, 1, 1, 1, 0, 0]))
    plan = CurationPlan(6, dropped=[1], relabelled={3: 0})
    aug = augmented_split(train, plan)
    assert aug.texts == ["a", "b", "c", "d", "e", "f", "d"] and aug.labels.tolist() == [1, 1, 1, 1, 0, 0, 0]
    arms = arm_masks(plan, {"random:0": [0, 5], "linear": [2, 4]})
    assert list(arms) == ["full", "curated", "random:0", "linear"]
    assert arms["full"].tolist() == [1, 1, 1, 1, 1, 1, 0]
    assert arms["curated"].tolist() == [1, 0, 1, 0, 1, 1, 1]  # 1 dropped, 3 swapped for its relabelled copy
    assert arms["random:0"].tolist() == [0, 1, 1, 1, 1, 0, 0]
    assert arms["linear"].tolist() == [1, 1, 0, 1, 0, 1, 0]
    assert plan.changed == [1, 3] and plan.n_changed == 2
    assert augmented_split(train, CurationPlan(6, dropped=[2])) is train  # nothing relabelled: no copies


def test_curation_plan_refuses_impossible_changes():
    with pytest.raises(ValueError, match=r"example indices \[7\] are outside the training set \(n_train=6\)"):
        CurationPlan(6, dropped=[7])
    with pytest.raises(ValueError, match=r"examples \[2\] are both dropped and relabelled"):
        CurationPlan(6, dropped=[2], relabelled={2: 0})


def test_curation_design_keeps_its_ids_when_seeds_grow():
    arms = arm_masks(CurationPlan(4, dropped=[0]), {"random:0": [3]})
    two, three = curation_design(arms, 2), curation_design(arms, 3)
    assert two.roles.tolist() == ["full", "curated", "random:0"] * 2 and two.meta["replicate"] == [0, 0, 0, 1, 1, 1]
    assert three.mask_ids[:6].tolist() == two.mask_ids.tolist() and np.array_equal(three.masks[:6], two.masks)
    assert three.meta["arms"] == ["full", "curated", "random:0"] and len(three) == 9


def test_random_removals_are_distinct_deterministic_and_stable_in_the_number_of_draws():
    five, seven = random_removals(20, 4, 5, seed=0), random_removals(20, 4, 7, seed=0)
    assert seven[:5] == five and all(len(set(d)) == 4 and d == sorted(d) for d in seven)
    assert len({tuple(d) for d in seven}) == 7 and random_removals(20, 4, 5, seed=1) != five
    with pytest.raises(ValueError, match="cannot remove 21 of 20"):
        random_removals(20, 21, 1, seed=0)


def test_folds_and_the_label_expansion_give_out_of_fold_probabilities():
    from dataspex.design.crossfit import crossfit_design, fold_assignment, label_expansion
    from dataspex.fit.baselines import out_of_fold_probs

    fold_of = fold_assignment(7, 3, seed=0)
    assert sorted(np.bincount(fold_of).tolist()) == [2, 2, 3] and fold_assignment(7, 3, seed=0).tolist() == \
        fold_of.tolist()
    design = crossfit_design(fold_of)
    assert design.masks.tolist() == [(fold_of != f).astype(int).tolist() for f in range(3)]
    expanded = label_expansion(Split(["a", "b"], np.array([1, 0])), 3)
    assert expanded.texts == ["a", "a", "a", "b", "b", "b"] and expanded.labels.tolist() == [0, 1, 2, 0, 1, 2]
    # fold f's model scores every expanded row; each example's probabilities come from its own fold's model
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(3), size=(3, 7))  # (folds, n, labels)
    losses = -np.log(probs).reshape(3, 21)
    got = out_of_fold_probs(losses, fold_of, 3)
    np.testing.assert_allclose(got, probs[fold_of, np.arange(7)], rtol=1e-12)
    with pytest.raises(ValueError, match=r"folds=1 must be in \[2, n_train=7\]"):
        fold_assignment(7, 1, seed=0)


def test_cleanlab_harm_puts_the_confidently_contradicted_label_first():
    from dataspex.fit.baselines import cleanlab_harm

    labels = np.array([0, 0, 1, 1, 0, 1, 0, 1])
    probs = np.where(labels[:, None] == np.arange(2), 0.9, 0.1)
    probs[2] = [0.97, 0.03]  # labelled 1, the out-of-fold model is sure it is 0
    harm, flagged = cleanlab_harm(labels, probs)
    assert int(np.argmax(harm)) == 2 and harm[2] == pytest.approx(0.97) and flagged == [2]


def test_pair_aware_harm_against_brute_force_on_a_masking_pair():
    """f = 0.1 x0 + (x1 OR x2) - 0.3 x3 on each of two test outputs: removing 1 or 2 alone changes nothing, removing
    both lowers the loss by 1; brute force over the set function gives every example's harm."""
    from dataspex.fit.baselines import pair_aware_harm
    from dataspex.fit.estimators.result import InteractionResult

    keys = [(0,), (1,), (2,), (1, 2), (3,)]
    moebius = np.array([[0.1, 0.1], [1.0, 1.0], [1.0, 1.0], [-1.0, -1.0], [-0.3, -0.3]])
    result = InteractionResult.from_moebius(4, keys, moebius, output_names=["test_0", "test_1"])

    def f(x):
        return 0.1 * x[0] + max(x[1], x[2]) - 0.3 * x[3]

    full = np.ones(4, dtype=int)
    expected = []
    for i in range(4):
        drop_i = full.copy()
        drop_i[i] = 0
        best = f(full) - f(drop_i)
        for j in range(4):
            if j != i:
                drop_j, drop_both = full.copy(), drop_i.copy()
                drop_j[j], drop_both[j] = 0, 0
                best = max(best, f(drop_j) - f(drop_both))
        expected.append(best)
    assert expected == pytest.approx([0.1, 1.0, 1.0, -0.3])
    np.testing.assert_allclose(pair_aware_harm(result), expected, atol=1e-12)


def test_top_harmful_takes_the_largest_harm_lower_index_on_ties():
    assert top_harmful(np.array([0.1, 0.5, 0.5, -1.0, 0.3]), 3) == [1, 2, 4]


# ------------------------------------------------------------------------------------------- the changes

def _actions(rows):
    """An actions table; the mean test loss moved as the pair's test example's loss did (``removal_mean`` =
    ``removal``) unless a row gives its own ``removal_mean`` as a 13th value."""
    cols = ["kind", "i", "j", "test", "pattern", "action", "removal", "verdict", "predicted_change_if_both_removed",
            "realised_change_if_both_removed", "realised_low", "realised_high", "removal_mean"]
    return pd.DataFrame([dict(zip(cols, r if len(r) == len(cols) else (*r, r[6]))) for r in rows], columns=cols)


def _data():
    from dataspex.core.data import TaskData
    train = Split([f"t{k}" for k in range(8)], np.array([0, 1, 0, 1, 0, 1, 0, 1]))
    test = Split(["x0", "x1"], np.array([0, 1]))
    return TaskData(train, test, "classification", ["neg", "pos"])


def test_plan_changes_follows_the_source_and_the_relabel_choice():
    actions = _actions([
        ("harmful", 1, 3, 0, "masking", "relabel both as 'neg'? (else drop both)", "lowered", "confirmed",
         -2.0, -1.5, -2.0, -1.0),
        ("harmful", 4, 6, 1, "synergy", "drop either", "unclear", "not confirmed", -0.5, 0.1, -0.4, 0.6),
        ("harmful", 0, 7, 1, "masking", "drop both", "lowered", "not confirmed", -0.5, -1.0, -1.5, -0.5),
        ("harmful", 2, 4, 0, "masking", "drop both", "lowered", "confirmed", -0.5, -1.0, -1.5, -0.5, "unclear"),
        ("redundant", 2, 5, 1, "redundant", "keep at least one", "-", "not validated", 1.0, np.nan, np.nan, np.nan),
    ])
    plan, entries = plan_changes(actions, _data(), "validated", relabel=False, validated=True)
    # only the pair whose interaction was confirmed and whose removal lowered its test loss and the mean test
    # loss: (0, 7) helped unconfirmed, (2, 4) confirmed but the mean test loss did not measurably fall
    assert plan.dropped == [1, 3] and plan.relabelled == {}
    assert [e["change"] for e in entries] == ["drop", "drop"] and entries[0]["evidence"]["pair"] == [1, 3]
    plan, entries = plan_changes(actions, _data(), "validated", relabel=True, validated=True)
    assert plan.dropped == [] and plan.relabelled == {1: 0, 3: 0}
    assert entries[0]["label"] == "pos" and entries[0]["new_label"] == "neg"
    plan, entries = plan_changes(actions, _data(), "predicted", relabel=False, validated=False)
    assert plan.dropped == [0, 1, 2, 3, 4, 6, 7]  # every harmful finding; redundant pairs are kept
    assert entries[2]["evidence"]["realised_change_if_both_removed"] == 0.1
    with pytest.raises(DataspexError, match="this run has not been validated: run `dataspex validate"):
        plan_changes(actions, _data(), "validated", relabel=False, validated=False)
    # no harmful action at all: nothing to validate, so nothing to act on rather than a refusal
    plan, entries = plan_changes(actions[actions["kind"] == "redundant"], _data(), "validated", relabel=False,
                                 validated=False)
    assert plan.n_changed == 0 and entries == []



def _curation(verdict, pairs, source="validated", seeds=4, stale=False):
    """A curation.json summary that acted on ``pairs`` with ``verdict``."""
    changes = [{"row": x, "evidence": {"pair": list(p), "test": 0}} for p in pairs for x in p]
    return {"verdict": verdict, "actions": source, "changes": changes, "seeds": seeds, "stale": stale,
            "n_eval": 16, "curated_file": "curate/train_curated.csv",
            "curated_vs_full": {"mean": -0.2, "low": -0.3, "high": -0.1},
            "curated_vs_random": {"mean": -0.15, "low": -0.25, "high": -0.05}}


def test_bottom_line_follows_the_evidence_furthest_along_the_path():
    """decide(): predicted only -> validate next; validated -> curate next until curate measured exactly those
    pairs on a fit that has not changed since; then its verdict decides (helped -> act, hurt -> do not act,
    anything else -> nothing to act on)."""
    from dataspex.report.curation import decide

    actions = _actions([
        ("harmful", 1, 3, 0, "masking", "drop both", "lowered", "confirmed", -2.0, -1.5, -2.0, -1.0),
        ("harmful", 4, 6, 1, "synergy", "drop either", "lowered", "not confirmed", -0.5, -0.4, -0.6, -0.2),
        ("redundant", 2, 5, 1, "redundant", "keep at least one", "raised", "confirmed", 1.0, 1.0, 0.5, 1.5),
    ])
    unvalidated = actions.assign(verdict="not validated", removal="-", removal_mean="-")
    status = lambda *a: (lambda d: (d["status"], d["reason"], d["pairs"]))(decide(*a))  # noqa: E731
    assert status(unvalidated, None, None) == ("validate next", "not validated yet", [[1, 3], [4, 6]])
    assert status(actions.iloc[0:0], None, None) == ("nothing to act on", "no harmful finding", [])
    assert status(actions, "validated", None) == ("curate next", "not curated yet", [[1, 3]])
    failed = actions.assign(removal_mean="unclear")  # confirmed, but the mean test loss did not fall
    assert status(failed, "validated", None) == ("nothing to act on", "no harmful pair passed validation", [])
    for verdict, expected in [("helped", "act"), ("hurt", "do not act"), ("no measurable effect", "nothing to act on")]:
        assert status(actions, "validated", _curation(verdict, [(1, 3)])) == (expected, f"curate: {verdict}",
                                                                               [[1, 3]])
    # measured something else, or on another fit, or not yet: curate again
    assert status(actions, "validated", _curation("helped", [(1, 3), (4, 6)])) == (
        "curate next", "it acted on other pairs than the report's current actions", [[1, 3]])
    assert status(actions, "validated", _curation("helped", [(1, 3)], stale=True)) == (
        "curate next", "the fit changed since it ran", [[1, 3]])
    assert status(actions, "validated", _curation("no measurable effect", [(1, 3)], seeds=0)) == (
        "curate next", "it has no complete replicate yet", [[1, 3]])
    # curate.actions=predicted measures every harmful finding, so its verdict speaks for them
    assert status(actions, "validated", _curation("helped", [(1, 3), (4, 6)], "predicted")) == (
        "act", "curate: helped", [[1, 3], [4, 6]])
    # validate was re-run after a curate that found nothing, and a pair passes now: curate again
    assert status(actions, "validated", _curation("nothing to act on", [])) == (
        "curate next", "it found nothing to act on then", [[1, 3]])
    # curate found nothing to act on and nothing passed validation since: nothing to act on, said by curate
    assert status(failed, "validated", _curation("nothing to act on", [])) == (
        "nothing to act on", "curate: nothing to act on", [])
    # curate measured a pair that is no longer an action: the current evidence decides
    assert status(failed, "validated", _curation("helped", [(1, 3)])) == (
        "nothing to act on", "no harmful pair passed validation", [])


def test_bottom_line_sentences_carry_the_eval_numbers():
    from dataspex.report.curation import decide
    from dataspex.report.text import _bottom_line

    actions = _actions([("harmful", 1, 3, 0, "masking", "drop both", "lowered", "confirmed", -2.0, -1.5, -2.0, -1.0)])
    numbers = ("eval loss -0.200 nats [-0.300, -0.100] against the full set, -0.150 [-0.250, -0.050] against random "
               "removal of as many; 16 eval examples, 4 paired seeds, `dataspex curate`")
    line = _bottom_line(decide(actions, "validated", _curation("helped", [(1, 3)])))
    assert line == ("**Bottom line: act.** Applying the 2 changes of curate.actions=validated (pairs #1 + #3) lowered "
                    f"the loss on data the ranking never saw, beyond random removal ({numbers}). The curated training "
                    "set: `curate/train_curated.csv`.")
    # the curated set beat the full set, not random removal; then neither
    line = _bottom_line(decide(actions, "validated", _curation("no measurable effect", [(1, 3)])))
    assert line.startswith("**Bottom line: nothing to act on.** Applying the 2 changes of curate.actions=validated "
                           "(pairs #1 + #3) lowered the loss on data the ranking never saw, but not measurably more "
                           f"than removing as many random examples ({numbers}). What `dataspex validate` confirmed "
                           "holds for the test examples that chose these pairs, and the eval split shows no gain")
    flat = _curation("no measurable effect", [(1, 3)])
    flat["curated_vs_full"] = {"mean": 0.001, "low": -0.01, "high": 0.012}
    assert ("(pairs #1 + #3) did not measurably lower the loss on data the ranking never saw (eval loss +0.001 nats "
            "[-0.010, +0.012] against the full set") in _bottom_line(decide(actions, "validated", flat))
    assert _bottom_line(decide(actions, "validated", None)) == (
        "**Bottom line: not an action yet.** Removing #1 + #3 passed `dataspex validate` on the test examples that "
        "chose them; whether it helps data the ranking never saw is what `dataspex curate` measures on an eval split: "
        "run it before changing the data set.")
    assert "(`dataspex curate` ran, but the fit changed since it ran)" in _bottom_line(
        decide(actions, "validated", _curation("helped", [(1, 3)], stale=True)))
    assert _bottom_line(decide(actions.assign(removal_mean="unclear"), "validated", None)) == (
        "**Bottom line: nothing to act on**: no harmful pair passed `dataspex validate` (below).")


# ------------------------------------------------------------------------------------------- the statistics

def _study(loss_by_arm: dict, n_eval: int = 3, missing=()):
    """A curation design and Results whose every eval loss of arm a in replicate s is loss_by_arm[a][s]
    (margins +1 for arms named in ``correct``), leaving out the rows in ``missing`` ((arm, s) pairs)."""
    names = list(loss_by_arm)
    seeds = len(loss_by_arm[names[0]])
    arms = {a: np.ones(4, dtype=np.uint8) for a in names}
    design = curation_design(arms, seeds)
    keep = [r for r in range(len(design)) if (design.roles[r], design.meta["replicate"][r]) not in missing]
    losses = np.array([[loss_by_arm[design.roles[r]][design.meta["replicate"][r]]] * n_eval for r in keep])
    margins = np.where(losses < 1.0, 1.0, -1.0)
    return design, Results(design.mask_ids[keep], design.masks[keep], losses, margins)


def test_analyse_curation_pairs_replicates_and_matches_the_t_interval():
    loss = {"full": [1.2, 1.4, 1.1], "curated": [0.8, 0.9, 0.85], "random:0": [1.2, 1.5, 1.0],
            "random:1": [1.1, 1.3, 1.2], "linear": [0.9, 1.5, 1.1]}
    design, results = _study(loss)
    table, summary = analyse_curation(design, results, 3, 0.9, "classification", {a: 2 for a in loss})
    row = table.set_index("arm")
    expected = t_interval(np.subtract(loss["curated"], loss["full"]), 0.9)
    assert row.loc["curated", "loss_change"] == pytest.approx(expected[0])
    interval = (row.loc["curated", "loss_change_low"], row.loc["curated", "loss_change_high"])
    assert interval == pytest.approx(expected[2:])
    pooled = np.mean([loss["random:0"], loss["random:1"]], axis=0)
    assert row.loc["random (pooled)", "eval_loss"] == pytest.approx(pooled.mean())
    assert summary["curated_vs_random"]["mean"] == pytest.approx(np.mean(np.subtract(loss["curated"], pooled)))
    assert summary["curated_vs_linear"]["mean"] == pytest.approx(np.mean(np.subtract(loss["curated"], loss["linear"])))
    assert row.loc["curated", "eval_accuracy"] == 1.0 and row.loc["full", "eval_accuracy"] == 0.0
    assert row.loc["curated", "accuracy_change"] == 1.0 and summary["seeds"] == 3
    assert summary["verdict"] == "helped"

    # a replicate with an arm missing is left out, so every difference stays paired
    design, results = _study(loss, missing=[("random:1", 2)])
    table, summary = analyse_curation(design, results, 3, 0.9, "classification", {a: 2 for a in loss})
    assert summary["seeds"] == 2
    assert table.set_index("arm").loc["curated", "loss_change"] == pytest.approx(np.mean([-0.4, -0.5]))


def test_curation_verdict_needs_to_beat_random_removal_to_count_as_help():
    assert curation_verdict((-0.5, -0.1), (-0.3, -0.05)) == "helped"
    assert curation_verdict((-0.5, -0.1), (-0.3, 0.2)) == "no measurable effect"  # no better than random
    assert curation_verdict((-0.5, -0.1), None) == "no measurable effect"
    assert curation_verdict((0.05, 0.4), (0.0, 0.5)) == "hurt"
    assert curation_verdict((-0.1, 0.2), (-0.3, -0.1)) == "no measurable effect"
    assert curation_verdict((np.nan, np.nan), None) == "no measurable effect"


# ------------------------------------------------------------------------------------------- the file

FILES = dict(source="files", train_file=None, test_file=None, text_column="sentence", label_column="y",
             prompt_column="prompt", completion_column="completion", label_names=None, max_train=None,
             max_test=None, encoding="utf-8", drop_missing=False)


@pytest.mark.parametrize("fmt", ["csv", "tsv", "jsonl", "parquet"])
def test_curated_file_reads_back_as_the_same_training_split(tmp_path, fmt):
    cfg = OmegaConf.create(FILES)
    split = Split(["a good film, truly", 'a "bad" film', "fine\tfilm"], np.array([1, 0, 1]))
    path = write_split(split_frame(split, [0, 2, 5], cfg, ["neg", "pos"]), str(tmp_path / "curated"), fmt)
    assert path.endswith({"jsonl": ".jsonl"}.get(fmt, f".{fmt}"))
    back = load_data(OmegaConf.create(dict(FILES, train_file=path, test_file=path)), "classification")
    assert back.train.texts == split.texts and back.label_names == ["neg", "pos"]
    assert back.train.labels.tolist() == [1, 0, 1]
    assert pd.read_parquet(path)["row"].tolist() == [0, 2, 5] if fmt == "parquet" else True


def test_curated_file_as_a_datasets_folder_and_the_format_choice(tmp_path):
    import datasets

    cfg = OmegaConf.create(FILES)
    split = Split(["x", "y"], np.array([0, 1]))
    path = write_split(split_frame(split, [3, 4], cfg, ["neg", "pos"]), str(tmp_path / "curated"), "datasets")
    ds = datasets.load_from_disk(path)
    assert ds["sentence"] == ["x", "y"] and ds["y"] == ["neg", "pos"] and ds["row"] == [3, 4]
    assert format_for(OmegaConf.create(dict(FILES, train_file="a/b.JSON"))) == "jsonl"
    assert format_for(OmegaConf.create(dict(FILES, train_file="a/b.tsv"))) == "tsv"
    assert format_for(OmegaConf.create({"source": "demo"})) == "parquet"
    with pytest.raises(DataspexError, match="curate.format='xlsx' is not one of: auto, csv, tsv, jsonl, parquet"):
        format_for(cfg, "xlsx")


# ------------------------------------------------------------------------------------------- the stage

@pytest.mark.slow
def test_curate_stage_end_to_end(tmp_path):
    """Acts on the validated harmful pair, writes the curated set and its manifest, retrains every arm under
    paired seeds on the eval split, resumes, and grows with more seeds without retraining what it has."""
    from dataspex.store import RunStore
    from tests.test_report import copy_run, write_validation

    run_dir = copy_run(tmp_path)
    validation = write_validation(run_dir, {("harmful", 1): "lowered"}, confirmed={("harmful", 1)})
    pair = validation[(validation["kind"] == "harmful") & (validation["rank"] == 1)].iloc[0]
    args = ["curate", f"run_dir={run_dir}", "curate.seeds=2", "curate.random_draws=2"]
    proc = run_cli(*args)
    assert "baseline(s) ['trak'] skipped: no TRAK scores" in proc.stderr
    assert "cleanlab baseline: 5-fold retrains, each scoring its fold's 10 x 2 label rows" in proc.stderr
    assert "DataInf baseline: LoRA gradients of a full-data model on 10 train and 4 test examples" in proc.stderr
    assert "2 examples changed (2 dropped, 0 relabelled); 7 arms x 2 seeds = 14 retrains" in proc.stderr
    assert "trained 14, reused 0" in proc.stderr
    out = os.path.join(run_dir, "curate")
    summary = json.load(open(os.path.join(out, "curation.json")))
    assert summary["verdict"] in ("helped", "no measurable effect", "hurt") and summary["seeds"] == 2
    assert summary["arms"]["curated"] == sorted([int(pair["i"]), int(pair["j"])])
    assert [len(summary["arms"][a]) for a in ("full", "random:0", "random:1", "linear", "cleanlab", "datainf")] == \
        [0, 2, 2, 2, 2, 2]
    assert set(summary["cleanlab_flagged"]) <= set(range(10))
    manifest = json.load(open(os.path.join(out, "manifest.json")))
    assert [c["row"] for c in manifest["changes"]] == [int(pair["i"]), int(pair["j"])]
    assert manifest["changes"][0]["evidence"]["removal"] == "lowered"
    curated = pd.read_parquet(summary["curated_file"])  # demo data: parquet
    assert len(curated) == 8 and not {int(pair["i"]), int(pair["j"])} & set(curated["row"])
    table = pd.read_parquet(os.path.join(out, "curation.parquet"))
    assert table["arm"].tolist() == ["full", "curated", "random:0", "random:1", "linear", "cleanlab", "datainf",
                                     "random (pooled)"]
    assert (table["seeds"] == 2).all() and np.isfinite(table["eval_loss"]).all()
    md = open(os.path.join(run_dir, "report", "report.md")).read()  # curate rewrites the report
    assert (f"Curation (`dataspex curate`, 2 examples changed, curate.actions=validated), scored on the 16 eval "
            f"examples no attribution used, 2 paired seeds, 90% intervals: **{summary['verdict']}**") in md
    assert "against random removal of as many" in md and "against cleanlab's removals" in md
    assert "against datainf's removals" in md
    # the bottom line now rests on the eval split's verdict for exactly the pair that was acted on
    status = {"helped": "act", "hurt": "do not act"}.get(summary["verdict"], "nothing to act on")
    bottom = json.load(open(os.path.join(run_dir, "report", "summary.json")))["bottom_line"]
    assert bottom == {"status": status, "reason": f"curate: {summary['verdict']}",
                      "pairs": [[int(pair["i"]), int(pair["j"])]]}
    assert f"* **Bottom line: {status}.** Applying the 2 changes of curate.actions=validated" in md
    study = RunStore(summary["study"])
    results = study.load_results(study.load_design())
    assert results.losses.shape == (14, 16)  # every arm x seed, scored on the 16 eval rows

    more = run_cli("curate", f"run_dir={run_dir}", "curate.seeds=3", "curate.random_draws=2")
    # resumable: only the new replicate is trained, and the cross-fit is reused
    assert "trained 7, reused 14" in more.stderr and "cleanlab baseline" not in more.stderr
    again = json.load(open(os.path.join(out, "curation.json")))
    assert again["seeds"] == 3 and again["study"] == summary["study"]


@pytest.mark.slow
def test_curate_pairs_every_arm_of_a_replicate_under_one_seed(tmp_path):
    """Two arms with the same training set give the same eval losses within a replicate (one seed per
    replicate), and another replicate gives other losses."""
    from hydra import compose, initialize_config_dir

    from dataspex.cli import config_dir
    from dataspex.stages.curate import train_study
    from dataspex.store import RunStore
    from dataspex.core.data import TaskData

    with initialize_config_dir(config_dir(), version_base="1.3"):
        cfg = compose("config", overrides=list(TINY))
    data = load_data(cfg.data, cfg.model.task)
    plan = CurationPlan(data.n_train, dropped=[0])
    arms = arm_masks(plan, {"same_as_full": []})
    design = curation_design(arms, 2)
    store = RunStore(str(tmp_path / "study"))
    os.makedirs(store.run_dir)
    store.check_fingerprint({"test": 1}, create=True)
    store.save_design(design)
    aug = TaskData(train=data.train, test=data.eval, task=data.task, label_names=data.label_names)
    assert train_study(cfg, store, design, aug, 2) == 6
    res = store.load_results(design)
    by = {(design.roles[r], design.meta["replicate"][r]): res.losses[r] for r in range(len(design))}
    for s in (0, 1):
        np.testing.assert_allclose(by[("full", s)], by[("same_as_full", s)], rtol=0, atol=1e-6)
    assert np.abs(by[("full", 0)] - by[("full", 1)]).max() > 1e-4


def test_curate_refusals_and_nothing_to_act_on(tmp_path):
    from tests.test_report import copy_run, write_validation

    run_dir = copy_run(tmp_path)
    proc = run_cli("curate", f"run_dir={run_dir}", "data.n_eval=0", check=False)
    assert proc.returncode == 2 and "this run's data has none: set data.eval_file=<file>" in proc.stderr
    proc = run_cli("curate", f"run_dir={run_dir}", check=False)
    assert proc.returncode == 2 and "curate.actions=validated acts on the pairs `dataspex validate` confirmed" in \
        proc.stderr
    # The settings' own refusals, in-process (the CLI path above already shows how a DataspexError exits: 2).
    from dataspex.core.settings import check_settings
    from dataspex.stages.curate import settings

    base = OmegaConf.load(os.path.join(run_dir, "config.yaml"))
    for override, message in [("curate.actions=maybe", "curate.actions='maybe' is not one of: validated, predicted"),
                              ("curate.baselines=[influence]",
                               "curate.baselines has ['influence']: use linear, trak, cleanlab, datainf"),
                              ("curate.seeds=0", "curate.seeds=0 must be at least 1")]:
        cfg = OmegaConf.merge(base, OmegaConf.from_dotlist([override]))
        with pytest.raises(DataspexError) as err:
            check_settings(cfg)
            settings(cfg)
        assert message in str(err.value)

    write_validation(run_dir, {})  # validated, and no removal lowered the loss
    proc = run_cli("curate", f"run_dir={run_dir}")
    assert ("nothing to act on (`dataspex validate` confirmed no harmful pair (its interaction confirmed and its "
            "removal lowering both its test example's loss and the mean test loss))") in proc.stderr
    summary = json.load(open(os.path.join(run_dir, "curate", "curation.json")))
    assert summary["verdict"] == "nothing to act on" and summary["changes"] == []
    assert not os.path.exists(os.path.join(run_dir, "curate", "manifest.json"))
    md = open(os.path.join(run_dir, "report", "report.md")).read()
    assert "Curation (`dataspex curate`, curate.actions=validated): nothing to act on: `dataspex validate` " \
        "confirmed no harmful pair (its interaction confirmed and its removal lowering both its test example's " \
        "loss and the mean test loss)." in md
    assert "* **Bottom line: nothing to act on**: `dataspex validate` confirmed no harmful pair" in md


def test_per_block_seed_policy_shares_a_seed_and_data_order_inside_a_block_of_ids():
    from dataspex.train.common import mask_schedule, mask_seed

    assert [mask_seed(7, i, "per_block", 3) for i in range(6)] == [mask_seed(7, 0, "per_mask")] * 3 + \
        [mask_seed(7, 1, "per_mask")] * 3
    cfg = OmegaConf.create({"seed": 7, "seed_policy": "per_block", "seed_block": 3, "epochs": 2, "batch_size": 2})
    kept_a, kept_b = np.array([0, 1, 2, 3, 4, 5]), np.array([0, 2, 3, 4, 5])
    seed_a, steps_a = mask_schedule(kept_a, cfg, 3, 6)
    seed_b, steps_b = mask_schedule(kept_b, cfg, 5, 6)  # same block: one order, restricted to each mask
    assert seed_a == seed_b
    order_a, order_b = np.concatenate(steps_a), np.concatenate(steps_b)
    assert order_b.tolist() == [x for x in order_a.tolist() if x != 1]
    assert mask_schedule(kept_a, cfg, 6, 6)[0] != seed_a  # the next block: another seed
    with pytest.raises(DataspexError, match="train.seed_policy=per_block needs train.seed_block >= 1, got None"):
        mask_seed(7, 0, "per_block")
