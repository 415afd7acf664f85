"""Sweeps on a real Slurm cluster through Hydra's submitit launcher.

Needs a cluster: `.ci/run` starts a single-node one from Debian's packages (`.ci/slurm.sh up`) and exports
SLURM_CONF; without SLURM_CONF these tests are skipped. Jobs share the node's 2 cores: 1 CPU, 1 thread each.
"""

from __future__ import annotations

import glob
import os
import re
import subprocess
import time

import pytest

from dataspex.store import RunStore
from tests.test_sweeps import (JOB, assert_same_results, fresh_copy, last_sweep_log, reference_run, start_sweep,
                               stop, sweep)

pytestmark = [
    pytest.mark.slurm, pytest.mark.slow, pytest.mark.timeout(360),
    pytest.mark.skipif(not os.environ.get("SLURM_CONF"),
                       reason="no Slurm cluster: SLURM_CONF is unset (.ci/run starts one: bash .ci/slurm.sh up)"),
]

# Small jobs for a 2-core node: what a user sets with hydra.launcher.* on a real cluster.
RESOURCES = ["hydra.launcher.cpus_per_task=1", "hydra.launcher.mem_gb=1", "hydra.launcher.timeout_min=10"]


def _slurm(*args: str) -> str:
    return subprocess.run(list(args), capture_output=True, text=True, check=True, timeout=30).stdout


@pytest.fixture(scope="module")
def partition():
    """The cluster's default partition (and a check that the cluster answers: in CI it must)."""
    lines = _slurm("sinfo", "-h", "-o", "%P %a").split()
    default = [p for p in lines if p.endswith("*")]
    assert default, f"sinfo shows no default partition: {lines}"
    return default[0].rstrip("*")


def _array_ids(run_dir: str) -> list[str]:
    """Slurm job-array ids of every sweep on ``run_dir`` (from submitit's folders, named <array>_<task>)."""
    ids = {m.group(1) for d in glob.glob(os.path.join(run_dir, "sweeps", "*", ".submitit", "*"))
           if (m := re.fullmatch(r"(\d+)_\d+", os.path.basename(d)))}
    return sorted(ids, key=int)


def _states(array_id: str, want: int, timeout: float = 30) -> list[str]:
    """sacct's states of the array's tasks (accounting lags the jobs by a moment)."""
    end = time.monotonic() + timeout
    while True:
        out = _slurm("sacct", "-X", "-n", "-P", "-j", array_id, "-o", "JobID,State")
        states = [line.split("|")[1].split()[0] for line in out.splitlines() if line.strip()]
        if len(states) == want and not {"PENDING", "RUNNING", "COMPLETING"} & set(states) \
                or time.monotonic() > end:
            return states
        time.sleep(0.5)


def _cancel_all(run_dir: str) -> None:
    for array_id in _array_ids(run_dir):
        subprocess.run(["scancel", array_id], capture_output=True, timeout=30)


def test_sweep_on_slurm(tmp_path_factory, tmp_path, partition):
    """`dataspex train --multirun hydra/launcher=submitit_slurm ...`: one Slurm job array, one task per shard."""
    ref = reference_run(tmp_path_factory)
    run_dir = fresh_copy(ref, tmp_path / "run")
    try:
        sweep(f"run_dir={run_dir}", "hydra/launcher=submitit_slurm", f"hydra.launcher.partition={partition}",
              *RESOURCES, "hydra.launcher.array_parallelism=2", "shard.count=2", "shard.index=range(0,2)", *JOB)
    except BaseException:
        _cancel_all(run_dir)  # leave no job behind a failed test
        raise
    assert_same_results(run_dir, ref)
    (array_id,) = _array_ids(run_dir)
    assert _states(array_id, 2) == ["COMPLETED", "COMPLETED"]
    (script,) = glob.glob(os.path.join(run_dir, "sweeps", "*", ".submitit", ".submission_file_*.sh"))
    assert "#SBATCH --array=0-1%2" in open(script).read()
    log = last_sweep_log(run_dir)
    assert "train: shard 0/2 has 5 masks" in log and "train: shard 1/2 has 5 masks" in log


def test_cancelled_job_then_resubmitted(tmp_path_factory, tmp_path, partition):
    """scancel a sweep part-way (its first task running, the second still queued: array_parallelism=1): the
    driver reports the cancelled job instead of hanging (accounting tells submitit it is gone); submitting the
    same sweep again trains only what is missing and ends with exactly the results of an uninterrupted run."""
    ref = reference_run(tmp_path_factory)
    run_dir = fresh_copy(ref, tmp_path / "run")
    store = RunStore(run_dir)
    args = [f"run_dir={run_dir}", "hydra/launcher=slurm", f"hydra.launcher.partition={partition}", *RESOURCES,
            "shard.count=2", "shard.index=range(0,2)", "train.chunk_size=1", *JOB]
    driver = start_sweep(*args, "hydra.launcher.array_parallelism=1", log_path=tmp_path / "driver.log")
    try:
        end = time.monotonic() + 180
        while not store.result_files() and driver.poll() is None and time.monotonic() < end:
            time.sleep(0.05)
        assert store.result_files(), "no result before the deadline"
        (array_id,) = _array_ids(run_dir)
        _slurm("scancel", array_id)
        assert driver.wait(150) != 0
    finally:
        stop(driver)
        _cancel_all(run_dir)  # cancelled already, unless the test failed before
    log = (tmp_path / "driver.log").read_text()
    assert "CANCELLED" in log, log[-3000:]
    assert "CANCELLED" in _states(array_id, 2)
    done_before = store.scan().done
    assert 0 < len(done_before) <= 5 and all(i % 2 == 0 for i in done_before)  # shard 1 never started

    try:
        sweep(*args)
    except BaseException:
        _cancel_all(run_dir)
        raise
    assert_same_results(run_dir, ref)
    resumed = last_sweep_log(run_dir)
    assert f"shard 0/2 has 5 masks, {len(done_before)} already done" in resumed
    assert "shard 1/2 has 5 masks, 0 already done, 5 to train" in resumed
    assert _states(_array_ids(run_dir)[-1], 2) == ["COMPLETED", "COMPLETED"]
