"""What dataspex refuses: each bad setting or run directory gets one clear line and exit code 2, and no stored
result changes (the README's "What dataspex refuses, and why" lists the same cases).

Runs as root cannot meet a read-only directory (root writes anywhere), so the one case that needs one mocks
``os.access`` and says so in its name; `dataspex status` is checked directly: it writes nothing at all.
"""

from __future__ import annotations

import os
import re

import pytest

from dataspex import cli
from dataspex.core.errors import DataspexError
from tests.conftest import TINY, run_cli

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    run_dir = str(tmp_path_factory.mktemp("refusals") / "run")
    run_cli("run", f"run_dir={run_dir}", *TINY)
    return run_dir


def snapshot(run_dir: str, logs: bool = False) -> dict:
    """Every stored file under the run directory with its size and modification time; with ``logs``, also the
    invocation records (dataspex.log, where a refusal is logged, and Hydra's .hydra/)."""
    out = {}
    for root, _, files in os.walk(run_dir):
        for name in files:
            path = os.path.join(root, name)
            rel = os.path.relpath(path, run_dir)
            if logs or not (rel == "dataspex.log" or rel.startswith(".hydra")):
                out[rel] = (os.path.getsize(path), os.stat(path).st_mtime_ns)
    return out


def refused(*args, phrase: str):
    proc = run_cli(*args, check=False)
    assert proc.returncode == 2, (args, proc.stderr[-2000:])
    assert phrase in proc.stderr, (args, proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr
    return proc


# --------------------------------------------------------------------- design settings against the stored design

@pytest.mark.parametrize("stage", ["train", "fit", "report"])
@pytest.mark.parametrize("change, phrase", [
    ("design.m=40", "design.m: stored 6, now 40"),
    ("design.p=0.3", "design.p: stored 0.5, now 0.3"),
    ("design.seed=1", "design.seed: stored 0, now 1"),
    ("design.heldout=5", "design.heldout: stored 4, now 5"),
])
def test_a_later_stage_refuses_other_design_settings(trained_run, stage, change, phrase):
    before = snapshot(trained_run)
    refused(stage, f"run_dir={trained_run}", change, phrase=phrase)
    assert snapshot(trained_run) == before


def test_the_design_stage_names_what_differs(trained_run):
    before = snapshot(trained_run)
    refused("design", f"run_dir={trained_run}", "design.seed=1", phrase="already has a different design (design.seed: "
            "stored 0, now 1)")
    # a larger design.m grows a random design (tests/test_grow.py), unless another setting differs too
    refused("design", f"run_dir={trained_run}", "design.m=40", "design.p=0.3",
            phrase="already has a different design (design.p: stored 0.5, now 0.3)")
    refused("design", f"run_dir={trained_run}", "design.m=3", phrase="has 6 fit masks, design.m=3 would drop some: "
            "a design never shrinks")
    assert snapshot(trained_run) == before


def test_a_later_stage_names_the_growth_command(trained_run):
    proc = refused("train", f"run_dir={trained_run}", "design.m=40", phrase="design.m: stored 6, now 40")
    assert f"to add fit masks to this run instead (its retrains are kept): `dataspex design run_dir={trained_run} " \
           "design.m=40`" in proc.stderr
    proc = refused("fit", f"run_dir={trained_run}", "design.m=3", phrase="design.m: stored 6, now 3")
    assert "to add fit masks" not in proc.stderr


# --------------------------------------------------------------------- numeric knobs

@pytest.mark.parametrize("override, phrase", [
    ("design.m=abc", "design.m='abc' is not an integer"),
    ("design.m=-5", "design.m=-5 must be at least 1"),
    ("design.m=0", "design.m=0 must be at least 1"),
    ("design.m=24.5", "design.m=24.5 is not an integer"),
    ("design.heldout=-1", "design.heldout=-1 must be at least 0"),
    ("design.p=0", "design.p=0 must be in (0, 1]"),
    ("report.top_k=-3", "report.top_k=-3 must be at least 1"),
    ("validate.top_k=0", "validate.top_k=0 must be at least 1"),
    ("validate.seeds=0", "validate.seeds=0 must be at least 1"),
    ("train.epochs=0", "train.epochs=0 must be at least 1"),
    ("train.lr=-1", "train.lr=-1 must be greater than 0"),
    ("train.lr=abc", "train.lr='abc' is not a finite number"),
    ("train.batch_size=0", "train.batch_size=0 must be at least 1"),
    ("train.plateau_tol=0", "train.plateau_tol=0 must be greater than 0"),
    ("train.plateau_tol=abc", "train.plateau_tol='abc' is not a finite number"),
    ("lora.r=0", "lora.r=0 must be at least 1"),
    ("shard.count=0", "shard.count=0 must be at least 1"),
    ("shard.index=3", "shard.index=3 must be in [0, shard.count=1)"),
])
def test_bad_numbers_are_refused_before_a_run_is_created(tmp_path, override, phrase):
    run_dir = tmp_path / "new"
    refused("run", f"run_dir={run_dir}", *TINY, override, phrase=phrase)
    # nothing recorded (Hydra's own log of the invocation aside): the bad value cannot be replayed later
    assert not any((run_dir / name).exists() for name in ("overrides.json", "fingerprint.json", "design.npz"))


def test_bad_numbers_on_an_existing_run_leave_it_untouched(trained_run):
    before = snapshot(trained_run)
    refused("report", f"run_dir={trained_run}", "report.top_k=-3", phrase="report.top_k=-3 must be at least 1")
    refused("train", f"run_dir={trained_run}", "train.epochs=0", phrase="train.epochs=0 must be at least 1")
    assert snapshot(trained_run) == before


# --------------------------------------------------------------------- the run directory

@pytest.mark.parametrize("stage", ["status", "fit", "run"])
def test_run_dir_that_is_a_file(tmp_path, stage):
    path = tmp_path / "afile"
    path.write_text("not a run")
    refused(stage, f"run_dir={path}", phrase=f"run_dir='{path}' is a file")
    refused(stage, f"run_dir={path / 'sub'}", phrase=f"lies below {path}, which is a file")
    assert path.read_text() == "not a run"


@pytest.mark.parametrize("stage", ["status", "fit", "report", "train", "collect"])
def test_a_mistyped_run_dir_is_not_created(tmp_path, stage):
    missing = tmp_path / "no-such-run"
    refused(stage, f"run_dir={missing}", phrase="does not exist")
    assert not missing.exists()


def test_status_writes_nothing_into_the_run(trained_run):
    before = snapshot(trained_run, logs=True)
    out = run_cli("status", f"run_dir={trained_run}").stdout
    assert "100% done" in out
    assert snapshot(trained_run, logs=True) == before  # no dataspex.log, no .hydra: a read-only run works


def test_a_writing_stage_refuses_a_read_only_run_mocked_access(trained_run, monkeypatch):
    """Mocked: os.access says the directory is read-only (as root, nothing here is)."""
    real = os.access
    monkeypatch.setattr(cli.os, "access", lambda p, mode: False if os.path.abspath(p) == trained_run else real(p, mode))
    for stage in ("train", "fit", "report", "validate", "collect"):
        with pytest.raises(DataspexError, match="is read-only for you, and `dataspex .*` writes into it"):
            cli.check_run_dir(stage, trained_run)
    cli.check_run_dir("status", trained_run)  # reading is fine


def test_per_block_results_belong_to_their_blocks(tmp_path):
    """Under train.seed_policy=per_block the blocks decide which masks share a seed, so seed_block is part of
    the fingerprint: the same run with other blocks is refused, and nothing stored changes."""
    run_dir = str(tmp_path / "run")
    run_cli("design", f"run_dir={run_dir}", *TINY, "train.seed_policy=per_block", "train.seed_block=2")
    before = snapshot(run_dir)
    refused("train", f"run_dir={run_dir}", "train.seed_block=3",
            phrase="holds results for a different train (train.seed_block: stored 2, now 3)")
    assert snapshot(run_dir) == before


def test_a_plateau_stop_belongs_to_the_fingerprint(tmp_path, trained_run):
    """train.plateau_tol decides how long each mask trains: a run made with one tolerance refuses another (later
    stages replay it from overrides.json), a run made without the stop refuses one (and keeps its fingerprint:
    runs from before the stop still resume)."""
    run_dir = str(tmp_path / "run")
    six_epochs = [o for o in TINY if not o.startswith("train.epochs=")] + ["train.epochs=6"]
    run_cli("design", f"run_dir={run_dir}", *six_epochs, "train.plateau_tol=0.02")
    before = snapshot(run_dir)
    refused("train", f"run_dir={run_dir}", "train.plateau_tol=0.05",
            phrase="holds results for a different train (train.plateau_tol: stored 0.02, now 0.05)")
    assert snapshot(run_dir) == before
    proc = run_cli("train", f"run_dir={run_dir}")  # replays the run's plateau_tol and epochs
    assert re.search(r"the plateau stop \(train.plateau_tol=0.02\) ended masks after \d\.\d epochs on average "
                     r"\(\d to \d; train.epochs=6; \d+ of 10 masks trained them all\)", proc.stderr), \
        proc.stderr[-2000:]
    before = snapshot(trained_run)
    refused("train", f"run_dir={trained_run}", "train.plateau_tol=0.02",
            phrase="(train.plateau_tol: stored None, now 0.02)")
    assert snapshot(trained_run) == before
