"""LinearDatamodel (batched, cross-validated L1) and QuadraticProxy."""

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.linear_model import Lasso

from dataspex.estimators import LinearDatamodel, QuadraticProxy
from dataspex.fit.estimators.transforms import all_masks
from dataspex.core.metrics import faithfulness_r2, lds


def linear_data(m=600, n=40, T=5, seed=0, noise=0.2):
    rng = np.random.default_rng(seed)
    W = np.zeros((n, T))
    for t in range(T):
        W[rng.choice(n, 5, replace=False), t] = rng.normal(size=5)
    X = (rng.random((m, n)) < 0.5).astype(np.uint8)
    Xt = (rng.random((300, n)) < 0.5).astype(np.uint8)
    return X, X @ W + 1.0 + noise * rng.normal(size=(m, T)), Xt, Xt @ W + 1.0, W


def test_linear_recovers_planted_weights():
    X, Y, Xt, Yt, W = linear_data()
    est = LinearDatamodel().fit(X, Y)
    assert est.score(Xt, Yt) > 0.95 and lds(Yt, est.predict(Xt)) > 0.95
    assert est.coef_.shape == W.shape and est.alpha_.shape == (5,)
    np.testing.assert_allclose(est.coef_, W, atol=0.1)
    assert est.result_.degree <= 1
    # Fourier form equals the linear model: c + w.x
    np.testing.assert_allclose(est.result_.predict(Xt), Xt @ est.coef_ + est.intercept_, atol=1e-10)
    # -2 F[{i}] is the effect of including i: the datamodel weight
    np.testing.assert_allclose(est.result_.main_effects("uniform", output=2), est.coef_[:, 2], atol=1e-12)


def test_linear_fixed_alpha_matches_sklearn_lasso():
    X, Y, _, _, _ = linear_data(T=3)
    est = LinearDatamodel(alpha=0.05, tol=1e-9).fit(X, Y)
    Z = (X - X.mean(0)) / X.std(0)
    for t in range(3):
        ref = Lasso(alpha=0.05, tol=1e-12, max_iter=100000).fit(Z, Y[:, t])
        np.testing.assert_allclose(est.coef_[:, t], ref.coef_ / X.std(0), atol=1e-6)


def test_linear_1d_and_sklearn_contract():
    X, Y, Xt, _, _ = linear_data(T=1)
    est = LinearDatamodel(cv=3)
    assert clone(est).get_params()["cv"] == 3
    est.fit(X, Y[:, 0])
    assert est.predict(Xt).shape == (300,)
    assert est.set_params(alpha=0.1).alpha == 0.1


def pair_function(X):
    X = X.astype(np.float64)
    y0 = 2 * X[:, 0] * X[:, 1] - 1.5 * X[:, 2] * X[:, 5] + X[:, 3] + 0.5 * X[:, 0]
    y1 = -2 * X[:, 7] * X[:, 8] + 2 * X[:, 7] + X[:, 9]  # x7 keeps a main effect
    return np.stack([y0, y1], axis=1)


def test_quadratic_recovers_planted_pairs():
    rng = np.random.default_rng(4)
    n = 30
    X = (rng.random((800, n)) < 0.5).astype(np.uint8)
    Xt = (rng.random((300, n)) < 0.5).astype(np.uint8)
    est = QuadraticProxy(n_top=8).fit(X, pair_function(X) + 0.1 * rng.normal(size=(800, 2)))
    assert est.score(Xt, pair_function(Xt)) > 0.95
    D = est.result_.pair_scores("full", output=0)
    assert D[0, 1] == pytest.approx(2.0, abs=0.2) and D[2, 5] == pytest.approx(-1.5, abs=0.2)
    top = est.result_.top_pairs("harmful", k=1, estimand="full", output=0)
    assert (top.i[0], top.j[0]) == (0, 1)
    assert est.result_.degree == 2


def test_quadratic_residual_screen_finds_pure_interaction():
    # a pure parity interaction has no main effects: only residual screening can find it
    n, rng = 12, np.random.default_rng(5)
    X = (rng.random((800, n)) < 0.5).astype(np.uint8)
    f = lambda X: (1.0 - 2 * X[:, 3]) * (1.0 - 2 * X[:, 7]) + 0.3 * X[:, 0]  # noqa: E731
    y = f(X) + 0.1 * rng.normal(size=800)
    Xt = (rng.random((300, n)) < 0.5).astype(np.uint8)
    est = QuadraticProxy(screen="residual", n_top=4).fit(X, y)
    assert faithfulness_r2(f(Xt), est.predict(Xt)) > 0.9
    assert (3, 7) in {tuple(p) for p in est.pairs_.tolist()}


def test_quadratic_exact_on_cube():
    n = 6
    X = all_masks(n)
    y = pair_function(np.hstack([X, np.zeros((len(X), 4), np.uint8)]))[:, 0]
    est = QuadraticProxy(n_top=6, alpha=1e-6).fit(X, y)
    assert faithfulness_r2(y, est.predict(X)) > 0.9999
