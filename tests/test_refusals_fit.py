"""A fit set is one whole fit: a killed refit never leaves fit/ mixed, and report / validate / load_run refuse a set
that mixes fits, outputs or designs, with one line naming the fix (issue: nothing silent).

The runs are copies of the synthetic run of tests/test_report.py (real run directories, results from a known
set function, no fine-tunes).
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import run_cli
from tests.test_report import REPORT_ARGS, copy_run, synthetic_run, write_validation

pytestmark = pytest.mark.slow


def _fit_files(run_dir: str) -> dict:
    """{file name: sha256} of everything in fit/."""
    out = {}
    for path in sorted(glob.glob(os.path.join(run_dir, "fit", "*"))):
        with open(path, "rb") as fh:
            out[os.path.basename(path)] = hashlib.sha256(fh.read()).hexdigest()
    return out


def _faith(run_dir: str) -> dict:
    with open(os.path.join(run_dir, "fit", "faithfulness.json")) as fh:
        return json.load(fh)


def _killed(code: str, *args: str) -> subprocess.CompletedProcess:
    """``dataspex <args>`` in a fresh interpreter after ``code`` (which kills it, os._exit, at some point)."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HYDRA_FULL_ERROR="0")
    script = code + f"\nfrom dataspex.cli import main\nmain({list(args)!r})\n"
    return subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=600)


# Dies (like SIGKILL: no cleanup, no finally) when the second estimator's file is about to be written.
KILL_AT_SECOND_SAVE = """
import os
from dataspex.fit.estimators import InteractionResult
_save, _calls = InteractionResult.save, []
def save(self, path):
    _calls.append(path)
    if len(_calls) == 2:
        os._exit(137)
    _save(self, path)
InteractionResult.save = save
"""

# Dies between the two renames that swap the new set in (fit/ -> .fit-old-*, then .fit-new-* -> fit/).
KILL_BETWEEN_RENAMES = """
import os
_rename, _calls = os.rename, []
def rename(a, b, *args, **kw):
    _calls.append(a)
    if len(_calls) == 2:
        os._exit(137)
    _rename(a, b, *args, **kw)
os.rename = rename
"""


def _refused(proc, run_dir: str, *phrases: str) -> None:
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert f"dataspex fit run_dir={run_dir}" in proc.stderr, proc.stderr[-3000:]
    for phrase in phrases:
        assert phrase in proc.stderr, (phrase, proc.stderr[-3000:])


def _legacy(run_dir: str) -> None:
    """Make fit/ look as a dataspex before fit stamps wrote it: plain InteractionResult files, no records."""
    from dataspex.estimators import InteractionResult

    for path in glob.glob(os.path.join(run_dir, "fit", "*.npz")):
        InteractionResult.load(path).save(path)
    faith = {name: {k: v for k, v in row.items() if k not in ("fit_stamp", "design")}
             for name, row in _faith(run_dir).items()}
    with open(os.path.join(run_dir, "fit", "faithfulness.json"), "w") as fh:
        json.dump(faith, fh)


@pytest.fixture(scope="module")
def margin_run(tmp_path_factory):
    """A copy of the synthetic run refitted on the margin (a second, different fit set of the same run)."""
    run_dir = str(tmp_path_factory.mktemp("margin") / "run")
    shutil.copytree(synthetic_run(), run_dir)
    run_cli("fit", f"run_dir={run_dir}", "fit.output=margin")
    return run_dir


# ------------------------------------------------------------------------------------ what a fit set records

def test_fit_set_records_what_it_models(margin_run):
    from dataspex.fit.artifacts import design_record
    from dataspex.store import RunStore

    loss, margin = _faith(synthetic_run()), _faith(margin_run)
    design = design_record(RunStore(synthetic_run()).load_design())
    assert design["kind"] == "random" and design["n_masks"] == 64 and design["n_train"] == 10
    for table, output in ((loss, "loss"), (margin, "margin")):
        assert {row["output"] for row in table.values()} == {output}
        assert len({row["fit_stamp"] for row in table.values()}) == 1  # one stamp for the whole set
        assert all(row["design"] == design for row in table.values())
    assert next(iter(loss.values()))["fit_stamp"] != next(iter(margin.values()))["fit_stamp"]
    # each estimator's file carries the same record, beside the InteractionResult (which loads as before)
    with np.load(os.path.join(margin_run, "fit", "linear.npz")) as z:
        record = json.loads(str(z["dataspex_fit"]))
    assert record == {k: margin["linear"][k] for k in ("fit_stamp", "output", "design")}
    # no temporary set is left beside fit/
    assert not glob.glob(os.path.join(margin_run, ".fit-*"))


def test_identical_refit_keeps_the_stamp_and_the_curve_cache(tmp_path):
    run_dir = copy_run(tmp_path)
    before = _faith(run_dir)
    curve = _fit_files(run_dir)["faithfulness_curve.json"]
    run_cli("fit", f"run_dir={run_dir}")
    after = _faith(run_dir)
    assert {n: r["fit_stamp"] for n, r in after.items()} == {n: r["fit_stamp"] for n, r in before.items()}
    assert _fit_files(run_dir)["faithfulness_curve.json"] == curve  # still this set's: kept
    assert "faithfulness curve" not in run_cli("report", f"run_dir={run_dir}", *REPORT_ARGS).stderr  # no refits


def test_refit_on_margin_replaces_the_set_and_rekeys_the_curve(tmp_path):
    from dataspex.fit.artifacts import fit_stamp
    from dataspex.store import RunStore
    from dataspex.validate import load_validation

    run_dir = copy_run(tmp_path)
    store = RunStore(run_dir)
    write_validation(run_dir, {})
    assert load_validation(store)[1]["stale"] is False
    run_cli("fit", f"run_dir={run_dir}", "fit.output=margin")
    assert set(_fit_files(run_dir)) == {"faithfulness.json", "linear.npz", "quadratic.npz",
                                        "proxyspex.npz"}  # old cache gone
    assert load_validation(store)[1]["stale"] is True
    run_cli("report", f"run_dir={run_dir}", *REPORT_ARGS)
    with open(store.path("fit", "faithfulness_curve.json")) as fh:
        assert json.load(fh)["stamp"] == fit_stamp(store) == _faith(run_dir)["linear"]["fit_stamp"]


# ------------------------------------------------------------------------------------ a killed refit

def test_a_refit_killed_halfway_leaves_the_old_set_whole(tmp_path):
    run_dir = copy_run(tmp_path)
    before = _fit_files(run_dir)
    proc = _killed(KILL_AT_SECOND_SAVE, "fit", f"run_dir={run_dir}", "fit.output=margin")
    assert proc.returncode == 137, proc.stderr[-3000:]
    assert _fit_files(run_dir) == before  # not one file of the margin fit in fit/
    assert {row["output"] for row in _faith(run_dir).values()} == {"loss"}
    assert glob.glob(os.path.join(run_dir, ".fit-new-*"))  # the unfinished set, beside fit/
    run_cli("report", f"run_dir={run_dir}", *REPORT_ARGS)  # the old set is whole: usable
    # the next fit removes the unfinished set and swaps its own in
    run_cli("fit", f"run_dir={run_dir}", "fit.output=margin")
    assert not glob.glob(os.path.join(run_dir, ".fit-*"))
    assert {row["output"] for row in _faith(run_dir).values()} == {"margin"}


def test_a_fit_killed_between_its_renames_is_refused_then_repaired(tmp_path):
    run_dir = copy_run(tmp_path)
    before = _fit_files(run_dir)
    proc = _killed(KILL_BETWEEN_RENAMES, "fit", f"run_dir={run_dir}", "fit.output=margin")
    assert proc.returncode == 137, proc.stderr[-3000:]
    assert not os.path.exists(os.path.join(run_dir, "fit")) and glob.glob(os.path.join(run_dir, ".fit-old-*"))
    _refused(run_cli("report", f"run_dir={run_dir}", *REPORT_ARGS, check=False), run_dir,
             "killed while swapping in")
    # a fit that fails before writing puts the old set back first (and tidies the rest)
    failed = run_cli("fit", f"run_dir={run_dir}", "fit.output=nonsense", check=False)
    assert failed.returncode != 0
    assert _fit_files(run_dir) == before and not glob.glob(os.path.join(run_dir, ".fit-new-*"))
    run_cli("fit", f"run_dir={run_dir}")
    assert not glob.glob(os.path.join(run_dir, ".fit-*"))


# ------------------------------------------------------------------------------------ mixed sets are refused

def test_report_and_validate_refuse_a_set_mixed_by_a_killed_pre_stamp_refit(tmp_path, margin_run):
    """As a dataspex before fit stamps left fit/ when a refit on the margin was killed after its first file."""
    from dataspex.estimators import InteractionResult

    run_dir = copy_run(tmp_path)
    _legacy(run_dir)
    InteractionResult.load(os.path.join(margin_run, "fit", "linear.npz")).save(
        os.path.join(run_dir, "fit", "linear.npz"))
    design = os.path.join(run_dir, "design.npz")
    with open(design, "rb") as fh:
        design_bytes = fh.read()
    _refused(run_cli("report", f"run_dir={run_dir}", *REPORT_ARGS, check=False), run_dir, "records no fit stamp",
             "may mix two fits")
    _refused(run_cli("validate", f"run_dir={run_dir}", "validate.top_k=1", "validate.seeds=2", *REPORT_ARGS,
                     check=False), run_dir, "records no fit stamp")
    with open(design, "rb") as fh:
        assert fh.read() == design_bytes  # refused before any retrain was planned
    import dataspex
    from dataspex.core.errors import DataspexError

    with pytest.raises(DataspexError, match="records no fit stamp"):
        dataspex.load_run(run_dir).fitted


def test_report_and_validate_refuse_estimators_of_two_fits(tmp_path, margin_run):
    run_dir = copy_run(tmp_path)
    shutil.copy(os.path.join(margin_run, "fit", "linear.npz"), os.path.join(run_dir, "fit", "linear.npz"))
    for stage, extra in (("report", REPORT_ARGS), ("validate", ["validate.top_k=1", *REPORT_ARGS])):
        proc = run_cli(stage, f"run_dir={run_dir}", *extra, check=False)
        _refused(proc, run_dir, "mixes fits", "linear.npz: fit", "on margin", "proxyspex.npz: fit", "on loss")
        assert len(proc.stderr.strip().splitlines()[-1]) > 0 and proc.stderr.count("dataspex: error:") == 1


def test_a_set_that_does_not_match_faithfulness_json_is_refused(tmp_path, margin_run):
    run_dir = copy_run(tmp_path)
    shutil.copy(os.path.join(margin_run, "fit", "faithfulness.json"), os.path.join(run_dir, "fit",
                                                                                   "faithfulness.json"))
    _refused(run_cli("report", f"run_dir={run_dir}", *REPORT_ARGS, check=False), run_dir, "mixes fits",
             "faithfulness.json: fit")


def test_a_stray_estimator_file_of_another_fit_is_refused(tmp_path, margin_run):
    run_dir = copy_run(tmp_path)
    shutil.copy(os.path.join(margin_run, "fit", "linear.npz"), os.path.join(run_dir, "fit", "ridge.npz"))
    _refused(run_cli("report", f"run_dir={run_dir}", *REPORT_ARGS, check=False), run_dir, "mixes fits",
             "ridge.npz")


def test_a_missing_estimator_file_is_refused(tmp_path):
    run_dir = copy_run(tmp_path)
    os.unlink(os.path.join(run_dir, "fit", "linear.npz"))
    _refused(run_cli("report", f"run_dir={run_dir}", *REPORT_ARGS, check=False), run_dir, "linear.npz is missing")


def test_a_fit_of_another_design_is_refused_but_validation_rows_are_not_a_change(tmp_path):
    from dataspex.store import RunStore

    run_dir = copy_run(tmp_path)
    store = RunStore(run_dir)
    design = store.load_design()
    store.save_design(design.extend(np.ones((1, design.n_train), dtype=np.uint8), "validate"))
    run_cli("report", f"run_dir={run_dir}", *REPORT_ARGS)  # validate appends rows fit ignores: same fit
    store.save_design(design.extend(np.ones((1, design.n_train), dtype=np.uint8), "pairwise"))
    _refused(run_cli("report", f"run_dir={run_dir}", *REPORT_ARGS, check=False), run_dir,
             "was fitted on another design", "64 masks", "65 masks")
