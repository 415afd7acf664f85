"""Interaction estimators: every one fits T outputs from one mask matrix and returns an InteractionResult."""

from dataspex.fit.estimators.base import BaseInteractionEstimator, DataspexInputError
from dataspex.fit.estimators.linear import LinearDatamodel
from dataspex.fit.estimators.pairwise import Pairwise, screen_candidates
from dataspex.fit.estimators.proxyspex import ProxySPEX, booster_to_fourier
from dataspex.fit.estimators.quadratic import QuadraticProxy
from dataspex.fit.estimators.result import InteractionResult
from dataspex.fit.estimators.spex import SPEX, SpexDesign

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
