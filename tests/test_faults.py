"""Fault tests: whatever happens to the workers, a run ends with exactly one result per mask, equal to an
uninterrupted run, and never mixes in results of another model, data set or config."""

from __future__ import annotations

import json
import os
import signal
import threading
import time

import pytest

from dataspex.core.errors import DataspexError
from dataspex.core.files import load_npz
from dataspex.stages.rundir import shard_rows
from dataspex.store import RunStore
from dataspex.train.engine import pass_groups
from tests.conftest import TINY, run_cli
from tests.test_sweeps import (JOB, assert_same_results, fresh_copy, last_sweep_log, reference_run, start_sweep, stop,
                               sweep)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


def _wait_for(predicate, timeout: float, what: str, proc=None):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            break
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _descends_from(pid: int, ancestor: int) -> bool:
    while pid > 1:
        with open(f"/proc/{pid}/stat") as fh:
            pid = int(fh.read().rsplit(")", 1)[1].split()[1])
        if pid == ancestor:
            return True
    return False


# TINY with design.seed=3, trained 100 epochs, one adapter per pass: in shard 0 of 2 the first mask keeps the
# most examples, so the batched engine (passes in order of kept count) trains it last; each pass takes long
# enough (~0.3 s) to kill a worker between two of them.
KILL_RUN = [*(a for a in TINY if not a.startswith("train.epochs=")), "design.seed=3", "train.epochs=100",
            "train.adapters_per_pass=1"]


def _pass_order(design, shard: int, count: int) -> list[int]:
    """The shard's mask ids in the order the batched engine trains them, one adapter per pass."""
    rows = shard_rows(len(design), shard, count)
    return [int(design.mask_ids[rows][g[0]]) for g in pass_groups(design.masks[rows].sum(axis=1).tolist(), 1)]


def test_kill_9_worker_mid_shard_then_rerun(tmp_path):
    """A sweep of 2 shards as local jobs (submitit, one process per shard) on the default batched engine, one
    adapter per pass and one file per mask; a worker is SIGKILLed as soon as it has written its first result.
    Its passes finish out of input order (the shard's first mask is its last pass), and each pass's result is
    written as soon as the pass is done, so what the killed worker leaves on disk is exactly its first passes:
    only the pass in progress (and those not started) are lost. (An engine that yields in input order writes
    nothing until the last pass, then everything at once.) The sweep fails; running it again finishes the run
    exactly as an uninterrupted run."""
    ref = str(tmp_path / "reference")
    run_cli("design", f"run_dir={ref}", *KILL_RUN)
    run_cli("train", f"run_dir={ref}", *JOB)
    run_dir = fresh_copy(ref, tmp_path / "run")
    store = RunStore(run_dir)
    design = store.load_design()
    shard = 0
    order = _pass_order(design, shard, 2)
    assert order[-1] == int(design.mask_ids[shard_rows(len(design), shard, 2)][0])  # out of input order

    def shard_files():
        return [p for p in store.result_files() if int(load_npz(p)[0]["mask_ids"][0]) % 2 == shard]

    args = [f"run_dir={run_dir}", "hydra/launcher=local_jobs", "shard.count=2", "shard.index=range(0,2)",
            "train.chunk_size=1", *JOB]
    driver = start_sweep(*args, log_path=tmp_path / "driver.log")
    try:
        seen = _wait_for(shard_files, 180, f"a first result file of shard {shard}", driver)
        worker = load_npz(seen[0])[1]["pid"]
        assert _descends_from(worker, driver.pid)  # a job process of our sweep, nothing else
        os.kill(worker, signal.SIGKILL)
        written = {int(load_npz(p)[0]["mask_ids"][0]) for p in seen}
        assert driver.wait(120) != 0  # the sweep reports the lost job (and does not hang)
    finally:
        stop(driver)
    log = (tmp_path / "driver.log").read_text()
    assert "UncompletedJobError" in log or "has not produced any output" in log, log[-3000:]
    saved = store.scan().done & set(order)
    assert 0 < len(saved) < len(order), f"the worker was not killed mid-shard: {sorted(saved)} of {order}"
    # written in the order the passes finished, each at once: the first passes, nothing finished held back
    assert written <= saved == set(order[: len(saved)]), (order, sorted(written), sorted(saved))

    sweep(*args)
    rerun = last_sweep_log(run_dir)
    assert f"train: shard {shard}/2 has 5 masks, {len(saved)} already done" in rerun
    assert "1 adapters per pass" in rerun  # the batched engine, as the design's run was made
    assert_same_results(run_dir, ref)
    assert not os.path.exists(store.path("results", "quarantine"))


def test_four_concurrent_joblib_workers_write_one_store(tmp_path_factory, tmp_path):
    """4 joblib workers at once, each shard run twice concurrently (a job started twice): all write into one
    store, one file per mask; reading collapses the duplicates to exactly one result per mask."""
    ref = reference_run(tmp_path_factory)
    run_dir = fresh_copy(ref, tmp_path / "run")
    sweep(f"run_dir={run_dir}", "hydra/launcher=joblib_local", "hydra.launcher.n_jobs=4", "shard.count=2",
          "shard.index=0,1,0,1", "train.chunk_size=1", *JOB)
    scan = RunStore(run_dir).scan()
    assert not scan.rejected and not scan.temp_files
    pids = {load_npz(path)[1]["pid"] for path in scan.good}
    assert len(pids) >= 2 and scan.n_results >= 10  # several processes wrote; maybe the same mask twice
    assert_same_results(run_dir, ref)


def test_truncated_result_file_is_reported_quarantined_and_retrained(tmp_path_factory, tmp_path):
    ref = reference_run(tmp_path_factory)
    run_dir = fresh_copy(ref, tmp_path / "run", results=True)
    store = RunStore(run_dir)
    victim = store.result_files()[0]
    lost = load_npz(victim)[0]["mask_ids"].tolist()
    size = os.path.getsize(victim)
    with open(victim, "r+b") as fh:  # a file cut short (disk full, copy interrupted, ...)
        fh.truncate(size // 2)
    with open(store.path("results", ".tmp-deadbeef"), "wb") as fh:  # a writer killed before its rename
        fh.write(b"PK\x03\x04")

    proc = run_cli("status", f"run_dir={run_dir}", check=False)
    assert proc.returncode == 2 and "1 result file is rejected" in proc.stderr  # scripts see it
    status = proc.stdout
    assert "REJECTED 1 result files" in status and "truncated or corrupted" in status
    assert f"missing  {len(lost)} masks" in status and "unfinished writes" in status

    resumed = run_cli("train", f"run_dir={run_dir}", *JOB)
    assert f"{10 - len(lost)} already done, {len(lost)} to train" in resumed.stderr
    with pytest.warns(UserWarning, match="truncated or corrupted"):
        assert_same_results(run_dir, ref)
    assert os.listdir(store.path("results", "quarantine")) == [os.path.basename(victim)]
    assert "REJECTED" not in run_cli("status", f"run_dir={run_dir}").stdout


def test_two_configs_pointed_at_one_directory(tmp_path_factory, tmp_path):
    ref = reference_run(tmp_path_factory)
    run_dir = fresh_copy(ref, tmp_path / "run", results=True)
    store = RunStore(run_dir)
    files = store.result_files()
    for stage, change, what in [("train", "model.max_length=32", "model"), ("run", "lora.r=4", "lora"),
                                ("fit", "train.lr=0.1", "train"), ("collect", "data.seed=3", "data"),
                                ("train", "data.n_train=12", "data")]:
        proc = run_cli(stage, f"run_dir={run_dir}", change, *JOB, check=False)
        assert proc.returncode == 2, (stage, change, proc.stderr[-2000:])
        assert f"holds results for a different {what}" in proc.stderr, (stage, change)
        assert "Traceback" not in proc.stderr
    assert store.result_files() == files and not os.path.exists(store.path("results.parquet"))

    # Someone deletes the guard and re-creates the run with another model: refused (a new fingerprint would turn
    # every result there into a foreign one, quarantined), saying how to get the guard back; nothing changes.
    original = open(store.path("fingerprint.json")).read()
    os.unlink(store.path("fingerprint.json"))
    proc = run_cli("design", f"run_dir={run_dir}", "model.max_length=32", *JOB, check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert "has no fingerprint.json (deleted?), and these settings are not the run's" in proc.stderr
    assert "model.max_length: stored 64, now 32" in proc.stderr
    assert not os.path.exists(store.path("fingerprint.json")) and store.result_files() == files
    assert not os.path.exists(store.path("results", "quarantine"))
    # the named recovery: the run's own settings (replayed from overrides.json) restore it, and every result counts
    run_cli("design", f"run_dir={run_dir}", *JOB)
    assert open(store.path("fingerprint.json")).read() == original
    status = run_cli("status", f"run_dir={run_dir}").stdout
    assert "REJECTED" not in status and "10      10" in status
    assert len(store.load_results()) == 10 and store.result_files() == files


def test_two_runs_racing_to_create_one_directory(tmp_path):
    """Two different `design`s started at the same moment on a new directory: exactly one fingerprint wins,
    the other run refuses (creating fingerprint.json is atomic and never overwrites)."""
    store = RunStore(str(tmp_path / "run"))
    outcomes = []
    barrier = threading.Barrier(8)

    def create(model):
        barrier.wait()
        try:
            store.check_fingerprint({"model": model, "data": "d"}, create=True)
            outcomes.append(("ok", model))
        except DataspexError:
            outcomes.append(("refused", model))

    threads = [threading.Thread(target=create, args=(f"m{i % 2}",)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    with open(store.path("fingerprint.json")) as fh:
        winner = json.load(fh)["model"]
    assert sorted(outcomes) == sorted(("ok" if m == winner else "refused", m) for _, m in outcomes)
    assert [f for f in os.listdir(store.run_dir) if f.startswith(".tmp")] == []
