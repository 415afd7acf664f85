"""Nothing silent in training: diverged fine-tunes are flagged (train log, `dataspex status`,
``dataspex.store.health``), and `dataspex status` fails for scripts when a result file is rejected."""

from __future__ import annotations

import os

import numpy as np
import pytest

from dataspex.core.errors import DataspexError
from dataspex.core.files import load_npz, save_npz
from dataspex.design import Design, random_masks
from dataspex.store import RunStore, health
from dataspex.train import engine
from tests.conftest import TINY, run_cli
from tests.test_engine import IDS, MASKS, lora_cfg, minilm, threads, train_cfg  # noqa: F401 (fixtures)
from tests.test_sweeps import JOB, fresh_copy, reference_run

NAN = np.nan


# ---------------------------------------------------------------------------------------- the flags

def test_flag_masks_names_each_kind_of_divergence():
    losses = np.array([[0.1, 7.9], [0.2, NAN], [0.1, 6.7e7], [0.3, 0.4], [0.1, 0.2], [0.1, np.inf]])
    train = np.array([[0.69, 0.3, 0.01],  # healthy: falls
                      [0.69, 0.3, 0.01],
                      [0.69, 8e5, 9e5],  # rose
                      [0.69, 0.7, 0.69],  # the last epoch back at the start: did not fall
                      [NAN, NAN, NAN],  # from a file written before training losses were recorded
                      [0.69, NAN, 0.01]])
    flags = health.flag_masks([10, 11, 12, 13, 14, 15], losses, train)
    assert flags["n_masks"] == 6 and flags["n_flagged"] == 4 and flags["ids"] == [11, 12, 13, 15]
    assert flags["reasons"] == {11: ["non-finite test loss"],
                                12: ["test loss above 1000 nats", "training loss did not fall"],
                                13: ["training loss did not fall"],
                                15: ["non-finite test loss", "non-finite training loss"]}
    assert flags["counts"] == {"non-finite test loss": 2, "test loss above 1000 nats": 1,
                               "non-finite training loss": 1, "training loss did not fall": 2}
    assert health.summary(flags) == ("4 of 6 masks: 11, 12, 13, 15 (non-finite test loss: 2, test loss above "
                                     "1000 nats: 1, non-finite training loss: 1, training loss did not fall: 2)")
    # the threshold is a parameter; one epoch (start and one column) cannot show a fall; no record at all
    assert health.flag_masks([1], [[50.0]], max_loss=10)["reasons"] == {1: ["test loss above 10 nats"]}
    assert health.flag_masks([1], [[0.1]], [[0.69, 0.69]])["n_flagged"] == 0
    assert health.flag_masks([1, 2], [[0.1], [0.2]])["n_flagged"] == 0
    assert health.flag_masks([], np.zeros((0, 0)), np.zeros((0, 3)))["n_flagged"] == 0
    both = health.merge(health.flag_masks([1], [[NAN]]), health.flag_masks([2, 3], [[0.1], [2e3]]))
    assert both["n_masks"] == 3 and both["ids"] == [1, 3]


def test_result_files_keep_training_losses_and_older_files_still_load(tmp_path):
    store = RunStore(str(tmp_path / "run"))
    masks = random_masks(12, 4, 0.5, np.random.default_rng(0))
    store.save_design(Design(masks, np.arange(4), ["fit"] * 4, {"kind": "random"}))
    losses = np.array([[0.1, 0.2], [0.3, 0.4]])
    store.write_results([0, 1], masks[[0, 1]], losses, -losses)  # as written before training losses existed
    path = store.write_results([2, 3], masks[[2, 3]], losses, -losses, {"engine": "batched"},
                               train_losses=[[0.69, 0.2, 0.1], [0.69, 0.9, 1.5]])
    assert load_npz(path)[0]["train_losses"].shape == (2, 3)
    res = store.load_results()
    assert res.mask_ids.tolist() == [0, 1, 2, 3]
    np.testing.assert_array_equal(res.train_losses, [[NAN] * 3, [NAN] * 3, [0.69, 0.2, 0.1], [0.69, 0.9, 1.5]])
    flags = health.flag_results(res)
    assert flags["ids"] == [3] and flags["reasons"][3] == ["training loss did not fall"]
    # only old files: no record at all, nothing to flag from training
    store_old = RunStore(str(tmp_path / "old"))
    store_old.save_design(store.load_design())
    store_old.write_results([0], masks[[0]], losses[:1], -losses[:1])
    assert store_old.load_results().train_losses is None
    # a record that does not match the file's masks is a damaged file: rejected, never used
    store.write_results([0], masks[[0]], losses[:1], -losses[:1], train_losses=np.zeros((1, 3)))
    bad = store.result_files()[-1]
    arrays, meta = load_npz(bad)
    arrays["train_losses"] = np.zeros(3)
    save_npz(bad, arrays, meta)
    assert "train_losses have shape (3,)" in store.scan().rejected[bad]


# ------------------------------------------------------------------------------------ real fine-tunes

def test_the_engine_records_training_losses_that_show_divergence(minilm):  # noqa: F811
    base, train, test = minilm

    def trained(lr):
        engine._ENGINE_CACHE.clear()
        out = list(engine.train_masks(base, lora_cfg(), train_cfg(lr=lr, epochs=3), train, test, MASKS, IDS))
        records = np.array([r for *_, r in out])
        assert records.shape == (3, 4)  # the start, then 3 epochs
        np.testing.assert_allclose(records[:, 0], np.log(2), atol=0.05)  # the untrained head: about ln 2
        return health.flag_masks([m for m, *_ in out], np.array([loss for _, loss, *_ in out]), records)

    assert trained(5e-3)["n_flagged"] == 0
    # lr 100: the 1-example mask memorises its example (training loss 0) but its test losses reach ~1600
    # nats; the others' training losses rise to ~100 nats from ln 2
    assert trained(100.0)["reasons"] == {7: ["test loss above 1000 nats"], 3: ["training loss did not fall"],
                                         11: ["training loss did not fall"]}
    with pytest.raises(DataspexError, match="non-finite test losses"):  # NaN: refused outright, as before
        trained(1e6)


@pytest.mark.slow
def test_train_and_status_report_diverged_masks(tmp_path):
    run_dir = str(tmp_path / "run")
    args = [a for a in TINY if not a.startswith("train.epochs=")]
    run_cli("design", f"run_dir={run_dir}", *args, "train.epochs=3", "train.lr=1e6")
    proc = run_cli("train", f"run_dir={run_dir}", *JOB)
    assert "diverged or did not converge" in proc.stderr  # at the first flagged chunk
    assert "train: DIVERGED 10 of 10 masks: 0, 1, 2, 3, 4, 5, 6, 7, 8, 9 (test loss above 1000 nats: 10" \
        in proc.stderr, proc.stderr[-2000:]
    assert "lower train.lr (now 1000000.0)" in proc.stderr
    status = run_cli("status", f"run_dir={run_dir}")  # diverged results are reported, not refused
    assert "DIVERGED 10 of 10 masks: 0, 1, 2" in status.stdout


@pytest.mark.slow
def test_status_fails_for_scripts_when_a_result_file_is_rejected(tmp_path_factory, tmp_path):
    run_dir = fresh_copy(reference_run(tmp_path_factory), tmp_path / "run", results=True)
    healthy = run_cli("status", f"run_dir={run_dir}")
    assert healthy.returncode == 0 and "REJECTED" not in healthy.stdout and "DIVERGED" not in healthy.stdout
    store = RunStore(run_dir)
    victims = store.result_files()[:2]
    for victim in victims:
        with open(victim, "r+b") as fh:
            fh.truncate(os.path.getsize(victim) // 2)
    proc = run_cli("status", f"run_dir={run_dir}", check=False)
    assert proc.returncode == 2
    assert "REJECTED 2 result files" in proc.stdout and "100% done" not in proc.stdout  # the status, printed
    assert "Traceback" not in proc.stderr and proc.stderr.strip().splitlines()[-1] == (
        "dataspex: error: 2 result files are rejected (damaged, or not this run's: see REJECTED above): "
        "`dataspex train` retrains their masks; loading results (fit, collect) quarantines them")
    assert store.result_files()[:2] == victims  # status still changes nothing
