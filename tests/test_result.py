"""InteractionResult against brute force over all 2^n masks."""

import itertools
import math
import os

import numpy as np
import pytest

from dataspex.core.errors import DataspexError
from dataspex.estimators import DataspexInputError, InteractionResult
from dataspex.fit.estimators.transforms import all_masks, fourier_from_values, fourier_to_moebius_dense, subset_index

N = 7


def random_result(n=N, T=3, n_keys=9, max_degree=3, seed=0):
    rng = np.random.default_rng(seed)
    keys = {()}
    while len(keys) < n_keys:
        d = int(rng.integers(1, max_degree + 1))
        keys.add(tuple(sorted(rng.choice(n, size=d, replace=False).tolist())))
    keys = sorted(keys, key=lambda k: (len(k), k))
    return InteractionResult(n, keys, rng.normal(size=(len(keys), T)), output_names=[f"t{t}" for t in range(T)])


def values_on_cube(res):
    """f on all masks by the definition sum_k F[k] (-1)^{|k & x|} (no library code)."""
    X = all_masks(res.n_features).astype(int)
    out = np.zeros((len(X), res.n_outputs))
    for k, row in zip(res.keys, res.fourier):
        out += np.outer((-1.0) ** X[:, list(k)].sum(axis=1), row)
    return out


def second_difference(y, n, i, j, context):
    """f(ctx+i+j) - f(ctx+i) - f(ctx+j) + f(ctx) with ctx a subset code excluding i, j."""
    bi, bj = 1 << i, 1 << j
    return y[context | bi | bj] - y[context | bi] - y[context | bj] + y[context]


@pytest.fixture(scope="module")
def res():
    return random_result()


@pytest.fixture(scope="module")
def cube(res):
    return values_on_cube(res)


def test_predict_matches_definition(res, cube):
    np.testing.assert_allclose(res.predict(all_masks(N)), cube, atol=1e-12)
    np.testing.assert_allclose(res.predict(all_masks(N).astype(bool)), cube, atol=1e-12)
    assert res.n_outputs == 3 and res.degree == max(len(k) for k in res.keys)


def test_moebius_roundtrip(res, cube):
    keys, a = res.moebius()
    dense = fourier_to_moebius_dense(fourier_from_values(cube))
    got = np.zeros_like(dense)
    for k, row in zip(keys, a):
        got[subset_index(k)] = row
    np.testing.assert_allclose(got, dense, atol=1e-10)
    back = InteractionResult.from_moebius(N, keys, a)
    np.testing.assert_allclose(back.predict(all_masks(N)), cube, atol=1e-10)
    # Moebius definition: f(x) = sum_{S subset x} a[S]
    X = all_masks(N)
    direct = sum(np.outer(np.all(X[:, list(k)] == 1, axis=1), row) for k, row in zip(keys, a))
    np.testing.assert_allclose(direct, cube, atol=1e-10)


def test_pair_scores_uniform_and_full(res, cube):
    n, full = N, 2**N - 1
    U = res.pair_scores("uniform", output=1)
    D = res.pair_scores("full", output=1)
    Dm = res.pair_scores("full", output="mean")
    for i, j in itertools.combinations(range(n), 2):
        others = [c for c in range(2**n) if not c & ((1 << i) | (1 << j))]
        avg = np.mean([second_difference(cube[:, 1], n, i, j, c) for c in others])
        assert U[i, j] == pytest.approx(avg, abs=1e-10) and U[j, i] == U[i, j]
        ctx = full & ~((1 << i) | (1 << j))
        assert D[i, j] == pytest.approx(second_difference(cube[:, 1], n, i, j, ctx), abs=1e-10)
        assert Dm[i, j] == pytest.approx(second_difference(cube, n, i, j, ctx).mean(), abs=1e-10)
    assert np.all(np.diag(D) == 0)


def test_pair_effects_and_main_effects(res, cube):
    n, full = N, 2**N - 1
    Eu = res.pair_effects("uniform", output=0)
    Ef = res.pair_effects("full", output=0)
    g = res.main_effects("full", output=0)
    for i in range(n):
        assert g[i] == pytest.approx(cube[full, 0] - cube[full & ~(1 << i), 0], abs=1e-10)
    for i, j in itertools.combinations(range(n), 2):
        b = (1 << i) | (1 << j)
        others = [c for c in range(2**n) if not c & b]
        assert Eu[i, j] == pytest.approx(np.mean([cube[c | b, 0] - cube[c, 0] for c in others]), abs=1e-10)
        assert Ef[i, j] == pytest.approx(cube[full, 0] - cube[full & ~b, 0], abs=1e-10)


def _brute_indices(y, n, i, j):
    """Banzhaf and Shapley interaction indices of {i, j} by their definitions."""
    rest = [c for c in range(n) if c not in (i, j)]
    banz = shap = 0.0
    for r in range(len(rest) + 1):
        w = math.factorial(r) * math.factorial(n - r - 2) / math.factorial(n - 1)
        for S in itertools.combinations(rest, r):
            ctx = sum(1 << s for s in S)
            d = second_difference(y, n, i, j, ctx)
            banz += d / 2 ** (n - 2)
            shap += w * d
    return banz, shap


def test_banzhaf_and_shapley_indices(res, cube):
    B = res.interaction_index("banzhaf", output=2)
    S = res.interaction_index("shapley", output=2)
    np.testing.assert_allclose(B, res.pair_scores("uniform", output=2), atol=1e-10)
    for i, j in itertools.combinations(range(N), 2):
        banz, shap = _brute_indices(cube[:, 2], N, i, j)
        assert B[i, j] == pytest.approx(banz, abs=1e-10)
        assert S[i, j] == pytest.approx(shap, abs=1e-10)


def test_top_pairs_kinds_and_ranking():
    # f = loss. (0,1): harmful, synergistic (only together they raise the loss);
    # (2,3): redundant near-duplicates (either alone keeps loss low, removing both hurts);
    # (4,5): harmful, masking (either alone raises the loss as much as both: an OR of harm).
    n = 6
    X = all_masks(n).astype(float)
    y = 2.0 * X[:, 0] * X[:, 1] + 1.0 * (1 - X[:, 2]) * (1 - X[:, 3]) + 0.1 * X[:, 4]
    masking = 1.5 * np.maximum(X[:, 4], X[:, 5])
    y2 = 0.5 * X[:, 0] * X[:, 1]
    F = fourier_from_values(np.stack([y, y2], axis=1))
    keys = [tuple(i for i in range(n) if (c >> i) & 1) for c in range(2**n)]
    res = InteractionResult(n, keys, F, output_names=["a", "b"])
    for est in ("uniform", "full"):
        harm = res.top_pairs("harmful", k=5, estimand=est, output=0)
        assert list(harm.columns) == ["i", "j", "output", "score", "joint_effect", "pattern", "estimand"]
        assert (harm.iloc[0].i, harm.iloc[0].j) == (0, 1) and harm.iloc[0].output == "a"
        assert harm.iloc[0].pattern == "synergistic" and (harm.joint_effect > 0).all()
        red = res.top_pairs("redundant", k=5, estimand=est, output=0)
        assert (red.iloc[0].i, red.iloc[0].j) == (2, 3) and red.iloc[0].joint_effect < 0
    full = res.top_pairs("harmful", k=3, estimand="full", output=0)
    assert full.iloc[0].score == pytest.approx(2.0) and full.iloc[0].joint_effect == pytest.approx(2.0)
    every = res.top_pairs("interaction", k=10, output="all")
    assert set(every.output) == {"a", "b"} and np.all(np.diff(np.abs(every.score)) <= 0)
    F_mask = fourier_from_values(np.stack([y + masking, y2], axis=1))
    res_mask = InteractionResult(n, keys, F_mask, output_names=["a", "b"])
    for est in ("uniform", "full"):
        harm = res_mask.top_pairs("harmful", k=5, estimand=est, output=0)
        rows = {(r.i, r.j): r for r in harm.itertuples()}
        assert rows[(4, 5)].pattern == "masking" and rows[(4, 5)].score < 0 and rows[(4, 5)].joint_effect > 0
        assert res_mask.top_pairs("complementary", k=5, estimand=est, output=0).empty
    # ranked by |score|: the masking pair's -1.5 sits between the synergistic 2.0 and anything smaller
    assert list(zip(harm.i, harm.j))[:2] == [(0, 1), (4, 5)]
    mean = res.top_pairs("harmful", output="mean")
    assert mean.iloc[0].score == pytest.approx(4 * res.coefficient((0, 1)))
    with pytest.raises(DataspexInputError):
        res.top_pairs("nonsense")


def test_to_frame_and_save_load(tmp_path, res):
    df = res.to_frame()
    assert list(df.columns) == ["output", "key", "order", "fourier"] and len(df) == res.n_keys * 3
    assert df.key.iloc[0] == () and set(df.output) == {"t0", "t1", "t2"}
    same_len = InteractionResult(4, [(0, 1), (2, 3)], np.ones((2, 2))).to_frame()
    assert same_len.key.tolist() == [(0, 1), (2, 3)] * 2 and same_len.output.tolist() == [0, 0, 1, 1]
    dm = res.to_frame(basis="moebius", key_format="str")
    assert "moebius" in dm.columns and isinstance(dm.key.iloc[1], str)
    path = tmp_path / "res.npz"
    res.save(path)
    assert os.listdir(tmp_path) == ["res.npz"]  # the temp file was renamed, nothing left
    with np.load(path, allow_pickle=False) as z:  # readable without pickle
        assert z["fourier"].shape == res.fourier.shape
    back = InteractionResult.load(path)
    assert back.keys == res.keys and back.output_names == res.output_names
    np.testing.assert_array_equal(back.fourier, res.fourier)
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(DataspexError):
        InteractionResult.load(tmp_path / "bad.npz")
    with pytest.raises(DataspexError):
        InteractionResult.load(tmp_path / "missing.npz")


def test_to_shapiq_matches_shapiq_converter(res):
    keys, a = res.moebius()
    iv = res.to_shapiq(output=1)
    assert iv.index == "Moebius" and iv.n_players == N
    for k, v in zip(keys, a[:, 1]):
        assert iv[k] == pytest.approx(v)
    sii = res.to_shapiq(output=1, index="SII", order=2)
    S = res.interaction_index("shapley", output=1)
    for i, j in itertools.combinations(range(N), 2):
        assert sii[(i, j)] == pytest.approx(S[i, j], abs=1e-10)
    # faithful Banzhaf at full order is the Moebius transform again
    fb = res.to_shapiq(output=1, index="FBII", order=N)
    for k, v in zip(keys, a[:, 1]):
        if k:
            assert fb[k] == pytest.approx(v, abs=1e-10)


def test_bad_inputs():
    res = random_result(n=5, n_keys=4)
    with pytest.raises(DataspexInputError, match="columns"):
        res.predict(np.ones((2, 6), dtype=np.uint8))
    with pytest.raises(ValueError):  # DataspexInputError is a ValueError too
        res.predict(np.full((2, 5), 2))
    with pytest.raises(DataspexInputError):
        InteractionResult(3, [(0, 5)], np.ones((1, 1)))
    with pytest.raises(DataspexInputError):
        InteractionResult(3, [(0,), (1,)], np.ones((3, 1)))
    with pytest.raises(DataspexInputError):
        res.pair_scores("nonsense")
    merged = InteractionResult(3, [(1, 0), (0, 1)], np.ones((2, 1)))
    assert merged.keys == [(0, 1)] and merged.fourier[0, 0] == 2.0
