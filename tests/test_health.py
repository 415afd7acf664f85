"""Flagging diverged or non-converged retrains (dataspex.store.health): exact flags on small cases."""

from __future__ import annotations

import numpy as np

from dataspex.store import health


def test_each_reason_is_flagged_exactly():
    ids = [10, 11, 12, 13, 14]
    losses = np.array([[0.1, 0.2], [np.nan, 0.1], [6.7e7, 0.3], [0.4, 0.5], [0.2, 0.1]])
    curves = np.array([[0.7, 0.3, 0.01],       # healthy: falls
                       [0.7, 0.3, 0.01],
                       [0.7, 9.0, 1e6],        # blew up
                       [0.7, 0.8, 0.9],        # did not fall
                       [np.nan, np.nan, np.nan]])  # not recorded (an old result file): not judged
    flags = health.flag_masks(ids, losses, curves)
    assert flags["ids"] == [11, 12, 13] and flags["n_flagged"] == 3 and flags["n_masks"] == 5
    assert flags["reasons"] == {11: ["non-finite test loss"],
                                12: ["test loss above 1000 nats", "training loss did not fall"],
                                13: ["training loss did not fall"]}
    assert health.summary(flags) == ("3 of 5 masks: 11, 12, 13 (non-finite test loss: 1, test loss above 1000 "
                                     "nats: 1, training loss did not fall: 2)")


def test_epochs_a_plateau_stop_skipped_are_not_a_fault():
    """train.plateau_tol leaves the skipped epochs NaN at the end of the record: judged by the last trained
    epoch. A NaN with a finite loss after it, or an infinity, is still a fault."""
    ids = [1, 2, 3, 4, 5, 6]
    losses = np.full((6, 2), 0.1)
    curves = np.array([[0.7, 0.3, 0.01, np.nan, np.nan],   # stopped after epoch 2: healthy
                       [0.7, 0.8, 0.9, np.nan, np.nan],    # stopped after epoch 2 above its start
                       [0.7, 0.3, np.nan, 0.2, 0.1],       # a NaN inside the record
                       [0.7, 0.3, np.inf, np.nan, np.nan],  # an infinity before the tail
                       [0.7, 0.8, np.nan, np.nan, np.nan],  # one trained epoch: not judged on falling
                       [0.7, 0.3, 0.2, 0.1, 0.05]])        # every epoch trained
    flags = health.flag_masks(ids, losses, curves)
    assert flags["reasons"] == {2: ["training loss did not fall"],
                                3: ["non-finite training loss"],
                                4: ["non-finite training loss", "training loss did not fall"]}


def test_healthy_results_and_merging_chunks():
    ok = health.flag_masks([1, 2], np.array([[7.9], [0.01]]), np.array([[0.69, 0.1], [0.69, 0.2]]))
    assert ok["n_flagged"] == 0 and ok["ids"] == []  # 7.9 nats: the largest healthy loss measured on the demo
    bad = health.flag_masks([3], np.array([[2e3]]))
    both = health.merge(ok, bad)
    assert both["n_masks"] == 3 and both["ids"] == [3] and both["counts"] == {"test loss above 1000 nats": 1}


def test_status_prints_the_diverged_masks():
    from dataspex.stages.status import format_status

    flags = health.flag_masks([4, 5], np.array([[0.1], [5e4]]))
    status = {"run_dir": "/r", "design": {"kind": "random"}, "total": 2, "n_train": 10, "fingerprint_id": "f",
              "shard_count": 1, "shards": [{"shard": 0, "done": 2, "total": 2}], "done": 2,
              "roles": {"fit": {"done": 2, "total": 2}}, "files": 1, "results": 2, "duplicates": 0,
              "missing_ids": [], "rejected": {}, "temp_files": [], "health": flags}
    text = format_status(status)
    assert "DIVERGED 1 of 2 masks: 5 (test loss above 1000 nats: 1)" in text
