"""Interaction estimators: every one fits T outputs from one mask matrix and returns an InteractionResult."""

from dataspex.estimators.base import BaseInteractionEstimator, DataspexInputError
from dataspex.estimators.result import InteractionResult

# SPEX lives in spex.py (its author adds the import line here).

__all__ = [
    "BaseInteractionEstimator",
    "DataspexInputError",
    "InteractionResult",
]
