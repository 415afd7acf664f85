"""Growing a random design in place: a larger ``design.m`` on a run adds fit masks under new ids, keeps every
retrain the run has, and only the new masks train (:func:`dataspex.design.random.grow_random`)."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from omegaconf import OmegaConf

from dataspex import load_run
from dataspex.core.errors import DataspexError
from dataspex.design import make_design
from dataspex.design.random import GROWTH_STREAM, grow_random, grown_masks, random_masks
from dataspex.design.replicate import extend_replicates
from dataspex.store import RunStore
from tests.conftest import TINY, run_cli


def _design(m=6, heldout=4, p=0.5, seed=0, n=10):
    cfg = OmegaConf.create({"kind": "random", "m": m, "heldout": heldout, "p": p, "seed": seed})
    return make_design(cfg, n)


def test_grown_masks_are_one_sequence_of_their_own_generator():
    # mask k of the growth sequence is row k of the generator seeded by (seed, GROWTH_STREAM): the same whether
    # taken in one block or in steps
    whole = grown_masks(12, 0, 9, 0.3, seed=4)
    rng = np.random.default_rng([4, GROWTH_STREAM])
    np.testing.assert_array_equal(whole, random_masks(12, 9, 0.3, rng))
    np.testing.assert_array_equal(np.vstack([grown_masks(12, 0, 2, 0.3, 4), grown_masks(12, 2, 7, 0.3, 4)]), whole)
    assert not np.array_equal(grown_masks(12, 0, 9, 0.3, seed=5), whole)


def test_growth_appends_fit_rows_and_keeps_every_row_and_id():
    base, _ = extend_replicates(_design(), 2)  # rows a later stage appended stay where they are
    grown = grow_random(base, 9)
    assert len(grown) == len(base) + 3
    np.testing.assert_array_equal(grown.masks[: len(base)], base.masks)
    np.testing.assert_array_equal(grown.mask_ids[: len(base)], base.mask_ids)
    assert grown.mask_ids[len(base):].tolist() == [12, 13, 14]
    assert grown.roles[len(base):].tolist() == ["fit"] * 3 and len(grown.rows("fit")) == 9
    np.testing.assert_array_equal(grown.masks[len(base):], grown_masks(10, 0, 3, 0.5, 0))
    assert grown.meta["m"] == 9 and grown.meta["grown"]["from"] == 6 and base.meta["m"] == 6
    # in two steps: the same masks, and growth still counts from the design's own 6
    twice = grow_random(grow_random(base, 7), 9)
    np.testing.assert_array_equal(twice.masks, grown.masks)
    assert twice.meta == grown.meta
    assert grow_random(grown, 9) is None


def test_growth_refuses_a_smaller_m_and_other_design_kinds():
    with pytest.raises(DataspexError, match=r"^run X has 6 fit masks, design.m=5 would drop some: a design never "
                                            r"shrinks \(use a new run_dir for a smaller design\)$"):
        grow_random(_design(), 5, where="run X")
    spex = _design()
    spex.meta["kind"] = "spex"
    with pytest.raises(DataspexError, match="has a spex design: only a random design grows"):
        grow_random(spex, 9)


@pytest.mark.slow
def test_a_larger_design_m_grows_the_run_and_trains_only_the_new_masks(tmp_path):
    run_dir = str(tmp_path / "run")
    run_cli("run", f"run_dir={run_dir}", *[o for o in TINY if not o.startswith("design.replicates")],
            "design.replicates=2")
    store = RunStore(run_dir)
    before = store.load_design()
    results_dir = store.path("results")
    files = {f: os.stat(os.path.join(results_dir, f)).st_mtime_ns for f in os.listdir(results_dir)}
    proc = run_cli("run", f"run_dir={run_dir}", "design.m=10")
    assert (f"design: grew the random design of {run_dir} from 6 to 10 fit masks: 4 new masks to train, the 12 "
            "retrains it has are kept") in proc.stderr
    assert "12 already done, 4 to train" in proc.stderr
    for f, mtime in files.items():  # the pilot's result files are untouched
        assert os.stat(os.path.join(results_dir, f)).st_mtime_ns == mtime
    after = store.load_design()
    np.testing.assert_array_equal(after.masks[: len(before)], before.masks)
    assert len(after.rows("fit")) == 10 and len(store.load_results(after).mask_ids) == len(after) == 16
    faithfulness = json.load(open(store.path("fit", "faithfulness.json")))
    assert all(v["n_fit_masks"] == 10 for v in faithfulness.values())
    # later stages replay the grown count, and a second `design` with it finds the grown design
    assert "design.m=10" in json.load(open(store.path("overrides.json")))
    assert load_run(run_dir).config.design.m == 10  # the run's config.yaml too
    assert "already has this design (14 masks)" in run_cli("design", f"run_dir={run_dir}").stderr
    assert "has 16 masks, 16 already done, 0 to train" in run_cli("train", f"run_dir={run_dir}").stderr


def test_design_warns_before_training_when_the_kept_fraction_starves_the_pair_tests(tmp_path):
    """At design.p=0.9 a pair's neither-kept cell gets ~1% of the held-out masks: the design stage says so (with the
    expected count) before any retraining; at p = 0.5 it does not (the same run directory layout, real CLI)."""
    tiny = [a for a in TINY if not a.startswith(("design.p=", "design.heldout="))]
    starved = run_cli("design", f"run_dir={tmp_path / 'p09'}", *tiny, "design.p=0.9", "design.heldout=40").stderr
    assert ("design: at design.p=0.9 a pair's sparsest cell (neither or both of its examples kept) gets about 0.4 "
            "of the 40 held-out masks (a quarter at p=0.5), so the report's pair tests have less power") in starved
    balanced = run_cli("design", f"run_dir={tmp_path / 'p05'}", *tiny, "design.p=0.5", "design.heldout=40").stderr
    assert "sparsest cell" not in balanced and "design: " in balanced
