"""benchmarks/noise.py: the replicate noise ceiling, on outputs whose noise is known."""

from __future__ import annotations

import numpy as np

from tests.benchmark_scripts import load_benchmark

noise = load_benchmark("noise")


def test_replicate_rho_is_the_columnwise_correlation():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(30, 4)), rng.normal(size=(30, 4))
    b[:, 3] = 1.0  # a constant column has no correlation
    rho = noise.replicate_rho(a, b)
    for k in range(3):
        assert np.isclose(rho[k], np.corrcoef(a[:, k], b[:, k])[0, 1])
    assert np.isnan(rho[3])


def test_the_ceiling_recovers_a_known_signal_share_and_spearman_brown_holds():
    """Signal variance 1 (one signal for every test example), seed noise variance 1: rho = 0.5; the mean of 2
    replicates: 2/3 (measured, 4 seeds)."""
    rng = np.random.default_rng(1)
    masks, tests = 4000, 6
    signal = np.repeat(rng.normal(size=(masks, 1)), tests, axis=1)
    losses = np.stack([signal + rng.normal(size=(masks, tests)) for _ in range(4)])
    margins = -losses
    labels = np.array([0, 0, 0, 1, 1, 1])
    rows = noise.summarise(losses, margins, labels)
    assert abs(rows["loss"]["rho"] - 0.5) < 0.03 and abs(rows["margin"]["rho"] - 0.5) < 0.03
    assert abs(rows["loss"]["rho2"] - 2 / 3) < 0.03
    assert np.isclose(rows["loss"]["rho2_pred"], noise.spearman_brown(rows["loss"]["rho"], 2))
    assert np.isclose(noise.spearman_brown(0.5, 2), 2 / 3) and np.isclose(noise.spearman_brown(0.5, 4), 0.8)
    # the mean over 6 test examples averages the noise, not the signal: rho = 1 / (1 + 1/6) = 6 / 7
    assert abs(rows["mean loss"]["rho"] - 6 / 7) < 0.03
    assert set(rows) == {"loss", "margin", "mean loss", "mean margin", "accuracy", "class mean loss"}
