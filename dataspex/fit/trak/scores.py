"""The run's TRAK scores: the one owner of ``<run_dir>/trak/scores.npz`` and ``<run_dir>/trak/faithfulness.json``,
and what dataspex does with the scores (the linear-datamodel baseline, its calibration and faithfulness, the
report's pair column). Light on purpose: no torch or traker here (computing the scores is
:mod:`dataspex.fit.trak.gradients`).

Sign and scale. ``scores[i, t]`` estimates how much keeping training example i *raises* the model output of
test example t: the margin (gold logit minus logsumexp of the others) for classification, the completion
log-probability for causal LMs. Positive = helpful (it lowers the test loss). Scores are only meaningful up to
an affine map per test example, which :func:`fit_calibration` fits on retrained masks.

Files: ``<run_dir>/trak/scores.npz`` (``scores`` (n_train, n_test) float64; the settings in its header, so a
re-run with the same settings reuses it) and ``<run_dir>/trak/faithfulness.json``.
"""

from __future__ import annotations

import os

import numpy as np
import pandas as pd

from dataspex.core.errors import DataspexError
from dataspex.core.files import load_npz, save_npz, write_json
from dataspex.core.metrics import faithfulness_r2, lds
from dataspex.core.outputs import OUTPUTS
from dataspex.fit.artifacts import load_faithfulness
from dataspex.fit.estimators import InteractionResult
from dataspex.fit.faithfulness import fit_outputs

__all__ = [
    "FAITHFULNESS_FILE", "OUTPUT_SIGN", "SCORES_FILE", "SCORE_KEYS", "TrakCalibration", "fit_calibration",
    "load_trak_scores", "save_trak_scores", "trak_faithfulness", "trak_pair_scores", "trak_predict",
]

SCORES_FILE = ("trak", "scores.npz")
FAITHFULNESS_FILE = ("trak", "faithfulness.json")
# Settings that change the scores (the rest - batch size, recompute - do not).
SCORE_KEYS = ("n_models", "params", "proj_dim", "lambda_reg", "projector", "seed", "half_precision")
# Expected sign of the TRAK prediction for every modelled output: scores predict the margin, and every output
# dataspex models is a cost (dataspex.core.outputs: the loss, the negative margin, the error probability), which
# moves the other way.
OUTPUT_SIGN = -1.0


# ------------------------------------------------------------------------------------------- the file

def save_trak_scores(store, scores: np.ndarray, meta: dict) -> str:
    path = store.path(*SCORES_FILE)
    save_npz(path, {"scores": np.asarray(scores, dtype=np.float64)}, meta)
    return path


def load_trak_scores(store, with_meta: bool = False):
    """The run's TRAK scores (n_train, n_test) float64, or None if ``dataspex trak`` has not run.

    ``scores[i, t] > 0``: keeping training example i raises test example t's margin (lowers its loss)."""
    path = store.path(*SCORES_FILE)
    if not os.path.exists(path):
        return (None, None) if with_meta else None
    arrays, meta = load_npz(path)
    return (arrays["scores"], meta) if with_meta else arrays["scores"]


# ---------------------------------------------------------------------------------- using the scores

def _with_mean(scores: np.ndarray) -> np.ndarray:
    """Scores for every test example, then for the mean test output (as ``dataspex fit`` models them)."""
    return np.column_stack([scores, scores.mean(axis=1)])


class TrakCalibration:
    """Per-output affine map from the summed TRAK scores to an output's scale: y ~ scale * (x @ S) + intercept."""

    def __init__(self, scale: np.ndarray, intercept: np.ndarray) -> None:
        self.scale = np.asarray(scale, dtype=np.float64)
        self.intercept = np.asarray(intercept, dtype=np.float64)

    def apply(self, raw: np.ndarray) -> np.ndarray:
        return raw * self.scale + self.intercept


def fit_calibration(scores, masks, Y) -> TrakCalibration:
    """Least-squares scale and intercept per output of ``Y`` (m, T) on ``masks @ scores``."""
    raw = trak_predict(scores, masks)
    Y = np.asarray(Y, dtype=np.float64).reshape(raw.shape)
    rc = raw - raw.mean(axis=0)
    yc = Y - Y.mean(axis=0)
    var = (rc**2).sum(axis=0)
    scale = np.where(var > 0, (rc * yc).sum(axis=0) / np.where(var > 0, var, 1.0), 0.0)
    return TrakCalibration(scale, Y.mean(axis=0) - scale * raw.mean(axis=0))


def trak_predict(scores, masks, calibration: TrakCalibration | None = None) -> np.ndarray:
    """Predicted outputs (m, T) for masks (m, n): the sum of the kept examples' scores (margin direction),
    mapped to an output's scale (e.g. the loss in nats) by ``calibration`` when given."""
    scores = np.asarray(scores, dtype=np.float64)
    masks = np.asarray(masks, dtype=np.float64)
    if masks.ndim != 2 or masks.shape[1] != scores.shape[0]:
        raise DataspexError(f"masks of shape {masks.shape} do not match TRAK scores for {scores.shape[0]} "
                            "training examples")
    raw = masks @ scores
    return calibration.apply(raw) if calibration is not None else raw


def _metrics(Y_ho, pred_ho, ranked=None) -> dict:
    """R^2 of ``pred_ho`` and LDS of ``ranked`` (default: ``pred_ho``) against the measured ``Y_ho``."""
    out = {"r2_mean_over_outputs": float(faithfulness_r2(Y_ho, pred_ho)),
           "r2_per_output": [float(v) for v in faithfulness_r2(Y_ho, pred_ho, multioutput="raw_values")]}
    per = lds(Y_ho, pred_ho if ranked is None else ranked, multioutput="raw_values")
    out["lds_mean_over_outputs"] = float(np.nanmean(per)) if np.isfinite(per).any() else None
    out["lds_per_output"] = [None if not np.isfinite(v) else float(v) for v in per]
    return out


def trak_faithfulness(store, scores=None, outputs=tuple(OUTPUTS), write: bool = True) -> dict:
    """LDS and R^2 of TRAK on the run's held-out masks, beside every estimator ``dataspex fit`` saved.

    For each modelled output (:data:`dataspex.core.outputs.OUTPUTS`) and each test example plus the mean test
    output (the columns ``dataspex fit`` models): TRAK's LDS is the Spearman correlation of the summed scores
    (signed for a cost: minus) with the measured outputs, calibration-free; its R^2 is after the affine
    calibration fitted on the fit masks (``spex`` masks for a SPEX design). Fitted estimators are scored on
    the same held-out masks for the output they were fitted on. Returns (and writes, with ``write``) the
    table; ``{"available": false, "reason": ...}`` when there is nothing to score yet.
    """
    if scores is None:
        scores = load_trak_scores(store)
    table: dict = {"available": False}
    if scores is None:
        table["reason"] = "no TRAK scores: run `dataspex trak`"
    elif not store.has_design():
        table["reason"] = "no design yet"
    else:
        design = store.load_design()
        results = store.load_results(design)
        if design.units is not None and scores.shape[0] == design.n_train:
            scores = design.units.sum_rows(scores)  # masks over units: a unit's score is its members' sum
        fit_role = design.fit_role
        fit_keep = results.keep(design, "fit")
        ho_keep = results.keep(design, "heldout")
        if fit_keep.sum() < 2 or ho_keep.sum() < 2:
            table["reason"] = (f"need >= 2 finished fit and held-out masks, have {int(fit_keep.sum())} and "
                               f"{int(ho_keep.sum())}: run `dataspex train`")
        elif results.masks.shape[1] != scores.shape[0] or results.losses.shape[1] != scores.shape[1]:
            raise DataspexError(f"TRAK scores {scores.shape} do not match the run's {results.masks.shape[1]} "
                                f"training and {results.losses.shape[1]} test examples: re-run `dataspex trak`")
        else:
            S = _with_mean(scores)
            fitted = load_faithfulness(store) or {}
            table.update(available=True, n_fit_masks=int(fit_keep.sum()), n_heldout_masks=int(ho_keep.sum()),
                         fit_role=fit_role, outputs={})
            for output in outputs:
                Y = fit_outputs(results, output)
                cal = fit_calibration(S, results.masks[fit_keep], Y[fit_keep])
                raw = trak_predict(S, results.masks[ho_keep])
                entry = {"trak": dict(_metrics(Y[ho_keep], cal.apply(raw), ranked=OUTPUT_SIGN * raw),
                                      calibration_sign_as_expected=float(np.mean(
                                          np.sign(cal.scale) == OUTPUT_SIGN)))}
                for name, info in fitted.items():
                    path = store.path("fit", f"{name}.npz")
                    if info.get("output", "loss") != output or not os.path.exists(path):
                        continue
                    res = InteractionResult.load(path)
                    if res.n_outputs != Y.shape[1]:
                        continue
                    entry[name] = _metrics(Y[ho_keep], res.predict(results.masks[ho_keep]))
                table["outputs"][output] = entry
    if write:
        write_json(store.path(*FAITHFULNESS_FILE), table)
    return table


def trak_pair_scores(scores, pairs, n_test: int | None = None):
    """The TRAK scores of both examples of each pair, for the report: a DataFrame with columns ``trak_i`` and
    ``trak_j`` aligned with ``pairs`` (columns i, j and optionally output: ``test_<t>``, an int, or
    ``mean``/absent for the mean over test examples). Margin direction: positive = the example helps."""
    scores = np.asarray(scores, dtype=np.float64)
    mean = scores.mean(axis=1)
    cols = []
    outputs = pairs["output"] if "output" in getattr(pairs, "columns", []) else ["mean"] * len(pairs)
    for output in outputs:
        t = output
        if isinstance(t, str):
            t = int(t.split("_", 1)[1]) if t.startswith("test_") else (int(t) if t.isdigit() else None)
        cols.append(None if t is None or t >= scores.shape[1] or t < 0 else int(t))
    i = pairs["i"].to_numpy(dtype=np.int64)
    j = pairs["j"].to_numpy(dtype=np.int64)
    ti = np.array([mean[a] if t is None else scores[a, t] for a, t in zip(i, cols)], dtype=np.float64)
    tj = np.array([mean[b] if t is None else scores[b, t] for b, t in zip(j, cols)], dtype=np.float64)
    return pd.DataFrame({"trak_i": ti, "trak_j": tj}, index=pairs.index)
