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


def test_lasso_allowed_columns_equal_each_outputs_own_lasso():
    """``allowed`` restricts output t to its columns: the same solution (and, with CV, the same chosen penalty) as
    the lasso of that output on those columns alone."""
    from dataspex.fit.solvers.lasso import lasso_cv_batched

    rng = np.random.default_rng(7)
    X = (rng.random((300, 12)) < 0.5).astype(np.uint8)
    Y = X[:, :6] @ rng.normal(size=(6, 3)) + 0.3 * rng.normal(size=(300, 3))
    allowed = np.ones((12, 3), dtype=bool)
    allowed[[0, 1, 7], 0] = False
    allowed[:6, 1] = False
    allowed[[2, 3, 4, 5, 8, 9, 10, 11], 2] = False
    for alpha in (0.05, None):
        coef, intercept, chosen = lasso_cv_batched(X, Y, alpha=alpha, tol=1e-10, allowed=allowed)
        assert not coef[~allowed].any()
        for t in range(3):
            cols = np.flatnonzero(allowed[:, t])
            ref, ref_b, ref_a = lasso_cv_batched(X[:, cols], Y[:, [t]], alpha=alpha, tol=1e-10)
            np.testing.assert_allclose(coef[cols, t], ref[:, 0], atol=1e-8)
            assert intercept[t] == pytest.approx(ref_b[0], abs=1e-8) and chosen[t] == pytest.approx(ref_a[0])


def test_lasso_allowed_shape_is_checked():
    from dataspex.fit.solvers.lasso import lasso_cv_batched
    from dataspex.core.errors import DataspexInputError

    X, Y, _, _, _ = linear_data(T=2)
    with pytest.raises(DataspexInputError, match=r"allowed must have shape \(p=40, T=2\), got \(40, 3\)"):
        lasso_cv_batched(X, Y, allowed=np.ones((40, 3), dtype=bool))


def test_quadratic_local_screen_keeps_each_outputs_pairs_to_itself():
    """screen="local": each output may use only the pairs among its own n_top strongest first-pass examples
    (``candidates_``); the planted pairs are found at their outputs and no output carries the other's pair."""
    rng = np.random.default_rng(4)
    X = (rng.random((800, 30)) < 0.5).astype(np.uint8)
    Xt = (rng.random((300, 30)) < 0.5).astype(np.uint8)
    est = QuadraticProxy(screen="local", n_top=5).fit(X, pair_function(X) + 0.1 * rng.normal(size=(800, 2)))
    assert est.score(Xt, pair_function(Xt)) > 0.95
    res = est.result_
    # y0 = 2 x0 x1 - 1.5 x2 x5 + ...: second differences 2 and -1.5; y1 = -2 x7 x8 + ...
    assert res.pair_scores("full", output=0)[0, 1] == pytest.approx(2.0, abs=0.2)
    assert res.pair_scores("full", output=0)[2, 5] == pytest.approx(-1.5, abs=0.2)
    assert res.pair_scores("full", output=1)[7, 8] == pytest.approx(-2.0, abs=0.2)
    assert res.coefficient((7, 8), output=0) == 0.0 and res.coefficient((0, 1), output=1) == 0.0
    pairs = [tuple(p) for p in est.pairs_.tolist()]
    assert est.candidates_.shape == (len(pairs), 2)
    assert est.candidates_[pairs.index((0, 1)), 0] and not est.candidates_[pairs.index((0, 1)), 1]
    assert est.candidates_[pairs.index((7, 8)), 1] and not est.candidates_[pairs.index((7, 8)), 0]
    assert est.candidates_.sum(axis=0).max() <= 10  # 5 examples: at most 10 pairs each
    for r, key in enumerate(pairs):
        for t in range(2):
            if res.coefficient(key, output=t) != 0:
                assert est.candidates_[r, t]


def test_quadratic_local_groups_give_the_same_fit_as_one_design():
    """Outputs fitted in groups (a small max_pairs) solve the same per-output problems as one shared design."""
    rng = np.random.default_rng(9)
    X = (rng.random((500, 16)) < 0.5).astype(np.uint8)
    Y = np.column_stack([pair_function(X), X[:, 10] * X[:, 12] - X[:, 4], X[:, 2] + X[:, 14] * X[:, 15]])
    Y = Y + 0.1 * rng.normal(size=Y.shape)
    one = QuadraticProxy(n_top=4, tol=1e-9).fit(X, Y)
    grouped = QuadraticProxy(n_top=4, tol=1e-9, max_pairs=6).fit(X, Y)
    Xt = (rng.random((200, 16)) < 0.5).astype(np.uint8)
    np.testing.assert_allclose(grouped.predict(Xt), one.predict(Xt), atol=1e-7)
    np.testing.assert_array_equal(grouped.pairs_, one.pairs_)


def test_output_groups_cap_the_union_of_pairs():
    from dataspex.fit.estimators.quadratic import _output_groups, _own_pairs

    own = _own_pairs(np.array([[3.0, 0.0, 1.0], [2.0, 1.0, 0.5], [1.0, 2.0, 0.0], [0.0, 0.0, 0.0]]), 3)
    assert own == [[(0, 1), (0, 2), (1, 2)], [(1, 2)], [(0, 1)]]
    assert [g.tolist() for g in _output_groups(own, 3)] == [[0, 1, 2]]
    assert [g.tolist() for g in _output_groups(own, 2)] == [[0], [1, 2]]
    assert [g.tolist() for g in _output_groups(own, 1)] == [[0], [1], [2]]
