"""Brute-force checks of the cube transforms (dataspex.fit.estimators.transforms)."""

import itertools

import numpy as np
import pytest

from dataspex.fit.estimators.transforms import (
    ParityEncoder,
    all_masks,
    fourier_features,
    fourier_from_values,
    fourier_predict,
    fourier_to_moebius_dense,
    fwht,
    index_subset,
    moebius_to_fourier_dense,
    subset_index,
    values_from_fourier,
)


def test_all_masks_bit_order():
    X = all_masks(4)
    assert X.shape == (16, 4) and X.dtype == np.uint8
    for r in range(16):
        assert [int(v) for v in X[r]] == [(r >> i) & 1 for i in range(4)]
    assert subset_index((0, 2)) == 5 and index_subset(5, 4) == (0, 2)


def test_fwht_equals_hadamard_matrix_and_is_involution():
    n = 5
    X = all_masks(n)
    H = (-1.0) ** (X.astype(int) @ X.T.astype(int))  # H[r, k] = (-1)^{|r & k|}
    a = np.random.default_rng(0).normal(size=(2**n, 3))
    np.testing.assert_allclose(fwht(a), H @ a, atol=1e-12)
    np.testing.assert_allclose(fwht(a[:, 0]), H @ a[:, 0], atol=1e-12)
    np.testing.assert_allclose(fwht(fwht(a)) / 2**n, a, atol=1e-12)


def test_fourier_roundtrip_of_planted_sparse_function():
    n, rng = 7, np.random.default_rng(1)
    F = np.zeros((2**n, 2))
    F[[0, 3, 9, 70, 127], :] = rng.normal(size=(5, 2))
    X = all_masks(n)
    y = values_from_fourier(F)
    # definition: f(x) = sum_k F[k] (-1)^{|k & x|}
    brute = np.array([[sum(F[k, t] * (-1) ** bin(k & r).count("1") for k in range(2**n)) for t in range(2)] for r in range(2**n)])
    np.testing.assert_allclose(y, brute, atol=1e-12)
    np.testing.assert_allclose(fourier_from_values(y), F, atol=1e-12)
    assert X.shape[0] == y.shape[0]


def test_moebius_dense_matches_inclusion_exclusion():
    n, rng = 6, np.random.default_rng(2)
    y = rng.normal(size=(2**n, 2))
    # Moebius inversion by definition: a[S] = sum_{R subset S} (-1)^{|S|-|R|} f(R)
    a = np.zeros_like(y)
    for S in range(2**n):
        R = S
        while True:
            a[S] += (-1) ** (bin(S).count("1") - bin(R).count("1")) * y[R]
            if R == 0:
                break
            R = (R - 1) & S
    F = fourier_from_values(y)
    np.testing.assert_allclose(fourier_to_moebius_dense(F), a, atol=1e-10)
    np.testing.assert_allclose(moebius_to_fourier_dense(a), F, atol=1e-10)
    np.testing.assert_allclose(fourier_to_moebius_dense(F[:, 0]), a[:, 0], atol=1e-10)


def test_fourier_features_match_definition_and_predict():
    rng = np.random.default_rng(3)
    m, n = 130, 50  # m not a multiple of 64: exercises word padding
    X = rng.random((m, n)) < 0.5  # bool input
    keys = [()] + [tuple(sorted(rng.choice(n, size=d, replace=False).tolist())) for d in (1, 2, 3, 4, 2, 1)]
    Phi = fourier_features(X, keys)
    brute = np.stack([(-1.0) ** X[:, list(k)].sum(axis=1) for k in keys], axis=1)
    np.testing.assert_array_equal(Phi, brute)
    np.testing.assert_array_equal(ParityEncoder(X).features(keys, dtype=np.float32), brute.astype(np.float32))
    coef = rng.normal(size=(len(keys), 4))
    np.testing.assert_allclose(fourier_predict(X, keys, coef, block=3), brute @ coef, atol=1e-12)
    np.testing.assert_allclose(fourier_predict(X, keys, coef[:, 0]), brute @ coef[:, 0], atol=1e-12)


def test_fourier_features_on_all_masks_are_hadamard_columns():
    n = 4
    X = all_masks(n)
    keys = [k for d in range(n + 1) for k in itertools.combinations(range(n), d)]
    Phi = fourier_features(X, keys)
    H = fwht(np.eye(2**n))
    for c, k in enumerate(keys):
        np.testing.assert_array_equal(Phi[:, c], H[:, subset_index(k)])


def test_parity_encoder_rejects_bad_key():
    with pytest.raises(ValueError):
        ParityEncoder(np.zeros((3, 4), dtype=np.uint8)).features([(7,)])
