"""benchmarks/spectrum.py: Walsh energies by order from pairs of retrains, against brute force and known spectra."""

from __future__ import annotations

from itertools import combinations, product

import numpy as np
import pytest

from tests.benchmark_scripts import load_benchmark

spectrum = load_benchmark("spectrum")


def characters(masks: np.ndarray, subset) -> np.ndarray:
    return np.prod(2.0 * masks[:, list(subset)] - 1.0, axis=1)


def test_krawtchouk_is_the_sum_of_character_products_over_subsets_of_one_size_by_brute_force():
    n = 6
    masks = np.array(list(product([0, 1], repeat=n)), dtype=np.uint8)
    d = spectrum.hamming(masks, masks)
    for k in range(n + 1):
        brute = sum(np.outer(characters(masks, S), characters(masks, S)) for S in combinations(range(n), k))
        assert np.array_equal(spectrum.krawtchouk(k, n)[d], brute), k


def test_pair_kernel_is_the_sum_over_pairs_inside_its_members_and_all_columns_give_order_two():
    n = 6
    masks = np.array(list(product([0, 1], repeat=n)), dtype=np.uint8)
    members = np.array([0, 2, 5])
    brute = sum(np.outer(characters(masks, S), characters(masks, S)) for S in combinations(members, 2))
    assert np.allclose(spectrum.pair_kernel(masks, members), brute)
    order_two = spectrum.krawtchouk(2, n)[spectrum.hamming(masks, masks)]
    assert np.allclose(spectrum.pair_kernel(masks, np.arange(n)), order_two)


def test_energies_recover_a_known_spectrum_under_seed_noise():
    rng = np.random.default_rng(0)
    n, M = 12, 6000
    X = (rng.random((M, n)) < 0.5).astype(np.uint8)
    s = 2.0 * X - 1.0
    g = 0.8 * s[:, 0] - 0.5 * s[:, 3] + 0.6 * s[:, 1] * s[:, 2] + 0.4 * s[:, 4] * s[:, 5] * s[:, 6]
    Y = np.stack([g + 0.5 * rng.standard_normal(M), 0.3 * s[:, 7] + 0.5 * rng.standard_normal(M)], axis=1)
    V = ((Y - Y.mean(0)) ** 2).sum() / (M - 1)
    got = spectrum.energies(X, Y, orders=(1, 2, 3))
    for k, truth in {1: 0.64 + 0.25 + 0.09, 2: 0.36, 3: 0.16}.items():
        share, se = got[k]
        assert 0 < se < 0.02
        assert share == pytest.approx(truth / V, abs=3 * se), k
    # noise alone has no energy at any order, and the pair families split order 2 where its pair lies
    energy = spectrum.Energy(Y)
    assert energy.of(spectrum.pair_kernel(X, np.array([1, 2])))[0] == pytest.approx(0.36 / V, abs=0.02)
    assert abs(energy.of(spectrum.pair_kernel(X, np.arange(8, 12)))[0]) < 0.005



def test_the_kernel_form_and_the_products_pair_energy_are_one_estimate():
    from dataspex.fit.faithfulness import pair_energy

    rng = np.random.default_rng(3)
    n, M = 9, 400
    X = (rng.random((M, n)) < 0.5).astype(np.uint8)
    s = 2.0 * X - 1.0
    Y = np.stack([0.7 * s[:, 1] * s[:, 2] + s[:, 0], 0.5 * s[:, 4] * s[:, 6]], axis=1) + rng.normal(0, 0.5, (M, 2))
    members = np.array([1, 2, 4, 6])
    # every pair inside ``members``, serving every output: the kernel sums their character products
    kernel = spectrum.Energy(Y).of(spectrum.pair_kernel(X, members))[0]
    product_form = pair_energy(X, Y, list(combinations(members.tolist(), 2)), None)["share"]
    assert kernel == pytest.approx(product_form, rel=1e-10)
    # each output its own examples: the screen top_pairs makes, against the kernel of each output alone
    top = np.array([[1, 4], [2, 6], [0, 5]])  # (k = 3, T = 2): each output's three largest weights
    weights = np.zeros((n, 2))
    weights[top[:, 0], 0], weights[top[:, 1], 1] = [3.0, -2.0, 1.0], [0.5, 0.4, -0.3]
    weights[7, 0] = weights[3, 1] = 0.1  # smaller, left out
    pairs, outputs = spectrum.top_pairs(weights, 3)
    assert sorted(map(tuple, pairs)) == [(0, 1), (0, 2), (1, 2), (4, 5), (4, 6), (5, 6)]
    assert all(ts == ([0] if max(p) < 3 else [1]) for p, ts in zip(pairs, outputs))
    Yc = Y - Y.mean(0)
    V = (Yc ** 2).sum() / (M - 1)
    by_hand = 0.0
    for t in range(2):
        products = np.outer(Yc[:, t], Yc[:, t])
        np.fill_diagonal(products, 0.0)
        by_hand += (products * spectrum.pair_kernel(X, top[:, t])).sum() / (M * (M - 1)) / V
    assert pair_energy(X, Y, pairs, outputs)["share"] == pytest.approx(by_hand, rel=1e-10)
