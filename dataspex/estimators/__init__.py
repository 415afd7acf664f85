"""Interaction estimators: every one fits T outputs from one mask matrix and returns an InteractionResult."""

from dataspex.estimators.base import BaseInteractionEstimator, DataspexInputError
from dataspex.estimators.linear import LinearDatamodel
from dataspex.estimators.pairwise import Pairwise, screen_candidates
from dataspex.estimators.proxyspex import ProxySPEX, booster_to_fourier
from dataspex.estimators.quadratic import QuadraticProxy
from dataspex.estimators.result import InteractionResult

# SPEX lives in spex.py (its author adds the import line here).

__all__ = [
    "BaseInteractionEstimator",
    "DataspexInputError",
    "InteractionResult",
    "LinearDatamodel",
    "Pairwise",
    "ProxySPEX",
    "QuadraticProxy",
    "booster_to_fourier",
    "screen_candidates",
]
