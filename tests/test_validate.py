"""`dataspex validate`: the replicate design, the statistics, and the stage end to end (real fine-tunes)."""

from __future__ import annotations

import json
import os
import re

import numpy as np
import pandas as pd
import pytest

from dataspex.design import Design
from dataspex.store import Results
from dataspex.design.validation import VARIANTS, curated_mask, extend_design, needed_masks, replicate_ids, variant_masks
from dataspex.validate import analyse, analyse_curated, removal_verdict, t_interval, verdict
from tests.benchmark_scripts import load_benchmark
from tests.conftest import run_cli


def _pairs(rows):
    return pd.DataFrame([dict(kind=k, rank=r, i=i, j=j, test=t, score=1.0, joint_effect=1.0, pattern="masking",
                              estimand="uniform") for k, r, i, j, t in rows])


def test_variant_masks_and_sharing():
    m = variant_masks(5, 1, 3)
    assert [m[v].tolist() for v in VARIANTS] == [[1, 1, 1, 1, 1], [1, 0, 1, 1, 1], [1, 1, 1, 0, 1], [1, 0, 1, 0, 1]]
    # two pairs sharing example 1: full and minus-1 are trained once
    pairs = _pairs([("harmful", 1, 1, 3, 0), ("redundant", 1, 1, 4, 0)])
    masks = needed_masks(5, pairs)
    assert len(masks) == 1 + 3 + 2
    assert curated_mask(5, pairs).tolist() == [1, 0, 1, 0, 1]  # minus the harmful pairs' examples
    assert curated_mask(5, pairs[pairs["kind"] == "redundant"]) is None


def test_extend_design_appends_replicates_once_and_keeps_ids():
    base = Design(np.random.default_rng(0).integers(0, 2, (6, 5)), np.arange(6), ["fit"] * 4 + ["heldout"] * 2,
                  {"kind": "random"})
    masks = needed_masks(5, _pairs([("harmful", 1, 0, 2, 0)]))
    d1, added = extend_design(base, masks, 3)
    assert added == 4 * 3 and len(d1) == 6 + 12
    assert d1.mask_ids[:6].tolist() == list(range(6)) and (d1.roles[6:] == "validate").all()
    reps = replicate_ids(d1)
    assert sorted(len(v) for v in reps.values()) == [3, 3, 3, 3]
    assert sorted(i for v in reps.values() for i in v) == list(range(6, 18))
    d2, again = extend_design(d1, masks, 3)  # idempotent
    assert again == 0 and d2 is d1
    d3, more = extend_design(d1, masks, 5)  # more seeds later: only the extra replicates
    assert more == 4 * 2 and d3.mask_ids[:18].tolist() == d1.mask_ids.tolist()
    assert "validate" in d3.meta and d3.meta["kind"] == "random"


def test_t_interval_and_verdict():
    from scipy import stats

    mean, _, lo, hi = t_interval([1.0, 2.0, 3.0, 4.0], 0.9)
    half = stats.t.ppf(0.95, 3) * np.std([1, 2, 3, 4], ddof=1) / 2
    assert mean == 2.5 and lo == pytest.approx(2.5 - half) and hi == pytest.approx(2.5 + half)
    assert np.isnan(t_interval([1.0], 0.9)[2])
    assert verdict(+1.0, 0.2, 0.9) == "confirmed"
    assert verdict(-1.0, -0.9, -0.2) == "confirmed"
    assert verdict(+1.0, -0.9, -0.2) == "not confirmed"  # excludes 0, but on the other side
    assert verdict(+1.0, -0.1, 0.5) == "not confirmed"
    assert verdict(+1.0, np.nan, np.nan) == "not confirmed"
    assert [removal_verdict(-2, -1), removal_verdict(1, 2), removal_verdict(-1, 1)] == ["lowered", "raised", "unclear"]


class _FakeResult:
    """Predicts a fixed full-estimand interaction for every pair."""

    def __init__(self, value):
        self.value = value

    def pair_scores(self, estimand, output):
        assert estimand == "full"
        return np.full((4, 4), self.value)

    def pair_effects(self, estimand, output):
        return np.full((4, 4), 1.0)


def _results_for(design, f, seeds_noise):
    """Results where test output 0 of mask row r is f(mask) + noise of its replicate."""
    rng = np.random.default_rng(1)
    losses = np.array([[f(m) + seeds_noise * rng.standard_normal(), 0.0] for m in design.masks])
    return Results(design.mask_ids, design.masks, losses, -losses)


def test_analyse_confirms_a_real_interaction_and_not_noise():
    base = Design(np.ones((1, 4)), [0], ["fit"])
    pairs = _pairs([("harmful", 1, 0, 1, 0)])
    design, _ = extend_design(base, needed_masks(4, pairs) + [curated_mask(4, pairs)], 4)
    # masking pair: the loss is 2 if either example is kept -> second difference at full = 0 - 2 - 2 + 2 = -2
    masking = lambda m: 2.0 * max(m[0], m[1])
    table = analyse(pairs, design, _results_for(design, masking, 0.05), {"est": _FakeResult(-2.0)}, "est", 4, 4,
                    0.9)
    row = table.iloc[0]
    assert row["verdict"] == "confirmed" and row["seeds"] == 4
    assert row["realised"] == pytest.approx(-2.0, abs=0.2) and row["ci_low"] < -2.0 + 0.5 < row["ci_high"] + 0.5
    assert row["realised_removal"] == pytest.approx(-2.0, abs=0.2)  # removing both lowers the loss by 2
    assert row["removal"] == "lowered"
    assert row["realised_removal_mean_loss"] == pytest.approx(-1.0, abs=0.1) and row["removal_mean"] == "lowered"
    assert row["predicted"] == -2.0
    cur = analyse_curated(curated_mask(4, pairs), design, _results_for(design, masking, 0.05), 4, 0.9)
    assert cur["dropped"] == [0, 1] and cur["mean_loss_change"] == pytest.approx(-1.0, abs=0.1)  # mean of (-2, 0)
    # pure noise: not confirmed
    table = analyse(pairs, design, _results_for(design, lambda m: 1.0, 0.5), {"est": _FakeResult(-2.0)}, "est",
                    4, 4, 0.9)
    assert table.iloc[0]["verdict"] == "not confirmed"
    # the predicted sign is wrong: not confirmed, even though the interval excludes 0
    table = analyse(pairs, design, _results_for(design, masking, 0.05), {"est": _FakeResult(+2.0)}, "est", 4, 4,
                    0.9)
    assert table.iloc[0]["verdict"] == "not confirmed" and table.iloc[0]["ci_high"] < 0
    # unfinished retrains: pending
    partial = _results_for(design, masking, 0.05)
    keep = np.arange(len(partial.mask_ids)) != 1  # the first replicate of the full set
    partial = Results(partial.mask_ids[keep], partial.masks[keep], partial.losses[keep], partial.margins[keep])
    table = analyse(pairs, design, partial, {"est": _FakeResult(-2.0)}, "est", 4, 4, 0.9)
    assert table.iloc[0]["verdict"] == "pending"


def test_two_claims_of_one_pair_read_their_own_test_examples_from_the_same_retrains():
    """Pair (0, 1) is harmful at test 0 (either copy keeps its loss at 2) and redundant at test 1 (its loss is 2
    only when both are gone): one set of retrains of the four training sets answers both, each at its own test
    example, with opposite interactions."""
    class PerOutput(_FakeResult):
        def pair_scores(self, estimand, output):
            return np.full((4, 4), self.value[output])

    base = Design(np.ones((1, 4)), [0], ["fit"])
    pairs = _pairs([("harmful", 1, 0, 1, 0)])
    claims = pd.concat([pairs, _pairs([("redundant", 1, 0, 1, 1)])], ignore_index=True)
    design, _ = extend_design(base, needed_masks(4, pairs), 4)  # retrained once, for the pair
    rng = np.random.default_rng(2)
    losses = np.array([[2.0 * max(m[0], m[1]), 2.0 * (1 - max(m[0], m[1]))] for m in design.masks])
    losses += 0.05 * rng.standard_normal(losses.shape)
    results = Results(design.mask_ids, design.masks, losses, -losses)
    table = analyse(claims, design, results, {"est": PerOutput([-2.0, 2.0])}, "est", 4, 4, 0.9)
    assert table["test"].tolist() == [0, 1] and table["verdict"].tolist() == ["confirmed", "confirmed"]
    assert table["realised"].tolist() == pytest.approx([-2.0, 2.0], abs=0.2)
    assert table["removal"].tolist() == ["lowered", "raised"] and table["seeds"].tolist() == [4, 4]


def test_elsewhere_is_the_mean_change_over_the_test_examples_not_chosen_on():
    from dataspex.validate import elsewhere

    change = np.array([[-5.0, 0.1, 0.3, -0.2], [-4.0, -0.1, 0.2, -0.4], [-6.0, 0.0, 0.1, -0.3]])  # (r=3, T=4)
    got = elsewhere(change, [0], 0.9)
    per_replicate = [(0.1 + 0.3 - 0.2) / 3, (-0.1 + 0.2 - 0.4) / 3, (0.0 + 0.1 - 0.3) / 3]
    mean, _, lo, hi = t_interval(per_replicate, 0.9)
    assert got["realised_removal_elsewhere"] == pytest.approx(mean)
    assert got["removal_elsewhere_ci_low"] == pytest.approx(lo)
    assert got["removal_elsewhere_ci_high"] == pytest.approx(hi)
    assert got["removal_elsewhere"] == removal_verdict(lo, hi) and got["n_elsewhere"] == 3
    assert elsewhere(change, [0, 2], 0.9)["n_elsewhere"] == 2  # several pairs' test examples, each left out once
    assert elsewhere(change, [0, 0, 2], 0.9)["realised_removal_elsewhere"] == pytest.approx(np.mean(change[:, [1, 3]]))
    none = elsewhere(change, [0, 1, 2, 3], 0.9)
    assert none["removal_elsewhere"] == "n/a" and none["n_elsewhere"] == 0
    assert np.isnan(none["realised_removal_elsewhere"])


def test_analyse_measures_the_removal_on_the_other_test_examples():
    """Test 0 is the pair's (masking); test 1 loses 0.5 nats whenever example 0 is dropped: removing both lowers
    it, so the removal acts beyond the pair's own test example, exactly -0.5."""
    base = Design(np.ones((1, 4)), [0], ["fit"])
    pairs = _pairs([("harmful", 1, 0, 1, 0)])
    design, _ = extend_design(base, needed_masks(4, pairs) + [curated_mask(4, pairs)], 4)
    rng = np.random.default_rng(1)
    losses = np.array([[2.0 * max(m[0], m[1]) + 0.05 * rng.standard_normal(), 1.0 - 0.5 * (1 - m[0])]
                       for m in design.masks])
    results = Results(design.mask_ids, design.masks, losses, -losses)
    row = analyse(pairs, design, results, {"est": _FakeResult(-2.0)}, "est", 4, 4, 0.9).iloc[0]
    assert row["realised_removal_elsewhere"] == pytest.approx(-0.5) and row["n_elsewhere"] == 1
    assert row["removal_elsewhere"] == "lowered"
    cur = analyse_curated(curated_mask(4, pairs), design, results, 4, 0.9, tests=[0])
    assert cur["elsewhere_change"] == pytest.approx(-0.5) and cur["elsewhere"] == "lowered" and cur["tests"] == [0]
    # the test example a pair was chosen on is its own: without the tests, both count
    assert analyse_curated(curated_mask(4, pairs), design, results, 4, 0.9)["n_elsewhere"] == 2
    # with only its own test example moving, the others show nothing
    flat = Results(design.mask_ids, design.masks, np.c_[losses[:, 0], np.ones(len(losses))], -losses)
    assert analyse(pairs, design, flat, {"est": _FakeResult(-2.0)}, "est", 4, 4, 0.9).iloc[0]["removal_elsewhere"] \
        == "unclear"


def test_seeds_by_power_against_the_formula():
    """seeds_needed = ceil(r (half width / (|predicted| / 2))^2); seeds_per_pair clips it to [seeds, max_seeds],
    keeps pending pairs at seeds, and ignores the realised values."""
    from dataspex.validate import seeds_needed, seeds_per_pair

    table = pd.DataFrame({"predicted": [1.0, -0.5, 2.0, 0.0, 0.3],
                          "ci_low": [0.2, -1.5, 1.9, -0.1, np.nan], "ci_high": [1.2, 0.5, 2.1, 0.1, np.nan],
                          "seeds": [16, 16, 16, 16, 0]})
    need = seeds_needed(table)
    # half widths 0.5, 1.0, 0.1, 0.1; targets 0.5, 0.25, 1.0, 0
    np.testing.assert_array_equal(need[:4], [16, 256, 1, np.inf])
    assert np.isnan(need[4])
    # narrow enough: keeps 16; 256 capped at 64; a zero prediction can never be confirmed: the cap; pending: 16
    np.testing.assert_array_equal(seeds_per_pair(table, 16, 64), [16, 64, 16, 64, 16])
    np.testing.assert_array_equal(seeds_per_pair(table, 16, 1000), [16, 256, 16, 1000, 16])
    shifted = table.assign(ci_low=table["ci_low"] + 3, ci_high=table["ci_high"] + 3)  # other realised values
    np.testing.assert_array_equal(seeds_per_pair(shifted, 16, 64), seeds_per_pair(table, 16, 64))
    np.testing.assert_array_equal(seeds_per_pair(table.assign(seeds=1), 1, 64), [1] * 5)  # one seed: no interval
    # per pair: a pair that has more seeds than it needs keeps them; the cap never shrinks what a pair has
    np.testing.assert_array_equal(seeds_per_pair(table, [32, 16, 40, 16, 16], 64), [32, 64, 40, 64, 16])
    np.testing.assert_array_equal(seeds_per_pair(table, [80, 16, 16, 16, 16], 64), [80, 64, 16, 64, 16])


def test_seeds_by_mask_serves_the_pair_that_needs_most():
    """A training set shared by pairs (the full set; minus 1 in two pairs) gets the larger count; the curated set
    (every harmful example dropped) the most any harmful pair needs; masks in needed_masks' order."""
    from dataspex.design.validation import seeds_by_mask

    pairs = _pairs([("harmful", 1, 1, 2, 0), ("redundant", 1, 1, 3, 1), ("harmful", 2, 0, 4, 2)])
    masks, counts = seeds_by_mask(5, pairs, [10, 40, 20], curated_mask(5, pairs))
    want = {tuple(m): 0 for m in needed_masks(5, pairs)}
    for (i, j), r in (((1, 2), 10), ((1, 3), 40), ((0, 4), 20)):
        for m in variant_masks(5, i, j).values():
            want[tuple(m)] = max(want[tuple(m)], r)
    assert [tuple(m) for m in masks[:-1]] == list(want) and counts[:-1] == list(want.values())
    assert tuple(masks[-1]) == (0, 0, 0, 1, 0) and counts[-1] == 20  # harmful pairs: 10 and 20
    assert counts[0] == 40  # the full set serves the redundant pair's 40
    masks, counts = seeds_by_mask(5, pairs, 16, curated_mask(5, pairs))
    assert set(counts) == {16} and len(masks) == len(want) + 1
    # one harmful pair: the curated set is its minus-both set, listed once
    one = _pairs([("harmful", 1, 1, 2, 0)])
    masks, counts = seeds_by_mask(5, one, [24], curated_mask(5, one))
    assert len(masks) == 4 and counts == [24] * 4


def test_report_names_the_pairs_left_underpowered():
    """The summary says which not-confirmed pairs had too few seeds to tell, and how many seeds grew."""
    from dataspex.report.text import _seeds_text, _underpowered

    part = pd.DataFrame({"i": [1, 2, 3], "j": [4, 5, 6], "verdict": ["not confirmed", "not confirmed", "confirmed"],
                         "seeds": [64, 64, 64], "seeds_needed": [212.0, 30.0, 300.0]})
    assert _underpowered(part) == (" Not confirmed with too few seeds to tell (interval wider than half the "
                                   "predicted interaction): (1, 4) needs about 212 (validate.max_seeds).")
    assert _underpowered(part.iloc[1:]) == "" and _underpowered(part.drop(columns="seeds_needed")) == ""
    grown = ", grown from 16 where an interval was wider than half its predicted interaction"
    assert _seeds_text({"seeds": 64, "first_seeds": 16}) == "64 seeds" + grown
    assert _seeds_text({"seeds": 64, "first_seeds": 16}, pd.Series([16, 64, 0])) == "16-64 seeds" + grown
    assert _seeds_text({"seeds": 16, "first_seeds": 16}) == "16 seeds" == _seeds_text({"seeds": 16})


@pytest.mark.slow
def test_validate_stage_end_to_end(tmp_path):
    """On a synthetic run: retrains through the engine, resumes, leaves `fit` alone, and feeds the report."""
    from dataspex.store import RunStore
    from tests.test_report import REPORT_ARGS, copy_run

    run_dir = copy_run(tmp_path)
    args = ["validate", f"run_dir={run_dir}", "validate.top_k=1", "validate.seeds=2", "validate.max_seeds=2",
            *REPORT_ARGS]
    proc = run_cli(*args)
    assert "growing their training sets" not in proc.stderr  # max_seeds = seeds: no growth
    # 2 pairs: full + 4 singles + 2 doubles; the curated set (the full set minus the one harmful pair) is that
    # pair's minus-both set, trained once per replicate, not twice
    assert "2 pairs by proxyspex -> 7 training sets x 2 seeds = 14 retrains (14 new in the design)" in proc.stderr
    store = RunStore(run_dir)
    design = store.load_design()
    # 48 fit + 16 held-out + 16 replicates, then the 14 validation retrains
    assert (design.roles == "validate").sum() == 14 and design.mask_ids.tolist() == list(range(80 + 14))
    table = pd.read_parquet(os.path.join(run_dir, "validate", "validation.parquet"))
    assert len(table) == 2 and set(table["kind"]) == {"harmful", "redundant"}
    assert table["seeds"].tolist() == [2, 2] and table["verdict"].isin(["confirmed", "not confirmed"]).all()
    assert np.isfinite(table[["realised", "ci_low", "ci_high", "predicted", "realised_removal"]].to_numpy()).all()
    meta = json.load(open(os.path.join(run_dir, "validate", "validation.json")))
    assert meta["level"] == 0.9 and meta["compared_estimand"] == "full"
    harmful = table[table["kind"] == "harmful"].iloc[0]
    cur = meta["curated"]
    assert cur["status"] == "done" and cur["dropped"] == sorted([int(harmful["i"]), int(harmful["j"])])
    assert cur["ci_low"] <= cur["mean_loss_change"] <= cur["ci_high"] and len(cur["per_test_change"]) == 4
    assert set(table["removal"]) <= {"lowered", "raised", "unclear"}
    assert set(table["removal_mean"]) <= {"lowered", "raised", "unclear"}
    assert set(table["removal_elsewhere"]) <= {"lowered", "raised", "unclear"} and (table["n_elsewhere"] == 3).all()
    assert cur["n_elsewhere"] == 3 and cur["tests"] == [int(harmful["test"])]
    # benchmarks/seed_widths.py recomputes the same intervals from the stored replicates, retraining nothing
    seed_widths = load_benchmark("seed_widths")
    rows = seed_widths.widths(run_dir, [2])
    assert [(r["i"], r["j"], r["verdict"]) for r in rows] == list(zip(table["i"], table["j"], table["verdict"]))
    np.testing.assert_allclose([r["half_width"] for r in rows], (table["ci_high"] - table["ci_low"]) / 2)
    with pytest.raises(SystemExit, match="was validated with 2 seeds; --seeds asks for 4"):
        seed_widths.widths(run_dir, [2, 4])

    # the report now has the validation section and the verdicts beside the pairs
    md = open(os.path.join(run_dir, "report", "report.md")).read()
    assert "were retrained (2 seeds; per_mask seed policy" in md
    assert re.search(r"\| harmful \| 1 \| \(\d+, \d+\) \| #\d+ \|", md)
    for kind in ("harmful", "redundant"):  # validate.select=findings: the summary names what it retrained
        assert re.search(rf"[01] of 1 {kind} findings confirmed by retraining \(2 seeds", md)
    assert "Measured: retraining without all 2 examples" in md
    pairs = pd.read_parquet(os.path.join(run_dir, "report", "pairs.parquet"))
    assert pairs["validated_verdict"].notna().sum() == 2
    # the summary keeps what the model predicts and what the retrains confirmed as two lists
    summary = json.load(open(os.path.join(run_dir, "report", "summary.json")))
    assert summary["examples_to_review_predicted"] and "examples_to_review" not in summary
    acted = table[(table["kind"] == "harmful") & (table["removal"] == "lowered") & (table["verdict"] == "confirmed")
                  & (table["removal_mean"] == "lowered")]
    assert summary["examples_to_review_validated"] == sorted({int(x) for x in [*acted["i"], *acted["j"]]})
    assert "Examples to drop or relabel, predicted (top harmful pairs):" in md
    assert "Examples to drop or relabel, validated" in md

    # resumable: a lost result file is retrained alone, with the same numbers (the seed is per mask id)
    files = [f for f in store.result_files() if int(np.load(f)["mask_ids"].min()) >= 80]  # the validation retrains
    lost = np.load(files[0])["mask_ids"].tolist()
    os.unlink(files[0])
    again = run_cli(*args)
    assert f"trained {len(lost)}, reused {14 - len(lost)}" in again.stderr
    pd.testing.assert_frame_equal(pd.read_parquet(os.path.join(run_dir, "validate", "validation.parquet")), table,
                                  atol=1e-5)

    # growth by power: every training set gets the seeds the widest pair needs (from the 2-seed intervals), up
    # to validate.max_seeds; only the new replicates are trained, and the first two are the same retrains
    from dataspex.validate import seeds_needed, seeds_per_pair

    np.testing.assert_array_equal(table["seeds_needed"], seeds_needed(table))
    assert table["seeds_needed"].max() <= 2  # the planted pairs are wide of 0: 2 seeds are enough at 90%...
    same = run_cli(*args[:-len(REPORT_ARGS)], "validate.max_seeds=3", *REPORT_ARGS)
    assert "growing their training sets" not in same.stderr and "trained 0, reused 14" in same.stderr
    # ...and not at 99.99%, where t with 1 degree of freedom is 6366: both pairs' training sets grow to 3 seeds
    grown = run_cli(*args[:-len(REPORT_ARGS)], "validate.max_seeds=3", "validate.level=0.9999", *REPORT_ARGS)
    rows = seed_widths.widths(run_dir, [2, 3])  # at the validation's own level (0.9999) now
    first = pd.DataFrame([r for r in rows if r["seeds"] == 2])
    first = first.assign(ci_low=-first["half_width"], ci_high=first["half_width"], seeds=2)
    np.testing.assert_array_equal(seeds_per_pair(first, 2, 3), [3, 3])
    pair_list = ", ".join(f"({i}, {j}): 2 -> 3" for i, j in zip(table["i"], table["j"]))
    assert ("validate: 2 of 2 pairs have an interval wider than half their predicted interaction: growing their "
            f"training sets to the seeds each needs ({pair_list}; validate.max_seeds=3)") in grown.stderr
    assert grown.stderr.count("growing their training sets") == 1  # at the cap: no second round
    assert "7 training sets x 3 seeds = 21 retrains (7 new in the design)" in grown.stderr
    assert "trained 7, reused 14" in grown.stderr
    table3 = pd.read_parquet(os.path.join(run_dir, "validate", "validation.parquet"))
    meta3 = json.load(open(os.path.join(run_dir, "validate", "validation.json")))
    assert table3["seeds"].tolist() == [3, 3]
    assert (meta3["seeds"], meta3["first_seeds"], meta3["max_seeds"]) == (3, 2, 3)
    # its first 2 replicates are the 2-seed validation's retrains
    np.testing.assert_allclose(first["realised"], table["realised"], atol=1e-6)
    np.testing.assert_allclose([r["realised"] for r in rows if r["seeds"] == 3], table3["realised"], atol=1e-6)

    # `fit` fits on the fit masks only: the validate rows are neither used nor missing
    run_cli("fit", f"run_dir={run_dir}")
    faith = json.load(open(os.path.join(run_dir, "fit", "faithfulness.json")))
    assert faith["proxyspex"]["n_fit_masks"] == 48 and faith["proxyspex"]["n_heldout_masks"] == 16
    assert "0 to train" in run_cli("train", f"run_dir={run_dir}").stderr


def test_validate_refuses_bad_settings(tmp_path):
    from tests.test_report import copy_run

    run_dir = copy_run(tmp_path)
    proc = run_cli("validate", f"run_dir={run_dir}", "validate.seeds=0", check=False)
    assert proc.returncode == 2 and "validate.seeds=0 must be at least 1" in proc.stderr
    proc = run_cli("validate", f"run_dir={run_dir}", "validate.select=best", check=False)
    assert proc.returncode == 2 and "validate.select=best must be findings, top or drilled" in proc.stderr
    proc = run_cli("validate", f"run_dir={run_dir}", "validate.seeds=16", "validate.max_seeds=8", check=False)
    assert proc.returncode == 2 and ("validate.max_seeds=8 is below validate.seeds=16: set it to validate.seeds or "
                                     "more (equal: no extra seeds for wide intervals)") in proc.stderr
    proc = run_cli("validate", f"run_dir={run_dir}", "validate.kinds=[complementary]", check=False)
    assert proc.returncode == 2 and ("validate.kinds has ['complementary'] and validate.select=findings: the report "
                                     "tests only harmful and redundant pairs for findings") in proc.stderr


def _validate_cfg(run_dir: str, *extra: str):
    """The config `dataspex validate run_dir=<run_dir> <extra>` composes (the run's stored overrides first)."""
    from hydra import compose, initialize_config_dir

    from dataspex.cli import config_dir

    stored = json.load(open(os.path.join(run_dir, "overrides.json")))
    with initialize_config_dir(config_dir(), version_base="1.3"):
        return compose("config", overrides=[*stored, f"run_dir={run_dir}", "stage=validate", *extra])


def test_validate_takes_the_reports_findings_not_the_top_of_each_list(tmp_path):
    """validate.select=findings (the default) picks, of each kind, the first top_k findings of the report's own
    lists, in its order: the pairs its actions name. select=top takes the top_k of each ranked list, findings or
    not. On the synthetic run the second redundant pair is listed but no finding (q 0.23), so the two differ."""
    from dataspex.fit.artifacts import choose_estimator, load_fitted
    from dataspex.fit.ranking import select_pairs
    from dataspex.stages.rundir import open_run
    from dataspex.stages.validate import report_findings
    from dataspex.validate import settings
    from tests.test_report import copy_run

    run_dir = copy_run(tmp_path)
    listed = pd.read_parquet(os.path.join(run_dir, "report", "pairs.parquet"))
    cfg = _validate_cfg(run_dir, "validate.top_k=2")
    opts = settings(cfg)
    assert opts["select"] == "findings"
    store, data = open_run(cfg)
    fitted, faithfulness = load_fitted(store)
    ranking = choose_estimator(fitted, faithfulness, cfg.report.estimator)
    got, siblings = report_findings(cfg, store, store.load_design(), data, fitted, faithfulness, ranking, opts)
    expected = pd.concat([listed[(listed["kind"] == k) & listed["finding"]].head(2) for k in ("harmful", "redundant")])
    # every sibling is another finding of a chosen pair at another test example (none on this run's distinct pairs)
    assert set(zip(siblings["i"], siblings["j"])) <= set(zip(got["i"], got["j"]))
    assert not set(zip(siblings["i"], siblings["j"], siblings["test"])) & set(zip(got["i"], got["j"], got["test"]))
    key = ["kind", "rank", "i", "j", "test"]
    assert got[key].values.tolist() == expected[key].values.tolist()
    assert (got.groupby("kind").size() <= 2).all() and len(got) >= 2
    top = select_pairs(fitted[ranking], opts["kinds"], 2, cfg.report.estimand, data.n_test)
    assert sorted(map(tuple, top[["kind", "i", "j"]].values.tolist())) != sorted(
        map(tuple, got[["kind", "i", "j"]].values.tolist()))  # a listed pair that is no finding: only `top` takes it
    findings = listed[listed["finding"]]
    assert set(map(tuple, got[["i", "j"]].values.tolist())) <= set(map(tuple, findings[["i", "j"]].values.tolist()))


def test_claims_of_one_pair_share_its_retrains_and_its_seeds():
    """Two claims of pair (3, 7) (harmful at test 0, redundant at test 4) map to the one row of the pairs that
    retrains it; the pair gets the most seeds any of its claims wants, never fewer than it has."""
    from dataspex.stages.validate import all_claims, claim_pairs, pair_seeds

    pairs = pd.DataFrame({"kind": ["harmful", "redundant"], "rank": [2, 3], "i": [3, 1], "j": [7, 2], "test": [0, 5]})
    siblings = pd.DataFrame({"kind": ["redundant"], "rank": [1], "i": [3], "j": [7], "test": [4]})
    claims = all_claims(pairs, siblings, ["harmful", "redundant"])
    assert claims[["kind", "rank", "test"]].values.tolist() == [["harmful", 2, 0], ["redundant", 1, 4],
                                                                ["redundant", 3, 5]]  # the report's order
    assert all_claims(pairs, pd.DataFrame(), ["harmful", "redundant"]) is pairs
    pair_of = claim_pairs(claims, pairs)
    assert pair_of.tolist() == [0, 0, 1]
    assert pair_seeds(pair_of, np.array([16, 40, 16]), np.array([16, 16])).tolist() == [40, 16]
    assert pair_seeds(pair_of, np.array([8, 12, 30]), np.array([16, 16])).tolist() == [16, 30]
    with pytest.raises(KeyError):
        claim_pairs(pd.DataFrame({"i": [0], "j": [9], "test": [1]}), pairs)


def test_validate_with_no_finding_retrains_nothing(tmp_path):
    """When no listed pair is a finding the report names no action, so validate says so and trains nothing."""
    from dataspex.store import RunStore
    from tests.test_report import copy_run

    run_dir = copy_run(tmp_path)
    before = len(RunStore(run_dir).load_design())
    proc = run_cli("validate", f"run_dir={run_dir}", "report.q_max=1e-12", "validate.seeds=2",
                   "report.curve_fractions=[0.5]")
    assert ("validate: nothing to validate: none of the report's listed harmful or redundant pairs is a "
            "finding") in proc.stderr
    assert len(RunStore(run_dir).load_design()) == before and not os.path.exists(os.path.join(run_dir, "validate"))
