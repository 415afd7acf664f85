"""benchmarks/bias_variance.py: least squares as an estimator of its blocks, and its output specs."""

from __future__ import annotations

import numpy as np
import pytest

from tests.benchmark_scripts import load_benchmark

bias_variance = load_benchmark("bias_variance")


def test_ols_recovers_exact_main_effects_and_predicts_them():
    rng = np.random.default_rng(0)
    X = (rng.random((40, 5)) < 0.5).astype(np.uint8)
    Y = 0.3 + X @ np.array([[1.0, -2.0], [0.5, 0.0], [0.0, 1.0], [-1.0, 3.0], [2.0, 0.25]])
    fit = bias_variance.ols(X, Y)
    assert np.allclose(fit.predict(X[:7]), Y[:7]) and np.allclose(fit.coef_[0], 0.3)


def test_an_output_after_at_other_than_margin_is_refused(tmp_path):
    with pytest.raises(SystemExit, match="'ols@error': the only output after @ is margin"):
        bias_variance.main(["--run", str(tmp_path), "--estimators", "ols@error", "--budgets", "1024"])
