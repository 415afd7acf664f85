"""benchmarks/kept_fractions.py: a local pair model whose pair terms depend on the kept fraction."""

from __future__ import annotations

import numpy as np
import pytest

from tests.benchmark_scripts import load_benchmark

kept = load_benchmark("kept_fractions")


def truth(x: np.ndarray) -> float:
    """1.0 s_0 + 0.8 s_1 + s_0 s_1 (0.5 + 2 (kept fraction - 0.7)), s_i = 1 - 2 x_i: a pair whose interaction
    grows with the training-set size."""
    s = 1.0 - 2.0 * x
    return 1.0 * s[0] + 0.8 * s[1] + s[0] * s[1] * (0.5 + 2.0 * (x.mean() - 0.7))


def test_the_size_term_recovers_a_size_dependent_pair_at_the_full_set():
    n = 8
    rng = np.random.default_rng(0)
    masks = np.vstack([rng.random((300, n)) < 0.5, rng.random((300, n)) < 0.9]).astype(np.float64)
    y = np.array([truth(x) for x in masks])
    full = np.ones(n)
    drop = [full.copy() for _ in range(3)]
    drop[0][0] = drop[1][1] = 0.0
    drop[2][[0, 1]] = 0.0
    exact = truth(full) - truth(drop[0]) - truth(drop[1]) + truth(drop[2])  # 3.4: brute force over the four sets
    assert exact == pytest.approx(3.4)
    sized = kept.LocalPairModel(n_top=8, centre=0.7).fit(masks, y)
    assert sized.full_interaction(0, 1) == pytest.approx(exact, rel=0.03)  # the lasso's shrinkage only
    assert sized.full_interaction(1, 0) == sized.full_interaction(0, 1)
    assert sized.full_interaction(5, 6) == 0.0  # not screened: no prediction
    # without the size term the pair gets its average over the design's kept fractions: far from the full set
    flat = kept.LocalPairModel(n_top=8).fit(masks, y)
    assert abs(flat.full_interaction(0, 1) - exact) > 2.0
    assert kept.r2(y, sized.predict(masks)) > 0.999 > kept.r2(y, flat.predict(masks))


def test_runs_that_trained_other_things_are_refused():
    a = {"path": "A", "kind": "random", "fingerprint": {"lora": 1, "train": 2}}
    b = {"path": "B", "kind": "random", "fingerprint": {"lora": 1, "train": 3}}
    with pytest.raises(SystemExit, match=r"B trained other things than A \(fingerprint differs in: train\)"):
        kept.check_same_training([a, b])
    with pytest.raises(SystemExit, match="B has a spex design"):
        kept.check_same_training([a, dict(a, path="B", kind="spex")])
    kept.check_same_training([a, dict(a, path="C")])


def test_the_equal_budget_variant_takes_half_of_each_run():
    runs = [{"p": 0.5, "roles": np.array(["fit"] * 6 + ["heldout"] * 2)},
            {"p": 0.9, "roles": np.array(["fit"] * 4 + ["heldout"])}]
    plan = kept.variants(runs, 0.7)
    assert [len(r) for r in plan["p = 0.5"][0]] == [6, 0] and [len(r) for r in plan["p = 0.9"][0]] == [0, 4]
    assert [r.tolist() for r in plan["half each + size (one run's budget)"][0]] == [[0, 1, 2], [0, 1]]
    assert plan["pooled + size"][1] == 0.7 and plan["pooled"][1] is None
