"""Interaction estimators: every one fits T outputs from one mask matrix and returns an InteractionResult."""

from dataspex.estimators.base import BaseInteractionEstimator, DataspexInputError
from dataspex.estimators.linear import LinearDatamodel
from dataspex.estimators.pairwise import Pairwise, screen_candidates
from dataspex.estimators.proxyspex import ProxySPEX, booster_to_fourier
from dataspex.estimators.quadratic import QuadraticProxy
from dataspex.estimators.result import InteractionResult
from dataspex.estimators.spex import SPEX, SpexDesign

__all__ = [
    "BaseInteractionEstimator",
    "DataspexInputError",
    "InteractionResult",
    "LinearDatamodel",
    "Pairwise",
    "ProxySPEX",
    "QuadraticProxy",
    "SPEX",
    "SpexDesign",
    "booster_to_fourier",
    "screen_candidates",
]
