"""benchmarks/bias_variance.py: the split of a fit's gap to the noise ceiling into variance and bias."""

from __future__ import annotations

import numpy as np
import pytest

from tests.benchmark_scripts import load_benchmark

bias_variance = load_benchmark("bias_variance")

N_FEATURES, NOISE_SD = 8, 1.0


def outputs(masks: np.ndarray, pair: float, rng) -> tuple[np.ndarray, np.ndarray]:
    """(mask-determined part g, one noisy retrain g + e) of two test examples: main effects plus ``pair`` times
    x0 * x1 on the first; the second is main effects only."""
    weights = np.linspace(-1.0, 1.0, N_FEATURES)
    g = np.stack([masks @ weights + pair * masks[:, 0] * masks[:, 1], masks @ weights[::-1]], axis=1)
    return g, g + NOISE_SD * rng.standard_normal(g.shape)


def split(pair: float, K: int = 4, m: int = 2000, M: int = 20000) -> dict:
    rng = np.random.default_rng(0)
    X = (rng.random((K * m + M, N_FEATURES)) < 0.5).astype(np.float64)
    g, y = outputs(X, pair, rng)
    X_ho, g_ho, y_ho = X[K * m:], g[K * m:], y[K * m:]
    # the ceiling as the replicates estimate it: the share of held-out variance the mask determines
    ceiling = float(((g_ho - g_ho.mean(0)) ** 2).sum() / ((y_ho - y_ho.mean(0)) ** 2).sum())
    fits = np.stack([bias_variance.ols(X[k * m:(k + 1) * m], y[k * m:(k + 1) * m]).predict(X_ho) for k in range(K)])
    return {**bias_variance.decompose(y_ho, fits, ceiling), "sst": float(((y_ho - y_ho.mean(0)) ** 2).sum()),
            "n_ho": M}


def test_the_mean_of_the_fits_scores_the_mean_r2_plus_most_of_the_variance_exactly():
    rng = np.random.default_rng(1)
    Y = rng.standard_normal((50, 3))
    fits = Y + rng.standard_normal((5, 50, 3))
    d = bias_variance.decompose(Y, fits, ceiling=0.9)
    assert d["r2_of_mean"] == pytest.approx(d["r2"] + (5 - 1) / 5 * d["variance"], abs=1e-12)
    assert d["r2_without_variance"] == pytest.approx(d["r2"] + d["variance"], abs=1e-12)
    assert d["bias"] == pytest.approx(0.9 - d["r2"] - d["variance"], abs=1e-12)


def test_least_squares_on_an_additive_truth_has_no_bias_and_the_variance_least_squares_theory_gives():
    d = split(pair=0.0)
    assert abs(d["bias"]) < 0.01
    # OLS with p = n + 1 coefficients on m masks: held-out prediction variance about sigma^2 p / (m - p - 1) per
    # output, over the held-out masks and both outputs
    expected = 2 * d["n_ho"] * NOISE_SD ** 2 * (N_FEATURES + 1) / (2000 - N_FEATURES - 2) / d["sst"]
    assert d["variance"] == pytest.approx(expected, rel=0.1)


def test_least_squares_bias_is_the_part_of_a_pair_term_no_main_effect_represents():
    pair = 4.0
    d = split(pair=pair)
    # x0 x1 = 1/4 + (x0 - 1/2) / 2 + (x1 - 1/2) / 2 + (x0 - 1/2)(x1 - 1/2); the last term, of variance 1/16 at
    # p = 1/2, is orthogonal to every main effect, so least squares leaves pair^2 / 16 per held-out mask
    assert d["bias"] == pytest.approx(d["n_ho"] * pair ** 2 / 16 / d["sst"], rel=0.1)
    assert d["bias"] > 0.05


def test_one_fit_has_no_variance_to_measure():
    with pytest.raises(ValueError, match="1 fit\\(s\\): the variance needs 2 or more fits on disjoint blocks"):
        bias_variance.decompose(np.zeros((4, 2)), np.zeros((1, 4, 2)), 0.5)
