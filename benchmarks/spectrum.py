"""Where the mask-determined variance sits by interaction order, without fitting a model: the Walsh energy of each
order from pairs of retrains.

On uniform masks (design.p = 0.5) every set function g has a Walsh expansion g(x) = sum_S c_S chi_S(x), with
chi_S(x) = prod_{i in S} (2 x_i - 1), and its variance is sum_{S nonempty} c_S^2. The energy of order k,
E_k = sum_{|S| = k} c_S^2, has an unbiased estimate from the retrains themselves: c_S = E[y chi_S(x)], so for two
different masks x, x' (independent draws, independent seed noise) E[y y' chi_S(x) chi_S(x')] = c_S^2, and summed
over |S| = k the product of characters depends only on the Hamming distance d of the two masks:
sum_{|S|=k} chi_S(x) chi_S(x') = K_k(d), the Krawtchouk polynomial sum_j (-1)^j C(d, j) C(n - d, k - j). So

    E_k ~ mean over ordered pairs i != j of y_i y_j K_k(d_ij)

with no model, no penalty and no budget limit; only its noise grows with k (K_k is of order n^(k/2) at d ~ n/2).
Outputs are centred per test example first (the empty set's energy is the mean squared). Pooled over test
examples and divided by the pooled variance of one retrain, E_1 is the share a perfect main-effects model would
explain (compare least squares' limit in ``bias_variance.py``), E_2 the share in pairs of every kind, dense or
sparse, and ceiling - E_1 - E_2 what lies in orders 3 and up. The standard errors are a delete-one-group jackknife
over 16 groups of masks.

The same estimate restricted to a family of pairs (the products of their characters over two masks sum to
((k - 2 d)^2 - k) / 2 for the pairs inside k examples at Hamming distance d there) says where the order-2 energy
lies: pairs of two examples of one class, pairs across classes, and pairs among each test example's k examples of
largest least-squares main effect (the candidates a local pair model screens; chosen on the fit masks, which the
estimate also uses: main effects and pair characters are orthogonal, so the choice should bias it little).

    python benchmarks/spectrum.py --run /tmp/runs/f256u_4096
"""

from __future__ import annotations

import argparse
import os
import sys
from math import comb

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def krawtchouk(k: int, n: int) -> np.ndarray:
    """K_k(d) for d = 0..n: sum over the subsets S of size k of chi_S(x) chi_S(x') for masks at Hamming distance d,
    (n + 1,) float."""
    return np.array([sum((-1) ** j * comb(d, j) * comb(n - d, k - j) for j in range(k + 1)) for d in range(n + 1)],
                    dtype=np.float64)


def hamming(A: np.ndarray, B: np.ndarray) -> np.ndarray:
    """Hamming distances between the 0/1 rows of A (a, n) and B (b, n): (a, b) int64."""
    A, B = A.astype(np.float64), B.astype(np.float64)
    return np.rint(A @ (1.0 - B).T + (1.0 - A) @ B.T).astype(np.int64)


def pair_kernel(masks: np.ndarray, members: np.ndarray) -> np.ndarray:
    """sum over the pairs {a, b} inside ``members`` (indices into the n columns) of chi_ab(x) chi_ab(x') for every
    two masks: (1/2) ((k - 2 d)^2 - k) with d their Hamming distance on those k columns, (M, M)."""
    k = len(members)
    sub = masks[:, members]
    agree = k - 2.0 * hamming(sub, sub)
    return 0.5 * (agree ** 2 - k)


def top_pairs(weights: np.ndarray, k: int) -> tuple[list, list]:
    """The pairs among each output's k examples of largest |weights| (n, T), chosen as the local quadratic model
    chooses its own (``_own_pairs`` of :mod:`dataspex.fit.estimators.quadratic`), as a screen for
    :func:`dataspex.fit.faithfulness.pair_energy`: every pair inside some output's k, and per pair the outputs
    whose k hold both."""
    from dataspex.fit.estimators.quadratic import _own_pairs

    served: dict[tuple[int, int], list[int]] = {}
    for t, pairs in enumerate(_own_pairs(weights, k)):
        for pair in pairs:
            served.setdefault(pair, []).append(t)
    return [list(p) for p in served], list(served.values())


class Energy:
    """Walsh energies of centred outputs Y (M, T) on uniform masks, as shares of the pooled variance of one retrain,
    each with a delete-one-group jackknife SE over ``groups`` random groups of masks."""

    def __init__(self, Y: np.ndarray, groups: int = 16, seed: int = 0):
        self.M = len(Y)
        self.Yc = Y - Y.mean(0)
        self.V = float((self.Yc ** 2).sum() / (self.M - 1))
        labels = np.random.default_rng(seed).permutation(self.M) % groups
        self.onehot = np.eye(groups)[labels]
        self.sizes = self.onehot.sum(0)
        self.groups = groups

    def of(self, kernel) -> tuple[float, float]:
        """Energy of the characters whose products over two masks sum to ``kernel`` (M, M), pooled over outputs.
        Returns (share, SE). For a family of pairs this is :func:`dataspex.fit.faithfulness.pair_energy` in kernel
        form (the same share; tested equal): the kernel suits large families such as every pair within a class,
        the product form a few pairs per output."""
        products = self.Yc @ self.Yc.T
        np.fill_diagonal(products, 0.0)  # pairs of different masks only: a mask's own noise is not signal
        B = self.onehot.T @ (products * kernel) @ self.onehot
        total, M, sizes = B.sum(), self.M, self.sizes
        leave = (total - 2 * B.sum(1) + np.diag(B)) / ((M - sizes) * (M - sizes - 1)) / self.V
        se = float(np.sqrt((self.groups - 1) / self.groups * ((leave - leave.mean()) ** 2).sum()))
        return float(total / (M * (M - 1)) / self.V), se


def energies(masks: np.ndarray, Y: np.ndarray, orders=(1, 2), groups: int = 16, seed: int = 0) -> dict:
    """Walsh energy by order of outputs Y (M, T) on uniform masks (M, n), pooled over the T outputs, as shares of
    the pooled variance of Y (centred per output here): {k: (share, jackknife SE over ``groups`` groups of masks)}."""
    n = masks.shape[1]
    D = hamming(masks, masks)
    energy = Energy(Y, groups, seed)
    return {k: energy.of(krawtchouk(k, n)[D]) for k in orders}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", required=True, help="a finished run of a random design at p = 0.5 with replicates")
    parser.add_argument("--orders", default="1,2", help="orders to estimate (3 and up are too noisy at n = 256)")
    parser.add_argument("--top", default="8,32,64", help="pairs among each test example's top-k examples by "
                        "least-squares main effect, for these k")
    parser.add_argument("--groups", type=int, default=16, help="jackknife groups of masks")
    opts = parser.parse_args(argv)

    import pandas as pd

    from dataspex.fit.faithfulness import (
        ceiling_se,
        least_squares_main_effects,
        main_effects_limit,
        pair_energy,
        pooled_ceiling,
    )
    from outputs import replicated_run

    run = replicated_run(opts.run)
    cfg, design, results, fit, ho = run["cfg"], run["design"], run["results"], run["fit"], run["ho"]
    if design.meta.get("kind") != "random" or float(cfg.design.p) != 0.5 or design.units is not None:
        raise SystemExit(f"error: {opts.run}: the Walsh energies here need a random design of examples at p = 0.5")
    loss = results.losses
    rows = fit | ho  # every independent uniform mask; a replicate repeats a held-out mask
    X, Y = results.masks[rows], loss[rows]
    n = X.shape[1]
    energy = Energy(Y, opts.groups)
    D = hamming(X, X)
    got = {f"order {k}": energy.of(krawtchouk(k, n)[D]) for k in (int(k) for k in opts.orders.split(","))}
    labels = pd.read_csv(cfg.data.train_file)[cfg.data.label_column].to_numpy()[:n]
    within = sum(pair_kernel(X, np.flatnonzero(labels == c)) for c in np.unique(labels))
    got["pairs within a class"] = energy.of(within)
    got["pairs across classes"] = energy.of(krawtchouk(2, n)[D] - within)
    coef = least_squares_main_effects(results.masks[fit], loss[fit])[1:]  # (n, T)
    for k in (int(k) for k in opts.top.split(",") if k):
        pairs, outputs = top_pairs(coef, k)
        share = pair_energy(X, Y, pairs, outputs, groups=opts.groups)
        got[f"pairs among each test example's top {k}"] = (share["share"], share["se"])
    pairs = list(run["replica"].items())
    a, b = loss[[x for x, _ in pairs]], loss[[y for _, y in pairs]]
    ceiling, c_se = pooled_ceiling(a, b), ceiling_se(a, b)
    limit = main_effects_limit(results.masks[fit], loss[fit], results.masks[ho], loss[ho])
    print(f"{opts.run}: {len(X)} uniform masks, n = {n}, {loss.shape[1]} test examples; loss ceiling {ceiling:.3f} +- "
          f"{c_se:.3f}, least squares' main-effects limit {limit['r2']:.3f} +- {limit['r2_se']:.3f}", file=sys.stderr)
    print("| part | energy (share of a retrain's variance) | share of the ceiling |")
    print("|---|---:|---:|")
    for name, (v, se) in got.items():
        print(f"| {name} | {v:.3f} +- {se:.3f} | {v / ceiling:.0%} |")
    if {"order 1", "order 2"} <= set(got):
        (e1, s1), (e2, s2) = got["order 1"], got["order 2"]
        rest = ceiling - e1 - e2
        print(f"| orders 3 and up (the ceiling less orders 1 and 2) | {rest:.3f} +- "
              f"{np.sqrt(s1 ** 2 + s2 ** 2 + c_se ** 2):.3f} | {rest / ceiling:.0%} |")
    return {"energies": got, "ceiling": ceiling, "limit": limit}


if __name__ == "__main__":
    main()
