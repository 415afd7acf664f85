"""Ranking a fitted model's pairs and triples, each at the test example it moves most.

Shared by ``validate`` (which pairs to retrain), the report (which pairs to list) and the API.
"""

from __future__ import annotations

from itertools import combinations

import numpy as np
import pandas as pd

__all__ = ["n_test_outputs", "ranked_pairs", "ranked_triples", "score_stack", "select_pairs"]


def n_test_outputs(result) -> int:
    """Outputs that are test examples (the fitted "mean" output, if any, is last and left out)."""
    return result.n_outputs - (1 if "mean" in (result.output_names or []) else 0)


def ranked_pairs(result, kind: str, k: int, estimand: str, n_test: int) -> pd.DataFrame:
    """The top ``k`` distinct pairs of ``kind`` over all test examples (each pair at its strongest test
    example; the mean-loss output is left out so a pair is tied to the examples it moves)."""
    table = result.top_pairs(kind=kind, k=result.n_outputs * result.n_features ** 2, estimand=estimand,
                             output="all")
    table = table[table["output"] != "mean"]
    table = table.drop_duplicates(subset=["i", "j"], keep="first").head(k).reset_index(drop=True)
    table.insert(0, "rank", np.arange(1, len(table) + 1))
    table["test"] = [int(str(o).rsplit("_", 1)[-1]) for o in table["output"]]
    return table


def select_pairs(result, kinds, k: int, estimand: str, n_test: int) -> pd.DataFrame:
    """The top ``k`` pairs of each kind (columns kind, rank, i, j, test, score, joint_effect, pattern), a pair
    listed under two kinds kept once (first kind wins)."""
    tables = [ranked_pairs(result, kind, k, estimand, n_test).assign(kind=kind) for kind in kinds]
    pairs = pd.concat(tables, ignore_index=True) if tables else pd.DataFrame()
    if pairs.empty:
        return pairs
    return pairs.drop_duplicates(subset=["i", "j"], keep="first").reset_index(drop=True)


def score_stack(result, estimand: str) -> np.ndarray:
    """(T, n, n): every test example's pair-score matrix."""
    return np.stack([result.pair_scores(estimand, output=t) for t in range(n_test_outputs(result))])


def ranked_triples(result, k: int, estimand: str) -> pd.DataFrame:
    """Top ``k`` distinct degree-3 interactions (columns rank, i, j, l, test, score) at their strongest test
    example. score: third difference of the test loss, averaged over random half-datasets (uniform,
    -8 F[{i,j,l}]) or at the full data set (full, 8 sum over keys k containing the triple of (-1)^|k| F[k])."""
    T = n_test_outputs(result)
    acc: dict[tuple, np.ndarray] = {}
    for key, coef in zip(result.keys, result.fourier[:, :T]):
        if len(key) < 3 or (estimand == "uniform" and len(key) != 3) or not np.any(coef):
            continue
        weight = 8.0 * (-1.0) ** len(key)
        for triple in combinations(key, 3):
            acc[triple] = acc.get(triple, 0.0) + weight * coef
    columns = ["rank", "i", "j", "l", "test", "score"]
    if not acc:
        return pd.DataFrame(columns=columns)
    triples = list(acc)
    values = np.stack([acc[t] for t in triples])  # (P, T)
    best = np.abs(values).argmax(axis=1)
    score = values[np.arange(len(triples)), best]
    order = np.argsort(-np.abs(score), kind="stable")
    order = [r for r in order if score[r] != 0][:k]
    return pd.DataFrame({"rank": np.arange(1, len(order) + 1),
                         "i": [triples[r][0] for r in order], "j": [triples[r][1] for r in order],
                         "l": [triples[r][2] for r in order], "test": [int(best[r]) for r in order],
                         "score": [float(score[r]) for r in order]}, columns=columns)
