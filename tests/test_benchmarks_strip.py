"""benchmarks/strip_validation.py: a run copied without its validate retrains, for a second validation."""

from __future__ import annotations

import os

import numpy as np
import pytest

from dataspex.design.validation import ROLE, extend_design, needed_masks
from dataspex.store import RunStore
from tests.test_validate import _pairs
from tests.benchmark_scripts import load_benchmark

strip_validation = load_benchmark("strip_validation")


def _validated(tmp_path):
    """The synthetic run with 2 replicates of one pair's four training sets appended as validate rows, and a
    result file holding them."""
    from tests.test_report import copy_run

    run_dir = copy_run(tmp_path)
    store = RunStore(run_dir)
    design = store.load_design()
    masks = needed_masks(design.n_units, _pairs([("harmful", 1, 0, 1, 0)]))
    design, added = extend_design(design, masks, 2)
    store.save_design(design)
    rows = np.flatnonzero(design.roles == ROLE)
    n_test = store.load_results().losses.shape[1]
    store.write_results(design.mask_ids[rows], design.masks[rows], np.zeros((added, n_test)),
                        np.zeros((added, n_test)))
    return run_dir, design, rows


def test_strip_leaves_out_the_validate_rows_and_their_results(tmp_path):
    run_dir, design, rows = _validated(tmp_path)
    before = RunStore(run_dir).result_files()
    out = str(tmp_path / "fresh")
    got = strip_validation.strip(run_dir, out)
    assert got == {"kept_rows": len(design) - len(rows), "dropped_rows": len(rows), "kept_files": len(before) - 1,
                   "dropped_files": 1}
    copy = RunStore(out)
    stripped = copy.load_design()
    assert (stripped.roles != ROLE).all() and ROLE not in stripped.meta
    np.testing.assert_array_equal(stripped.mask_ids, np.delete(design.mask_ids, rows))
    np.testing.assert_array_equal(stripped.masks, np.delete(design.masks, rows, axis=0))
    assert sorted(os.path.basename(p) for p in copy.result_files()) == sorted(
        os.path.basename(p) for p in before if int(np.load(p)["mask_ids"].min()) < design.mask_ids[rows].min())
    assert len(copy.load_results(stripped)) == len(stripped)  # every kept row has its result, nothing more
    assert os.path.exists(os.path.join(out, "fit")) and os.path.exists(os.path.join(out, "config.yaml"))
    with pytest.raises(SystemExit, match="exists; choose a new directory"):
        strip_validation.strip(run_dir, out)

    # the same training sets appended in the same order take the removed rows' ids: every retrain repeats
    masks = needed_masks(design.n_units, _pairs([("harmful", 1, 0, 1, 0)]))
    copy.save_design(extend_design(stripped, masks, 2)[0])
    assert strip_validation.overlap(run_dir, out) == (len(rows), len(rows))
    copy.save_design(extend_design(stripped, masks[::-1], 2)[0])  # another order: ids land on other sets
    assert strip_validation.overlap(run_dir, out) == (0, len(rows))


def test_strip_refuses_a_result_file_that_mixes_validate_and_study_rows(tmp_path):
    run_dir, design, rows = _validated(tmp_path)
    store = RunStore(run_dir)
    mixed = np.concatenate([rows[:1], np.flatnonzero(design.roles != ROLE)[:1]])
    n_test = store.load_results().losses.shape[1]
    store.write_results(design.mask_ids[mixed], design.masks[mixed], np.zeros((2, n_test)), np.zeros((2, n_test)))
    with pytest.raises(SystemExit, match="holds validate rows and other rows; not splitting it"):
        strip_validation.strip(run_dir, str(tmp_path / "fresh"))
