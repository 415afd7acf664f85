"""Scores for interaction estimators: faithfulness R^2, LDS, recall@k of planted pairs."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from scipy.stats import rankdata

from dataspex.core.errors import DataspexError

__all__ = ["faithfulness_r2", "lds", "pooled_r2", "recall_at_k"]


def _pair_arrays(Y_true, Y_pred) -> tuple[np.ndarray, np.ndarray]:
    yt = np.asarray(Y_true, dtype=np.float64)
    yp = np.asarray(Y_pred, dtype=np.float64)
    if yt.shape != yp.shape:
        raise DataspexError(f"Y_true has shape {yt.shape} but Y_pred has shape {yp.shape}")
    if yt.ndim == 1:
        yt, yp = yt[:, None], yp[:, None]
    if yt.ndim != 2 or yt.shape[0] < 2:
        raise DataspexError(f"need outputs of shape (m >= 2, T), got {yt.shape}")
    return yt, yp


def _reduce(per_output: np.ndarray, multioutput: str):
    if multioutput == "raw_values":
        return per_output
    if multioutput == "uniform_average":
        return float(np.nanmean(per_output)) if np.isfinite(per_output).any() else float("nan")
    raise DataspexError(f"multioutput must be 'uniform_average' or 'raw_values', got {multioutput!r}")


def faithfulness_r2(Y_true, Y_pred, multioutput: str = "uniform_average"):
    """R^2 = 1 - SSE/SST per output over masks (rows); Y (m,) or (m, T).

    Returns the mean over outputs (default) or the per-output array (T,) with
    ``multioutput="raw_values"``.  A constant output scores 1.0 if predicted exactly, else 0.0
    (scikit-learn's convention).
    """
    yt, yp = _pair_arrays(Y_true, Y_pred)
    sse = ((yt - yp) ** 2).sum(axis=0)
    sst = ((yt - yt.mean(axis=0)) ** 2).sum(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        r2 = np.where(sst > 0, 1.0 - sse / np.where(sst > 0, sst, 1.0), np.where(sse == 0, 1.0, 0.0))
    return _reduce(r2, multioutput)


def pooled_r2(Y_true, Y_pred) -> float:
    """R^2 pooled over outputs: 1 - total SSE / total SST, Y (m, T). It weights each output by how much it
    varies across masks, so a nearly constant test example cannot drag it down as it does the mean over outputs."""
    yt, yp = _pair_arrays(Y_true, Y_pred)
    return 1.0 - float(((yt - yp) ** 2).sum() / max(((yt - yt.mean(axis=0)) ** 2).sum(), 1e-300))


def lds(Y_true, Y_pred, multioutput: str = "uniform_average"):
    """Linear datamodeling score: Spearman correlation across masks, per output, averaged.

    Outputs that are constant (in truth or prediction) have no rank correlation: NaN per output,
    ignored by the average.
    """
    yt, yp = _pair_arrays(Y_true, Y_pred)
    rt = rankdata(yt, axis=0) - (yt.shape[0] + 1) / 2.0
    rp = rankdata(yp, axis=0) - (yt.shape[0] + 1) / 2.0
    num = (rt * rp).sum(axis=0)
    den = np.sqrt((rt**2).sum(axis=0) * (rp**2).sum(axis=0))
    with np.errstate(divide="ignore", invalid="ignore"):
        rho = np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)
    return _reduce(rho, multioutput)


def _as_pairs(pairs) -> list[tuple[int, int]]:
    if hasattr(pairs, "columns") and {"i", "j"} <= set(pairs.columns):
        pairs = zip(pairs["i"].to_numpy(), pairs["j"].to_numpy())
    out = []
    for p in pairs:
        i, j = (int(v) for v in p)
        out.append((min(i, j), max(i, j)))
    return out


def recall_at_k(reported_pairs, planted_pairs: Iterable, k: int) -> float:
    """Fraction of planted pairs found among the first k distinct reported pairs.

    reported_pairs: ranked sequence of (i, j) or a DataFrame with columns i, j (e.g. from
    ``InteractionResult.top_pairs``; repeated pairs, as with output="all", count once).
    planted_pairs: the ground-truth pairs (unordered).  Returns |top-k & planted| / |planted|.
    """
    planted = set(_as_pairs(planted_pairs))
    if not planted:
        raise DataspexError("recall_at_k needs at least one planted pair")
    if k < 1:
        raise DataspexError(f"k must be >= 1, got {k}")
    seen: dict[tuple[int, int], None] = {}  # ordered set of distinct pairs
    for p in _as_pairs(reported_pairs):
        if p not in seen:
            seen[p] = None
            if len(seen) == k:
                break
    return len(planted.intersection(seen)) / len(planted)
