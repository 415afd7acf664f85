"""benchmarks/simulated.py: the per-mask softmax regression equals scikit-learn's, and the residual line is
least squares."""

from __future__ import annotations

import numpy as np

from tests.benchmark_scripts import load_benchmark

simulated = load_benchmark("simulated")


def test_simulated_losses_equal_scikit_learns_logistic_regression_per_mask():
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    n, d, K, T = 40, 5, 3, 6
    labels = np.arange(n) % K
    vectors = rng.normal(size=(n, d)) + labels[:, None] * 0.8
    test_labels = np.arange(T) % K
    test_vectors = rng.normal(size=(T, d)) + test_labels[:, None] * 0.8
    masks = (rng.random((4, n)) < 0.6).astype(np.int8)
    masks[:, :K] = 1  # every class kept in every mask (scikit-learn drops a class it never sees)
    masks[3] = 1      # and the full set
    C = 0.7
    got = simulated.simulated_losses(vectors, labels, test_vectors, test_labels, masks, C, K, chunk=3)
    mean, scale = vectors.mean(0), vectors.std(0) + 1e-6
    for row, keep in enumerate(masks.astype(bool)):
        model = LogisticRegression(C=C, tol=1e-12, max_iter=100000).fit((vectors[keep] - mean) / scale, labels[keep])
        log_p = model.predict_log_proba((test_vectors - mean) / scale)
        np.testing.assert_allclose(got[row], -log_p[np.arange(T), test_labels], atol=2e-5)
    # masks differ, so their simulated losses do
    assert np.abs(got[0] - got[3]).max() > 1e-3


def test_line_fit_is_least_squares_per_column():
    rng = np.random.default_rng(1)
    S, Y = rng.normal(size=(50, 3)), rng.normal(size=(50, 3))
    S[:, 2] = 4.0  # a constant input: no slope, the mean
    line = simulated.line_fit(S, Y)
    for t in range(2):
        slope, intercept = np.polyfit(S[:, t], Y[:, t], 1)
        np.testing.assert_allclose(line[:, t], [intercept, slope], atol=1e-12)
    np.testing.assert_allclose(line[:, 2], [Y[:, 2].mean(), 0.0], atol=1e-12)
