"""Does a design that spans kept fractions predict the full-set interactions `dataspex validate` measured better?

Why: on unplanted fortunes a pair's kind changes with the kept fraction (benchmarks/README.md, "n = 1,024 at
p = 0.25"), so a pair model fitted on half-size training sets can be wrong at the full set, which is what
`validate` measures and what a team acts on. Two ways to use masks of more than one kept fraction were never
measured: fit the local pair model on the masks of two runs of the same data and recipe at different ``design.p``
(say 0.5 and 0.9) pooled, and let each pair's coefficient depend on the kept fraction,
``F_ij + G_ij (k/n - centre)`` in the Fourier (+-1) coding, the model's second difference read at the full set
(about ``4 (F_ij + G_ij (1 - centre))``). This script fits, per validated pair's test example, the same local model as
:class:`dataspex.fit.estimators.QuadraticProxy` (pairs among the ``n_top`` strongest first-pass examples,
cross-validated lasso on the standardised design, here scikit-learn's) on:

* each run alone; both runs pooled, without and with the size term (twice the retrains of one run);
* half of each run's fit masks, with the size term (the same budget as one run);

and prints, as ``benchmarks/validated_agreement.py`` does, each model's full-set prediction beside the realised
interaction, their correlation, mean |error| and agreeing signs, and the mean held-out R^2 on each run's held-out
masks for the same test examples.

    python benchmarks/kept_fractions.py --runs /tmp/runs/f256u_m1024 /tmp/runs/f256u_p09 \\
        --validate /tmp/runs/f256u_m1024/validate /tmp/runs/f256u_m1024/validate16 /tmp/runs/f256u_m1024/validate16f
"""

from __future__ import annotations

import argparse
import os
import sys
from itertools import combinations

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from budget import compared_fingerprint, fingerprint_differences  # noqa: E402
from validated_agreement import agreement, validated_pairs  # noqa: E402


def load_run(path: str) -> dict:
    """A run's masks (m, n) float 0/1, losses (m, T), roles (m,), kept fraction and fingerprint (the keys the store
    compares)."""
    from dataspex.store import RunStore

    store = RunStore(path)
    design = store.load_design()
    results = store.load_results(design)
    role = dict(zip(design.mask_ids.tolist(), design.roles.tolist()))
    return {"path": path, "masks": results.masks.astype(np.float64), "losses": results.losses,
            "roles": np.array([role[int(i)] for i in results.mask_ids]), "p": design.meta.get("p"),
            "kind": design.meta.get("kind"),
            "fingerprint": compared_fingerprint(store)}


def check_same_training(runs: list[dict]) -> None:
    """Refuse runs that trained other things (fingerprints differ) or are not random designs."""
    for run in runs:
        if run["kind"] != "random":
            raise SystemExit(f"error: {run['path']} has a {run['kind']} design; this compares random designs")
        differ = fingerprint_differences(runs[0]["fingerprint"], run["fingerprint"])
        if differ:
            raise SystemExit(f"error: {run['path']} trained other things than {runs[0]['path']} (fingerprint "
                             f"differs in: {', '.join(differ)})")


def lasso_cv(X: np.ndarray, y: np.ndarray, n_alphas: int = 30, eps: float = 1e-3) -> tuple[np.ndarray, float]:
    """Cross-validated lasso on the standardised design, as dataspex's (5 folds, a geometric path from the
    smallest penalty that zeroes everything down to ``eps`` of it); returns (coef (p,), intercept) in X's units."""
    from sklearn.linear_model import LassoCV

    mu, sd = X.mean(axis=0), X.std(axis=0)
    sd[sd == 0] = 1.0
    Z = (X - mu) / sd
    top = np.abs(Z.T @ (y - y.mean())).max() / len(y)
    if top == 0:
        return np.zeros(X.shape[1]), float(y.mean())
    model = LassoCV(alphas=np.geomspace(top, top * eps, n_alphas), cv=5, random_state=0, max_iter=5000).fit(Z, y)
    coef = model.coef_ / sd
    return coef, float(model.intercept_ - mu @ coef)


class LocalPairModel:
    """The local quadratic model of one output: main effects s_i = 1 - 2 x_i and the pairs among its ``n_top``
    strongest first-pass examples; with ``centre`` set, every pair column also times (kept fraction - centre)."""

    def __init__(self, n_top: int = 8, centre: float | None = None):
        self.n_top, self.centre = n_top, centre

    def features(self, masks: np.ndarray) -> np.ndarray:
        S = 1.0 - 2.0 * masks
        P = np.column_stack([S[:, a] * S[:, b] for a, b in self.pairs_]) if self.pairs_ else S[:, :0]
        if self.centre is None:
            return np.hstack([S, P])
        return np.hstack([S, P, P * (masks.mean(axis=1, keepdims=True) - self.centre)])

    def fit(self, masks: np.ndarray, y: np.ndarray) -> "LocalPairModel":
        first, _ = lasso_cv(1.0 - 2.0 * masks, y)
        top = np.sort(np.argsort(-np.abs(first), kind="stable")[: self.n_top])
        top = top[first[top] != 0]
        self.pairs_ = [(int(a), int(b)) for a, b in combinations(top.tolist(), 2)]
        self.coef_, self.intercept_ = lasso_cv(self.features(masks), y)
        self.n_ = masks.shape[1]
        return self

    def predict(self, masks: np.ndarray) -> np.ndarray:
        return self.features(masks) @ self.coef_ + self.intercept_

    def full_interaction(self, i: int, j: int) -> float:
        """The fitted model's f(N) - f(N - i) - f(N - j) + f(N - i - j) at the full set N (the size term read at
        each of the four sets' own kept fraction); 0 when the pair was not screened."""
        if (min(i, j), max(i, j)) not in self.pairs_:
            return 0.0
        sets = np.ones((4, self.n_), dtype=np.float64)
        sets[1, i] = sets[2, j] = 0.0
        sets[3, [i, j]] = 0.0
        return float(np.array([1.0, -1.0, -1.0, 1.0]) @ self.predict(sets))


def r2(y: np.ndarray, pred: np.ndarray) -> float:
    return float(1.0 - ((y - pred) ** 2).sum() / ((y - y.mean()) ** 2).sum())


def variants(runs: list[dict], centre: float) -> dict:
    """name -> (rows of each run's fit masks to use, centre or None)."""
    fits = [np.flatnonzero(r["roles"] == "fit") for r in runs]
    out = {f"p = {r['p']}": ([f if k == q else f[:0] for k, f in enumerate(fits)], None) for q, r in enumerate(runs)}
    out["pooled"] = (fits, None)
    out["pooled + size"] = (fits, centre)
    out["half each + size (one run's budget)"] = ([f[: len(f) // len(fits)] for f in fits], centre)
    return out


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", nargs="+", required=True, help="runs of the same data and recipe, other design.p")
    parser.add_argument("--validate", nargs="+", required=True, help="validate directories (with validation.csv)")
    parser.add_argument("--n-top", type=int, default=8)
    parser.add_argument("--centre", type=float, default=None, help="default: the mean kept fraction of the runs")
    opts = parser.parse_args(argv)

    runs = [load_run(p) for p in opts.runs]
    check_same_training(runs)
    centre = opts.centre if opts.centre is not None else float(np.mean([r["p"] for r in runs]))
    pairs = validated_pairs(opts.validate)
    keys = sorted(pairs)
    realised = np.array([float(pairs[k]["realised"]) for k in keys])
    plan = variants(runs, centre)
    predicted = {name: [] for name in plan}
    heldout_r2 = {name: [] for name in plan}
    for i, j, t in keys:
        for name, (rows, c) in plan.items():
            X = np.vstack([r["masks"][idx] for r, idx in zip(runs, rows)])
            y = np.concatenate([r["losses"][idx, t] for r, idx in zip(runs, rows)])
            model = LocalPairModel(opts.n_top, c).fit(X, y)
            predicted[name].append(model.full_interaction(i, j))
            heldout_r2[name].append([r2(r["losses"][r["roles"] == "heldout", t],
                                        model.predict(r["masks"][r["roles"] == "heldout"])) for r in runs])
    names = list(plan)
    print("| pair (test) | realised | " + " | ".join(names) + " |")
    print("|---|---:|" + "---:|" * len(names))
    for k, key in enumerate(keys):
        print(f"| ({key[0]}, {key[1]}) ({key[2]}) | {realised[k]:+.3f} | "
              + " | ".join(f"{predicted[n][k]:+.3f}" for n in names) + " |")
    out = {}
    print()
    for name in names:
        a = agreement(np.array(predicted[name]), realised)
        held = np.array(heldout_r2[name]).mean(axis=0)
        out[name] = dict(a, heldout_r2=held.tolist())
        where = ", ".join(f"p = {r['p']}: {h:.3f}" for r, h in zip(runs, held))
        print(f"{name}: correlation {a['corr']:.2f}, mean |error| {a['mae']:.3f} nats, signs {a['signs']} of "
              f"{a['n']}; mean held-out R^2 of these test examples ({where})")
    return out


if __name__ == "__main__":
    main()
