"""Tests of the SPEX design, its BCH delays and the batched peeling decoder."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
from sklearn.base import clone

from dataspex.design._bch import BCHCode, GF2m
from dataspex.fit.estimators.base import DataspexInputError
from dataspex.fit.estimators.spex import SPEX, SpexDesign
from dataspex.fit.estimators.transforms import fourier_features

# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------


def sparse_function(n, s, t, T, rng, shared=False):
    """Random s-sparse degree <= t spectra for T outputs: (keys, F (n_keys, T)).

    Each output gets its own support (the constant plus s - 1 keys) unless ``shared``;
    magnitudes are in [0.5, 2] so every term is clearly identifiable without noise.
    """
    supports = []
    for out in range(T):
        if shared and supports:
            supports.append(supports[0])
            continue
        keys = {()}
        while len(keys) < s:
            d = int(rng.integers(1, t + 1))
            keys.add(tuple(sorted(int(i) for i in rng.choice(n, d, replace=False))))
        supports.append(sorted(keys))
    all_keys = sorted(set().union(*supports), key=lambda k: (len(k), k))
    col = {k: i for i, k in enumerate(all_keys)}
    F = np.zeros((len(all_keys), T))
    for out, keys in enumerate(supports):
        for k in keys:
            F[col[k], out] = rng.choice([-1.0, 1.0]) * rng.uniform(0.5, 2.0)
    return all_keys, F


def evaluate(masks, keys, F):
    return fourier_features(masks, keys) @ F


def as_dict(keys, F, out, tol=1e-8):
    return {k: F[i, out] for i, k in enumerate(keys) if abs(F[i, out]) > tol}


def assert_exact(result, keys, F, tol=1e-6):
    for out in range(F.shape[1]):
        want = as_dict(keys, F, out)
        got = as_dict(result.keys, result.fourier, out, tol=tol)
        assert set(got) == set(want), f"output {out}: support differs"
        for k, v in want.items():
            assert got[k] == pytest.approx(v, abs=tol)


# ---------------------------------------------------------------------------------------------
# BCH
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("m", range(2, 17))
def test_field_tables_are_primitive(m):
    gf = GF2m(m)  # raises if the tabulated polynomial is not primitive
    a = np.arange(1, gf.size)
    assert np.all(gf.mul(a, gf.inv(a)) == 1)


@pytest.mark.parametrize("n,t", [(10, 1), (15, 2), (40, 2), (20, 3), (7, 3), (12, 4)])
def test_bch_decodes_every_weight_le_t_pattern(n, t):
    code = BCHCode(n, t)
    assert code.n_parity <= t * code.m
    patterns = [s for w in range(t + 1) for s in itertools.combinations(range(n), w)]
    sup = np.full((len(patterns), t), -1)
    for r, s in enumerate(patterns):
        sup[r, : len(s)] = s
    decoded, ok = code.decode(code.syndrome(sup))
    assert ok.all()
    np.testing.assert_array_equal(decoded, sup)


@pytest.mark.parametrize("n,t", [(31, 3), (100, 2), (31, 5)])
def test_bch_generator_multiples_have_zero_syndrome_and_decodes_are_consistent(n, t):
    code = BCHCode(n, t)
    g_positions = [i for i in range(code.n_parity + 1) if (code.generator >> i) & 1]
    for shift in range(code.n - code.n_parity):
        assert not code.syndrome(np.array([[i + shift for i in g_positions]])).any()
    # Arbitrary syndromes: most are not within distance t of a codeword; those that decode
    # must re-encode to themselves.
    rng = np.random.default_rng(0)
    junk = rng.integers(0, 2, size=(2000, code.n_parity))
    decoded, ok = code.decode(junk)
    assert 0 < ok.sum() < len(junk)
    np.testing.assert_array_equal(code.syndrome(decoded[ok]), junk[ok])
    assert np.all(decoded[~ok] == -1)


# ---------------------------------------------------------------------------------------------
# Design
# ---------------------------------------------------------------------------------------------


def test_design_budget_and_shapes():
    d = SpexDesign(64, budget=5000, max_degree=3, random_state=0)
    per_bin = d.n_groups * d.n_delays
    assert d.n_masks == per_bin * 2**d.b <= 5000 < per_bin * 2 ** (d.b + 1)
    assert d.n_delays - 1 <= 3 * 7  # P <= t * ceil(log2(n + 1))
    X = d.masks()
    assert X.shape == (d.n_masks, 64) and X.dtype == np.uint8
    assert not d.delays[0].any()
    with pytest.raises(DataspexInputError):
        SpexDesign(64, budget=50, max_degree=3)
    with pytest.raises(DataspexInputError):
        SpexDesign(64, budget=5000, b=4)


def test_design_dict_rebuilds_exact_masks():
    d = SpexDesign(50, b=4, n_groups=3, max_degree=2, random_state=7)
    data = json.loads(json.dumps(d.to_dict()))
    d2 = SpexDesign.from_dict(data)
    assert d2 == d and d2.seed == 7
    np.testing.assert_array_equal(d2.masks(), d.masks())
    # The recorded seed regenerates the same design too.
    np.testing.assert_array_equal(
        SpexDesign(50, b=4, max_degree=2, random_state=7).masks(), d.masks()
    )
    data["delays"][1] = data["delays"][2]
    with pytest.raises(DataspexInputError):
        SpexDesign.from_dict(data)
    with pytest.raises(DataspexInputError):
        SpexDesign.from_dict({"format": "something else"})


def test_design_offsets():
    zeros = SpexDesign(30, b=3, max_degree=2, random_state=1, offset="zeros").masks()
    ones = SpexDesign(30, b=3, max_degree=2, random_state=1, offset="ones").masks()
    rand = SpexDesign(30, b=3, max_degree=2, random_state=1).masks()
    assert not zeros[0].any() and ones[0].all()  # empty set vs full data set at l = 0, p = 0
    np.testing.assert_array_equal(ones, 1 - zeros)
    assert len(np.unique(rand, axis=0)) == len(rand)  # no repeated retrains
    assert len(np.unique(zeros, axis=0)) < len(zeros)


# ---------------------------------------------------------------------------------------------
# Decoder: exact recovery
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("offset", ["random", "ones", "zeros"])
def test_exact_recovery_single_output(offset):
    rng = np.random.default_rng(0)
    keys, F = sparse_function(64, 20, 3, 1, rng)
    d = SpexDesign(64, budget=5000, max_degree=3, random_state=1, offset=offset)
    X = d.masks()
    est = SPEX(d).fit(X, evaluate(X, keys, F)[:, 0])
    assert_exact(est.result_, keys, F)
    held_out = rng.integers(0, 2, size=(500, 64))
    pred = est.predict(held_out)
    assert pred.shape == (500,)
    np.testing.assert_allclose(pred, evaluate(held_out, keys, F)[:, 0], atol=1e-6)


def test_exact_recovery_batched_outputs_with_different_supports():
    rng = np.random.default_rng(1)
    T = 8
    keys, F = sparse_function(64, 20, 3, T, rng)
    d = SpexDesign(64, budget=5000, max_degree=3, random_state=2)
    X = d.masks()
    Y = evaluate(X, keys, F)
    est = SPEX(d).fit(X, Y)
    assert est.n_outputs_ == T and est.result_.fourier.shape[1] == T
    assert_exact(est.result_, keys, F)
    # Batched decoding gives what fitting each output alone gives.
    alone = SPEX(d).fit(X, Y[:, 3]).result_
    both = est.result_
    assert (
        as_dict(alone.keys, alone.fourier, 0).keys() == as_dict(both.keys, both.fourier, 3).keys()
    )
    assert est.score(X, Y) == pytest.approx(1.0)


def test_peeled_values_without_refit_are_exact():
    rng = np.random.default_rng(2)
    keys, F = sparse_function(40, 10, 2, 3, rng)
    d = SpexDesign(40, b=5, max_degree=2, random_state=3)
    X = d.masks()
    est = SPEX(d, refit=False).fit(X, evaluate(X, keys, F))
    assert_exact(est.result_, keys, F, tol=1e-8)


# ---------------------------------------------------------------------------------------------
# Decoder: noise
# ---------------------------------------------------------------------------------------------


def test_noisy_recovery_degrades_gracefully():
    """SNR = var(f) / var(noise) = 5 on every retrain: held-out R^2 stays high."""
    rng = np.random.default_rng(3)
    T = 6
    keys, F = sparse_function(64, 20, 3, T, rng)
    d = SpexDesign(64, budget=5000, max_degree=3, random_state=4)
    X = d.masks()
    clean = evaluate(X, keys, F)
    noise_sd = np.sqrt(clean.var(axis=0) / 5.0)
    Y = clean + rng.normal(size=clean.shape) * noise_sd
    held_out = rng.integers(0, 2, size=(2000, 64)).astype(np.uint8)
    truth = evaluate(held_out, keys, F)
    soft = SPEX(d).fit(X, Y)
    assert soft.score(held_out, truth) > 0.9
    # The noise estimate is the per-bin variance, noise_sd^2 / 2^b, up to modelling slack.
    ratio = soft.noise_var_ / (noise_sd**2 / d.n_bins)
    assert np.all((ratio > 0.5) & (ratio < 3.0))
    hard = SPEX(d, soft=False).fit(X, Y)
    assert soft.score(held_out, truth) >= hard.score(held_out, truth) - 0.02


# ---------------------------------------------------------------------------------------------
# API and bad input
# ---------------------------------------------------------------------------------------------


def test_design_as_fit_keyword_or_dict():
    rng = np.random.default_rng(4)
    keys, F = sparse_function(30, 8, 2, 2, rng)
    d = SpexDesign(30, b=4, max_degree=2, random_state=5)
    X = d.masks()
    Y = evaluate(X, keys, F)
    a = SPEX(d).fit(X, Y).result_
    b = SPEX().fit(X, Y, design=json.loads(json.dumps(d.to_dict()))).result_
    assert a.keys == b.keys
    np.testing.assert_allclose(a.fourier, b.fourier)
    params = clone(SPEX(d, chase_bits=2)).get_params()
    assert params["chase_bits"] == 2 and params["design"] == d


def test_bad_inputs_raise_clear_errors():
    d = SpexDesign(30, b=3, max_degree=2, random_state=6)
    X = d.masks()
    Y = np.random.default_rng(0).normal(size=(len(X), 2))
    with pytest.raises(DataspexInputError, match="design"):
        SPEX().fit(X, Y)
    with pytest.raises(DataspexInputError, match="differ from the SPEX design"):
        SPEX(d).fit(X[::-1], Y)
    with pytest.raises(DataspexInputError, match="shape"):
        SPEX(d).fit(X[:-1], Y[:-1])
    other = SpexDesign(30, b=3, max_degree=2, random_state=7)
    with pytest.raises(DataspexInputError, match="differ from the SPEX design"):
        SPEX(other).fit(X, Y)
    Y_nan = Y.copy()
    Y_nan[5, 1] = np.nan
    with pytest.raises(DataspexInputError, match="NaN"):
        SPEX(d).fit(X, Y_nan)
    with pytest.raises(DataspexInputError):
        SPEX(d).fit(X, Y[:-1])
    with pytest.raises(DataspexInputError):
        SPEX(design="not a design").fit(X, Y)


# ---------------------------------------------------------------------------------------------
# Cross-check against shapiq's SPEX (shapiq is a test-only dependency; ~15 s, mostly its JIT)
# ---------------------------------------------------------------------------------------------


def test_same_support_as_shapiq_spex():
    """Both recover the same interactions of one sparse function.

    shapiq reports Faithful Banzhaf indices up to order t; for a function of degree <= t these
    are its Moebius coefficients, so we compare with ``result_.moebius()``.
    """
    approximator = pytest.importorskip("shapiq.approximator")
    n, t, budget = 32, 2, 2000
    rng = np.random.default_rng(5)
    keys, F = sparse_function(n, 10, t, 1, rng)

    def game(coalitions):
        return evaluate(np.asarray(coalitions, dtype=np.uint8), keys, F)[:, 0]

    ref = approximator.SPEX(n=n, index="FBII", max_order=t, random_state=0, degree_parameter=t)
    values = ref.approximate(budget, game)
    ref_support = {k for k, i in values.interaction_lookup.items() if abs(values.values[i]) > 1e-6}

    d = SpexDesign(n, budget=budget, max_degree=t, random_state=0)
    X = d.masks()
    mk, mv = SPEX(d).fit(X, game(X)).result_.moebius()
    ours = {k for k, v in zip(mk, mv[:, 0]) if abs(v) > 1e-6}
    assert ours == ref_support


def test_refit_equals_least_squares_on_all_masks():
    """The bin-domain normal equations equal ordinary least squares on the design masks."""
    rng = np.random.default_rng(6)
    keys, F = sparse_function(40, 12, 2, 2, rng)
    d = SpexDesign(40, b=5, max_degree=2, random_state=8)
    X = d.masks()
    Y = evaluate(X, keys, F) + 0.3 * rng.normal(size=(len(X), 2))
    res = SPEX(d, alpha=0.0).fit(X, Y).result_
    for out in range(2):
        support = [k for i, k in enumerate(res.keys) if res.fourier[i, out] != 0 or k == ()]
        coef, *_ = np.linalg.lstsq(fourier_features(X, support), Y[:, out], rcond=None)
        got = [res.fourier[res.keys.index(k), out] for k in support]
        np.testing.assert_allclose(got, coef, atol=1e-9)
