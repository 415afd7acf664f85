"""A drill-down over examples (``dataspex drill`` on a run over examples): each drilled pair's interaction at the
full training set, from random retrains of the pairs' members with every other example kept."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest

from dataspex.core.errors import DataspexError
from dataspex.fit.significance import bh_qvalues
from dataspex.validate.fullset import fullset_table, load_fullset, pair_at_full_set, save_fullset


def _factorial(M: int) -> np.ndarray:
    """Every 0/1 mask over M members (2^M, M)."""
    return np.array(list(itertools.product([0, 1], repeat=M)), dtype=np.uint8)


def _set_function(z: np.ndarray) -> np.ndarray:
    """A known function of 5 members: main effects, a pair (0, 1) with coefficient -0.7 and a pair (2, 4) with
    +0.4, and a triple (1, 2, 3) that makes the pair (1, 2)'s second difference depend on member 3."""
    z = z.astype(np.float64)
    return (0.3 + z @ np.array([0.5, -0.2, 0.1, 0.0, 0.25]) - 0.7 * z[:, 0] * z[:, 1] + 0.4 * z[:, 2] * z[:, 4]
            + 0.6 * z[:, 1] * z[:, 2] * z[:, 3])


def _brute_second_difference(a: int, b: int, context: np.ndarray) -> float:
    """f(a, b kept) - f(a only) - f(b only) + f(neither), the other members as in ``context`` (M,)."""
    rows = []
    for za, zb in ((1, 1), (1, 0), (0, 1), (0, 0)):
        z = context.copy()
        z[a], z[b] = za, zb
        rows.append(z)
    f = _set_function(np.array(rows))
    return float(f[0] - f[1] - f[2] + f[3])


def test_a_pair_without_higher_order_terms_gets_its_exact_second_difference():
    """Pairs (0, 1) and (2, 4) are in no triple: over every mask of 5 members the fit's pair coefficient is their
    second difference at the full set (every other member kept), exactly, and the fit leaves no noise."""
    z = _factorial(5)
    y = _set_function(z)
    full = np.ones(5, dtype=np.uint8)
    for a, b in ((0, 1), (2, 4)):
        c, se, dof, used = pair_at_full_set(z, y, a, b)
        assert c == pytest.approx(_brute_second_difference(a, b, full), abs=1e-12)
        assert (dof, used) == (32 - 7, 32)
    assert pair_at_full_set(z, y, 0, 1)[0] == pytest.approx(-0.7, abs=1e-12)


def test_over_a_full_factorial_the_fit_equals_the_four_cell_means_and_its_error_is_the_ols_one():
    """Pair (1, 2) is in a triple with member 3: its second difference is -0.2 + 0.6 = 0.4 with member 3 kept and
    -0.2 without (no pair term of its own here: 0 + 0.6 z3). Over the full factorial the pair coefficient equals
    the four-cell contrast mean11 - mean10 - mean01 + mean00 (the average over the other members' states,
    0.3), and with noise its standard error is 4 sigma_hat / sqrt(2^M) from the residuals of the same fit."""
    z = _factorial(5)
    y = _set_function(z) + np.random.default_rng(0).normal(0, 0.3, len(z))
    c, se, dof, _ = pair_at_full_set(z, y, 1, 2)
    cells = {(u, v): y[(z[:, 1] == u) & (z[:, 2] == v)].mean() for u in (0, 1) for v in (0, 1)}
    assert c == pytest.approx(cells[1, 1] - cells[1, 0] - cells[0, 1] + cells[0, 0], abs=1e-12)
    X = np.column_stack([np.ones(len(z)), z, z[:, 1] * z[:, 2]])
    rss = float(np.linalg.lstsq(X, y, rcond=None)[1][0])
    assert se == pytest.approx(4 * np.sqrt(rss / dof) / np.sqrt(len(z)), rel=1e-10)
    clean = _set_function(z)
    assert pair_at_full_set(z, clean, 1, 2)[0] == pytest.approx(
        np.mean([_brute_second_difference(1, 2, ctx) for ctx in z]), abs=1e-12)


def test_a_design_that_cannot_separate_the_terms_is_refused():
    z = _factorial(3)[:5]  # 5 masks for an intercept, 3 main effects and the pair: no degree of freedom left
    with pytest.raises(DataspexError, match="cannot separate the pair's interaction from the members' own effects"):
        pair_at_full_set(z, np.arange(5.0), 0, 1)
    kept = np.ones((40, 3), dtype=np.uint8)  # a member never dropped
    with pytest.raises(DataspexError, match="retrain more masks"):
        pair_at_full_set(kept, np.arange(40.0), 0, 1)


def test_a_pair_inside_a_redundant_group_is_measured_with_the_rest_of_the_group_kept(tmp_path):
    """Members 0, 1, 2 each keep a test loss low (it is 1 only when all three are dropped), member 3 acts alone.
    At the full set (2 kept) the pair (0, 1) has second difference 0; averaged over member 2 kept at random it is
    0.5. Keeping the neighbour gives the full-set value exactly; too few retrains that keep it are refused."""
    z = _factorial(5)
    y = (z[:, :3].sum(axis=1) == 0).astype(np.float64) + 0.2 * z[:, 3]
    assert pair_at_full_set(z, y, 0, 1)[0] == pytest.approx(0.5, abs=1e-12)
    c, _, dof, used = pair_at_full_set(z, y, 0, 1, kept=[2])
    assert c == pytest.approx(0.0, abs=1e-12) and used == 16 and dof == 16 - 6
    rows = np.ones((6, 5), dtype=np.uint8)
    rows[:, :2] = [[0, 0], [0, 1], [1, 0], [1, 1], [0, 1], [1, 0]]
    with pytest.raises(DataspexError, match="6 retrains over 4 members cannot separate"):
        pair_at_full_set(rows, np.arange(6.0), 0, 1, kept=[2])
    pairs = _pairs([("redundant", 1, 10, 11, 0, 0.5), ("redundant", 2, 11, 12, 0, 0.5)])
    Y = np.column_stack([y, y])
    table = fullset_table(pairs, [0.5, 0.5], z, Y, [10, 11, 12, 13, 14], q_max=0.1)
    assert table["neighbours"].tolist() == [[12], [10]] and np.allclose(table["estimate"], 0.0, atol=1e-12)
    few = fullset_table(pairs, [0.5, 0.5], z[:6], Y[:6], [10, 11, 12, 13, 14], q_max=0.1)
    assert few["estimate"].isna().all() and not few["holds"].any() and few["q_value"].isna().all()
    assert few["note"].str.contains("cannot separate the pair's interaction").all()
    save_fullset(str(tmp_path), few, {})  # NaN is written as null (strict JSON) and read back as NaN
    assert "NaN" not in open(tmp_path / "fullset.json").read()
    pd.testing.assert_frame_equal(load_fullset(str(tmp_path))[0], few)
    exact = fullset_table(pairs.iloc[:1], [-0.5], z, np.column_stack([-(z[:, 0] * z[:, 1]).astype(float)] * 2),
                          [10, 11, 12, 13, 14], q_max=0.1)  # no noise: an exact fit on the predicted side holds
    assert exact["se"].iloc[0] == pytest.approx(0.0, abs=1e-9) and exact["holds"].iloc[0]


def _pairs(rows) -> pd.DataFrame:
    return pd.DataFrame([{"kind": k, "rank": r, "i": i, "j": j, "test": t, "score": s, "estimand": "uniform",
                          "pattern": "masking"} for k, r, i, j, t, s in rows])


def test_fullset_table_tests_each_pair_on_its_predicted_side_with_bh_over_the_pairs(tmp_path):
    """Members are training examples 7, 3, 12, 9 (column order of the masks). Test 0 carries a pair (7, 3) of -1,
    test 1 a pair (12, 9) of +1; a pair predicted on the wrong side gets p near 1 and does not hold."""
    rng = np.random.default_rng(1)
    z = rng.integers(0, 2, (400, 4)).astype(np.uint8)
    Y = np.column_stack([-1.0 * z[:, 0] * z[:, 1], 1.0 * z[:, 2] * z[:, 3]]) + rng.normal(0, 0.5, (400, 2))
    pairs = _pairs([("harmful", 1, 7, 3, 0, -0.9), ("redundant", 1, 12, 9, 1, 0.8), ("harmful", 2, 3, 12, 1, 0.5)])
    predicted = [-0.8, 0.9, -0.4]  # the third is predicted below 0 where the truth is 0
    table = fullset_table(pairs, predicted, z, Y, [7, 3, 12, 9], q_max=0.1)
    assert table[["kind", "rank", "i", "j", "test"]].values.tolist() == pairs[["kind", "rank", "i", "j",
                                                                              "test"]].values.tolist()
    # (12, 9) and (3, 12) share test 1: each is estimated on the retrains that keep the other's second example
    assert table["neighbours"].tolist() == [[], [3], [9]]
    for row, (a, b, t, kept) in zip(table.itertuples(), [(0, 1, 0, []), (2, 3, 1, [1]), (1, 2, 1, [3])]):
        assert (row.estimate, row.se, row.dof, row.masks) == pytest.approx(pair_at_full_set(z, Y[:, t], a, b, kept))
    assert table["masks"].iloc[0] == 400 and 150 < table["masks"].iloc[1] < 250 and (table["note"] == "").all()
    assert table["estimate"].iloc[0] == pytest.approx(-1.0, abs=0.25)
    assert table["estimate"].iloc[1] == pytest.approx(1.0, abs=0.25)
    np.testing.assert_allclose(table["q_value"], bh_qvalues(table["p_value"].to_numpy()))
    assert table["holds"].tolist() == [True, True, False] and table["p_value"].iloc[0] < 1e-6
    flipped = fullset_table(pairs.iloc[:1], [0.8], z, Y, [7, 3, 12, 9], q_max=0.1)  # the wrong side: p near 1
    assert flipped["p_value"].iloc[0] > 1 - 1e-6 and not flipped["holds"].iloc[0]
    with pytest.raises(DataspexError, match=r"pair \(7, 5\) or its neighbours \[\] are not among the drill-down's"):
        fullset_table(_pairs([("harmful", 1, 7, 5, 0, -1.0)]), [-1.0], z, Y, [7, 3, 12, 9], q_max=0.1)

    save_fullset(str(tmp_path), table, {"ranking": "quadratic", "q_max": 0.1})
    back, meta = load_fullset(str(tmp_path))
    pd.testing.assert_frame_equal(back, table)
    assert meta == {"ranking": "quadratic", "q_max": 0.1}
    assert load_fullset(str(tmp_path / "none")) == (None, None)


@pytest.mark.slow
def test_drill_on_a_run_over_examples_then_validate_what_holds(tmp_path):
    """On the synthetic run (real fine-tunes from here on): `dataspex drill` retrains random subsets of the top
    pair of each kind's members with every other example kept, writes each pair's full-set estimate, and
    `validate.select=drilled` retrains exactly the pairs that hold there; a drill-down of an earlier fit, or
    none, is refused."""
    import json
    import os

    from dataspex.fit.artifacts import fit_stamp
    from dataspex.store import RunStore
    from tests.conftest import run_cli
    from tests.test_report import REPORT_ARGS, copy_run

    run_dir = copy_run(tmp_path)
    no_drill = run_cli("validate", f"run_dir={run_dir}", "validate.select=drilled", *REPORT_ARGS, check=False)
    assert no_drill.returncode == 2 and "has none: run `dataspex drill run_dir=" in no_drill.stderr
    drill = ["drill.top_k=1", "drill.m=24", "drill.heldout=4", "drill.replicates=0", *REPORT_ARGS]
    proc = run_cli("drill", f"run_dir={run_dir}", *drill)
    child = RunStore(os.path.join(run_dir, "drill"))
    design = child.load_design()
    table, meta = load_fullset(child.run_dir)
    pairs = pd.read_parquet(os.path.join(run_dir, "report", "pairs.parquet"))
    top = pairs[pairs["rank"] == 1]
    assert table[["kind", "i", "j", "test"]].values.tolist() == top[["kind", "i", "j", "test"]].values.tolist()
    members = sorted({int(x) for x in [*top["i"], *top["j"]]})
    assert meta["members"] == members and design.units.names == [f"#{x}" for x in members]
    assert meta["n_masks"] == len(design) == 28 and meta["fit_stamp"] == fit_stamp(RunStore(run_dir))
    expanded = design.example_masks(np.arange(len(design)))
    others = [x for x in range(design.n_train) if x not in members]
    assert expanded[:, others].all() and not expanded[:, members].all()
    results = child.load_results(design)
    for row in table.itertuples():  # each estimate is the pair's own fit over the drill-down's retrains
        a, b = members.index(row.i), members.index(row.j)
        kept = [members.index(x) for x in row.neighbours]
        assert (row.estimate, row.se) == pytest.approx(pair_at_full_set(results.masks, results.losses[:, row.test],
                                                                        a, b, kept)[:2])
    held = int(table["holds"].sum())
    assert f"drill: {held} of {len(table)} drilled pairs hold at the full training set" in proc.stderr
    assert not os.path.exists(child.path("fit"))  # over examples the drill-down answers the pairs, not a ranking
    md = open(os.path.join(run_dir, "report", "report.md")).read()
    assert "## At the full training set (drill-down)" in md and f"{held} of {len(table)} drilled pairs hold" in md
    page = open(os.path.join(run_dir, "report", "report.html")).read()
    assert "At the full training set (drill-down)" in page
    summary = json.load(open(os.path.join(run_dir, "report", "summary.json")))
    assert summary["full_set"]["pairs"] == len(table) and summary["full_set"]["stale"] is False
    assert summary["full_set"]["hold"] == [[int(r.i), int(r.j)] for r in table.itertuples() if r.holds]

    # which pairs validate takes: the ones that hold, the first validate.top_k of each kind; set here by hand
    table["holds"] = [True, False]
    save_fullset(child.run_dir, table, meta)
    args = ["validate", f"run_dir={run_dir}", "validate.select=drilled", "validate.top_k=1", "validate.seeds=2",
            "validate.max_seeds=2", *REPORT_ARGS]
    run_cli(*args)
    validated = pd.read_parquet(os.path.join(run_dir, "validate", "validation.parquet"))
    assert validated[["kind", "i", "j", "test"]].values.tolist() == table[["kind", "i", "j", "test"]].values[
        :1].tolist()
    assert json.load(open(os.path.join(run_dir, "validate", "validation.json")))["select"] == "drilled"
    # benchmarks/fullset_agreement.py reads the same numbers back from the stores, retraining nothing
    from tests.benchmark_scripts import load_benchmark

    rows = load_benchmark("fullset_agreement").compare(run_dir)
    assert [(r["i"], r["j"], r["test"]) for r in rows] == [tuple(validated[["i", "j", "test"]].values[0])]
    assert rows[0]["realised"]["value"] == pytest.approx(validated["realised"].iloc[0])
    assert rows[0]["realised"]["se"] == pytest.approx(validated["se"].iloc[0])
    assert rows[0]["kept"] == pytest.approx((table["estimate"].iloc[0], table["se"].iloc[0]))
    assert rows[0]["confirmed"] == (validated["verdict"].iloc[0] == "confirmed")
    assert rows[0]["others"] == len(meta["members"]) - 2 and 0 <= rows[0]["others_in_top"] <= rows[0]["others"]
    save_fullset(child.run_dir, table, dict(meta, fit_stamp="another fit"))
    stale = run_cli(*args, check=False)
    assert stale.returncode == 2 and "drilled the pairs of an earlier fit" in stale.stderr



def test_fullset_agreement_main_effects_are_least_squares_on_the_fit_retrains_of_the_modelled_output():
    """benchmarks/fullset_agreement.py: an output exactly additive in the mask on the fit rows gives back its
    effects (on the loss, and with the sign of the modelled margin); held-out rows, here not additive, are left
    out."""
    from types import SimpleNamespace

    from dataspex.core.outputs import modelled_output
    from tests.benchmark_scripts import load_benchmark

    rng = np.random.default_rng(0)
    masks = rng.integers(0, 2, (40, 5)).astype(np.uint8)
    effects = rng.normal(size=(5, 3))
    losses = 0.7 + masks @ effects
    fit = np.arange(40) < 30
    losses[~fit] += rng.normal(size=(10, 3))  # held-out rows: not additive
    margins = -2 * losses
    results = SimpleNamespace(masks=masks, keep=lambda design, kind: fit if kind == "fit" else ~fit,
                              outputs=lambda kind: modelled_output(kind, losses, margins))
    main_effects = load_benchmark("fullset_agreement").main_effects
    np.testing.assert_allclose(main_effects(results, None, "loss"), effects, atol=1e-10)
    np.testing.assert_allclose(main_effects(results, None, "margin"), 2 * effects, atol=1e-10)
