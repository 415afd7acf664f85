"""Shared input validation and the scikit-learn style base class of every interaction estimator."""

from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator
from sklearn.utils.validation import check_is_fitted

from dataspex.core.errors import DataspexInputError
from dataspex.core.metrics import faithfulness_r2
from dataspex.fit.solvers.blas import small_blas

__all__ = [
    "DataspexInputError",
    "BaseInteractionEstimator",
    "check_masks",
    "check_outputs",
    "small_blas",
]


def _rows_preview(rows: np.ndarray, limit: int = 10) -> str:
    shown = ", ".join(str(int(r)) for r in rows[:limit])
    more = f" and {len(rows) - limit} more" if len(rows) > limit else ""
    return f"[{shown}]{more}"


def check_masks(masks, n_features: int | None = None, name: str = "masks") -> np.ndarray:
    """Validate a mask matrix and return it as a C-contiguous uint8 array of shape (m, n).

    Accepts bool or integer/float arrays whose entries are exactly 0 or 1.
    """
    arr = np.asarray(masks)
    if arr.ndim != 2:
        raise DataspexInputError(
            f"{name} must be a 2-D array (m masks, n examples), got shape {arr.shape}"
        )
    if arr.shape[0] == 0:
        raise DataspexInputError(f"{name} is empty: pass at least one mask row")
    if n_features is not None and arr.shape[1] != n_features:
        raise DataspexInputError(
            f"{name} has {arr.shape[1]} columns but the estimator was fit on {n_features} "
            f"training examples"
        )
    if arr.dtype == np.bool_:
        return np.ascontiguousarray(arr, dtype=np.uint8)
    if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise DataspexInputError(f"{name} must be 0/1 (bool or integer), got dtype {arr.dtype}")
    bad = (arr != 0) & (arr != 1)
    if bad.any():
        rows = np.flatnonzero(bad.any(axis=1))
        raise DataspexInputError(
            f"{name} must contain only 0 and 1; rows {_rows_preview(rows)} hold other values"
        )
    return np.ascontiguousarray(arr, dtype=np.uint8)


def check_outputs(Y, n_rows: int | None = None, name: str = "Y") -> tuple[np.ndarray, bool]:
    """Validate outputs; return (Y as float64 (m, T), was_1d)."""
    try:
        arr = np.asarray(Y, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise DataspexInputError(f"{name} must be numeric: {err}") from None
    if arr.ndim not in (1, 2):
        raise DataspexInputError(f"{name} must be 1-D (m,) or 2-D (m, T), got shape {arr.shape}")
    was_1d = arr.ndim == 1
    arr = arr[:, None] if was_1d else arr
    if arr.size == 0:
        raise DataspexInputError(f"{name} is empty (shape {arr.shape}): nothing to fit")
    if n_rows is not None and arr.shape[0] != n_rows:
        raise DataspexInputError(
            f"{name} has {arr.shape[0]} rows but masks has {n_rows}: one output row per mask"
        )
    finite = np.isfinite(arr)
    if not finite.all():
        rows = np.flatnonzero(~finite.all(axis=1))
        raise DataspexInputError(
            f"{name} has NaN or infinite values in rows {_rows_preview(rows)}; "
            f"drop those masks or re-run their retrains"
        )
    return np.ascontiguousarray(arr), was_1d


class BaseInteractionEstimator(BaseEstimator):
    """Base class: validated ``fit(masks, Y)`` -> ``result_`` (an InteractionResult).

    Subclasses store constructor arguments unchanged (scikit-learn contract) and implement
    ``_fit(masks, Y) -> InteractionResult`` with masks (m, n) uint8 and Y (m, T) float64.

    Fitted attributes: ``result_``, ``n_features_in_``, ``n_outputs_``.

    What the fit stage needs to know about an estimator is declared here, never keyed by its config name:
    ``design_role`` (the design rows it fits on, as :meth:`dataspex.design.Design.rows` names them),
    ``heldout_scored`` (whether held-out random masks measure its faithfulness), ``main_effects_only`` (no
    interaction terms at any budget), :meth:`design_inputs` (extra
    ``fit`` arguments taken from the design) and :meth:`fit_summary` (extra entries for faithfulness.json).
    """

    # "fit": any design's main rows (random masks, or a SPEX design's structured ones).
    design_role = "fit"
    # False for models valid near the full training set only: no held-out R^2 on random masks.
    heldout_scored = True
    # True for models of single-example effects only (no interaction term at any budget): `dataspex plan` gives
    # them no forecast past the run's main-effects limit (dataspex.fit.faithfulness.main_effects_limit).
    main_effects_only = False

    def design_inputs(self, design_meta: dict) -> dict:
        """Keyword arguments for ``fit`` taken from the design's metadata (none by default)."""
        return {}

    def fit_summary(self) -> dict:
        """Entries the fit stage adds to this estimator's row of faithfulness.json (none by default)."""
        return {}

    def fit(self, masks, Y):
        """Fit on masks (m, n) 0/1 and outputs Y (m,) or (m, T); returns self."""
        masks = check_masks(masks)
        Y2, was_1d = check_outputs(Y, n_rows=masks.shape[0])
        result = self._fit(masks, Y2)
        self.result_ = result
        self.n_features_in_ = masks.shape[1]
        self.n_outputs_ = Y2.shape[1]
        self._fit_1d = was_1d
        return self

    def _fit(self, masks: np.ndarray, Y: np.ndarray):  # pragma: no cover - abstract
        raise NotImplementedError

    def predict(self, masks) -> np.ndarray:
        """Predicted outputs for masks (m, n): shape (m, T), or (m,) if fit on a 1-D Y."""
        check_is_fitted(self, "result_")
        masks = check_masks(masks, n_features=self.n_features_in_)
        pred = self.result_.predict(masks)
        return pred[:, 0] if self._fit_1d else pred

    def score(self, masks, Y) -> float:
        """Faithfulness R^2 (1 - SSE/SST per output), averaged over outputs."""
        check_is_fitted(self, "result_")
        masks = check_masks(masks, n_features=self.n_features_in_)
        Y2, _ = check_outputs(Y, n_rows=masks.shape[0])
        return float(faithfulness_r2(Y2, self.result_.predict(masks)))

    def top_pairs(self, *args, **kwargs):
        """Shortcut for ``self.result_.top_pairs(...)``."""
        check_is_fitted(self, "result_")
        return self.result_.top_pairs(*args, **kwargs)
