"""Validation by retraining: the statistics (:mod:`~dataspex.validate.analysis`) and the validation files
(:mod:`~dataspex.validate.artifacts`). The ``dataspex validate`` stage is :mod:`dataspex.stages.validate`."""

from dataspex.validate.analysis import (analyse, analyse_curated, elsewhere, removal_verdict, seeds_needed,
                                       seeds_per_pair, settings, t_interval, verdict)
from dataspex.validate.artifacts import load_validation, save_validation

__all__ = ["analyse", "analyse_curated", "elsewhere", "load_validation", "removal_verdict", "save_validation",
           "seeds_needed", "seeds_per_pair", "settings", "t_interval", "verdict"]
