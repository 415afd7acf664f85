"""ProxySPEX: exact tree extraction (vs brute-force WHT) and recovery of planted functions."""

import lightgbm as lgb
import numpy as np
import pytest

from dataspex.estimators import ProxySPEX, booster_to_fourier
from dataspex.fit.estimators.proxyspex import ridge_loo
from dataspex.fit.estimators.transforms import all_masks, fourier_from_values, subset_index
from dataspex.core.metrics import faithfulness_r2

SMALL_GRID = dict(max_depth=(3, 5), n_estimators=(100, 300), learning_rate=(0.05, 0.2), cv=3)


def planted(X):
    """Sparse low-degree function with pairs, a triple and main effects; (m, 2) outputs."""
    X = X.astype(np.float64)
    y0 = 3 * X[:, 0] * X[:, 1] - 2 * X[:, 2] * X[:, 3] + X[:, 4] - 1.5 * X[:, 5] * X[:, 6] * X[:, 7]
    y1 = -2 * X[:, 1] * X[:, 8] + 2 * X[:, 9] + 0.5 * X[:, 0]
    return np.stack([y0, y1], axis=1)


def dense_spectrum(keys, coefs, n):
    out = np.zeros(2**n)
    for k, v in zip(keys, coefs):
        out[subset_index(k)] += v
    return out


@pytest.mark.parametrize(
    "params",
    [
        {"max_depth": 3, "learning_rate": 0.1},
        {"max_depth": 5, "learning_rate": 0.3, "num_leaves": 31},
        {"max_depth": 4, "learning_rate": 0.1, "zero_as_missing": True},  # "Zero" missing type
    ],
)
def test_tree_extraction_equals_wht_of_booster(params):
    """REQUIRED: the extracted spectrum is the exact WHT of the booster on {0,1}^n."""
    n, rng = 10, np.random.default_rng(0)
    X = (rng.random((500, n)) < 0.5).astype(np.float64)
    y = planted(X)[:, 0] + 0.3 * rng.normal(size=500)
    booster = lgb.train(
        {"objective": "regression", "verbose": -1, "min_data_in_leaf": 5, "num_threads": 1, **params},
        lgb.Dataset(X, y),
        num_boost_round=40,
    )
    cube = all_masks(n)
    truth = fourier_from_values(booster.predict(cube.astype(np.float64)))
    keys, coefs = booster_to_fourier(booster)
    np.testing.assert_allclose(dense_spectrum(keys, coefs, n), truth, atol=1e-10)
    assert max(len(k) for k in keys) <= params["max_depth"]
    # the dump dict works as input too, and categorical 0/1 splits ("==") are read correctly
    keys2, coefs2 = booster_to_fourier(booster.dump_model())
    np.testing.assert_allclose(dense_spectrum(keys2, coefs2, n), truth, atol=1e-10)


def test_tree_extraction_categorical_splits():
    n, rng = 6, np.random.default_rng(1)
    X = (rng.random((400, n)) < 0.5).astype(np.float64)
    y = 2 * X[:, 0] * X[:, 1] + X[:, 2] + 0.1 * rng.normal(size=400)
    booster = lgb.train(
        {"objective": "regression", "verbose": -1, "num_threads": 1, "min_data_in_leaf": 5, "min_data_per_group": 5, "cat_smooth": 1},
        lgb.Dataset(X, y, categorical_feature=[0, 1, 2]),
        num_boost_round=20,
    )
    truth = fourier_from_values(booster.predict(all_masks(n).astype(np.float64)))
    keys, coefs = booster_to_fourier(booster)
    np.testing.assert_allclose(dense_spectrum(keys, coefs, n), truth, atol=1e-10)


def _eval_tree(node, x):
    while "leaf_value" not in node:
        v = x[node["split_feature"]]
        node = node["left_child"] if v <= node["threshold"] else node["right_child"]
    return node["leaf_value"]


def test_tree_extraction_repeated_and_vacuous_splits():
    """A feature split twice on a path (x_i^2 = x_i) and a split sending both values one way."""
    leaf = lambda v: {"leaf_value": v}  # noqa: E731
    split = lambda f, left, right, thr=0.5: {  # noqa: E731
        "split_feature": f, "threshold": thr, "decision_type": "<=", "missing_type": "None",
        "default_left": True, "left_child": left, "right_child": right,
    }
    root = split(
        0,
        split(1, split(0, leaf(1.0), leaf(-7.0)), split(2, leaf(2.0), split(0, leaf(3.0), leaf(-9.0)))),
        split(2, split(0, leaf(-5.0), leaf(4.0)), split(1, leaf(5.0), leaf(6.0), thr=1.5)),
    )
    dump = {"max_feature_idx": 2, "tree_info": [{"tree_structure": root}, {"tree_structure": leaf(0.25)}]}
    cube = all_masks(3)
    values = np.array([_eval_tree(root, x) + 0.25 for x in cube])
    keys, coefs = booster_to_fourier(dump)
    np.testing.assert_allclose(dense_spectrum(keys, coefs, 3), fourier_from_values(values), atol=1e-12)


def test_ridge_loo_matches_sklearn_solution():
    from sklearn.linear_model import Ridge

    rng = np.random.default_rng(2)
    Phi, y = rng.normal(size=(80, 6)), rng.normal(size=80)
    coef, intercept, alpha = ridge_loo(Phi, y, np.array([0.1, 1.0, 10.0]))
    ref = Ridge(alpha=alpha).fit(Phi, y)
    np.testing.assert_allclose(coef, ref.coef_, atol=1e-10)
    assert intercept == pytest.approx(ref.intercept_)


@pytest.fixture(scope="module")
def data():
    n, rng = 12, np.random.default_rng(3)
    X = (rng.random((800, n)) < 0.5).astype(np.uint8)
    Xt = (rng.random((400, n)) < 0.5).astype(np.uint8)
    return X, planted(X) + 0.05 * rng.normal(size=(800, 2)), Xt, planted(Xt)


def test_proxyspex_recovers_planted_function(data):
    X, Y, Xt, Yt = data
    est = ProxySPEX(**SMALL_GRID, n_jobs=2).fit(X, Y)
    assert est.score(Xt, Yt) > 0.9
    assert len(est.params_) == 2 and est.params_[0] == est.params_[1]  # shared search
    top = est.result_.top_pairs("interaction", k=3, output=0)
    assert (0, 1) in set(zip(top.i, top.j))
    D = est.result_.pair_scores("full", output=0)
    assert D[0, 1] == pytest.approx(3.0, abs=0.3)  # second difference of 3 x0 x1 at full data


def test_parallel_boosters_give_the_same_result(data, monkeypatch):
    """n_jobs only spreads independent single-threaded boosters over threads: 1, 2 and "auto" (one per usable
    core, here made 3) give bit-identical spectra, search included; a bad value is refused by name."""
    from dataspex.fit.estimators import proxyspex

    X, Y, _, _ = data
    monkeypatch.setattr(proxyspex, "usable_cores", lambda: 3)
    grid = dict(max_depth=(3, 5), n_estimators=(50, 100), learning_rate=(0.1,), cv=3)
    fits = [ProxySPEX(**grid, n_jobs=jobs).fit(X, Y) for jobs in (1, 2, "auto")]
    assert fits[2]._workers() == 3
    for other in fits[1:]:
        assert other.result_.keys == fits[0].result_.keys
        np.testing.assert_array_equal(other.result_.fourier, fits[0].result_.fourier)
        assert other.params_ == fits[0].params_
    for bad in (0, "many", None):
        with pytest.raises(ValueError, match="n_jobs must be a positive int or 'auto'"):
            ProxySPEX(**grid, n_jobs=bad).fit(X, Y)


def test_proxyspex_per_output_search_and_options(data):
    X, Y, Xt, Yt = data
    est = ProxySPEX(max_depth=(3,), n_estimators=(100, 200), learning_rate=(0.1,), cv=3, search="per_output").fit(X, Y[:, 1])
    assert est.predict(Xt).shape == (len(Xt),)
    assert faithfulness_r2(Yt[:, 1], est.predict(Xt)) > 0.9
    raw = ProxySPEX(search="none", max_depth=(4,), n_estimators=(300,), learning_rate=(0.1,), refit=False, energy=None).fit(X, Y)
    assert raw.score(Xt, Yt) > 0.9
    capped = ProxySPEX(search="none", max_depth=(4,), n_estimators=(300,), learning_rate=(0.1,), max_keys=5).fit(X, Y)
    assert capped.n_kept_.max() <= 5


def test_proxyspex_comparable_to_shapiq(data):
    """shapiq's ProxySPEX on the same function and budget: our R^2 is at least as good."""
    from shapiq.approximator import ProxySPEX as ShapiqProxySPEX

    X, Y, Xt, Yt = data
    n, budget = X.shape[1], 400
    approx = ShapiqProxySPEX(n=n, index="FBII", max_order=n, random_state=0)
    iv = approx.approximate(budget, lambda coal: planted(np.asarray(coal))[:, 0])
    # FBII at full order is the Moebius transform: f(x) = sum_S v_S prod_{i in S} x_i
    theirs = sum(v * np.all(Xt[:, list(k)] == 1, axis=1) for k, v in ((k, iv[k]) for k in iv.interaction_lookup))
    r2_theirs = faithfulness_r2(Yt[:, 0], theirs)
    ours = ProxySPEX(n_estimators=(500, 1000), cv=5).fit(X[:budget], Y[:budget, 0])
    r2_ours = faithfulness_r2(Yt[:, 0], ours.predict(Xt))
    assert r2_theirs > 0.8
    assert r2_ours > r2_theirs - 0.03


@pytest.mark.parametrize("params", [{"max_depth": 3}, {"max_depth": -1, "num_leaves": 40}, {"max_depth": 4, "zero_as_missing": True}])
def test_fast_text_extraction_equals_dump_walk_and_prefixes(params):
    """The model-text leaf table (fast path) gives the dump walk's spectrum; prefixes are models."""
    from dataspex.fit.estimators import trees as P
    from dataspex.fit.estimators.transforms import ParityEncoder

    rng = np.random.default_rng(7)
    X = (rng.random((600, 12)) < 0.5).astype(np.float64)
    y = planted(X)[:, 0] + 0.3 * rng.normal(size=600)
    booster = lgb.train(
        {"objective": "regression", "verbose": -1, "min_data_in_leaf": 5, "learning_rate": 0.2, "num_threads": 1, **params},
        lgb.Dataset(X, y), num_boost_round=60,
    )
    fast = P._leaf_table(booster)
    dump = booster.dump_model()
    leaves, ids = [], []
    for t, tree in enumerate(dump["tree_info"]):
        lv = P._tree_leaves(tree["tree_structure"])
        leaves += lv
        ids += [t] * len(lv)
    slow = P._leaf_table_from_list(leaves, ids)
    c1, f1, d1 = P._compact_terms(fast, 20)
    c2, f2, d2 = P._compact_terms(slow, 20)
    a, b = dict(zip(d1(c1), f1)), dict(zip(d2(c2), f2))
    assert set(a) == set(b)
    assert max(abs(a[k] - b[k]) for k in a) < 1e-12
    cc, ff, dd = P._compact_terms(P._prefix(fast, 25), 20)
    pred = ParityEncoder(X[:100].astype(np.uint8)).features(dd(cc)) @ ff
    np.testing.assert_allclose(pred, booster.predict(X[:100], num_iteration=25), atol=1e-10)
