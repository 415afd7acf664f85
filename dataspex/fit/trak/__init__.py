"""TRAK: first-order influence of every training example on every test example, from gradients on the LoRA
parameters (Park et al. 2023, the ``traker`` package). One fine-tune on the full training set plus gradients
gives an (n_train, n_test) score matrix; dataspex uses it three ways:

* a **baseline**: ``sum of the scores of the kept examples`` predicts each test output for any mask (a linear
  datamodel that needs no retrains); its LDS (Spearman, calibration-free) and R^2 (after an affine calibration
  fitted on the *fit* masks) on the held-out masks sit beside the fitted estimators' in
  ``<run_dir>/trak/faithfulness.json``;
* the default **screen** of the exhaustive pairwise design (``design=pairwise``);
* a **cross-check** column in the report: the TRAK scores of the two examples of each reported pair.

Modules: :mod:`~dataspex.fit.trak.gradients` computes the scores (traker's plug-ins, the fine-tunes, the
gradients and projections: everything that touches torch and traker); :mod:`~dataspex.fit.trak.scores` owns
``<run_dir>/trak/scores.npz`` and ``<run_dir>/trak/faithfulness.json`` and everything done with the scores
(sign and scale conventions there). The package exports the scores side only, so that reading scores (the
report, the pairwise screen) does not import torch and traker; computing them is ``dataspex.fit.trak.gradients``.
"""

from __future__ import annotations

from dataspex.fit.trak.scores import (
    FAITHFULNESS_FILE,
    OUTPUT_SIGN,
    SCORE_KEYS,
    SCORES_FILE,
    TrakCalibration,
    fit_calibration,
    load_trak_scores,
    save_trak_scores,
    trak_faithfulness,
    trak_pair_scores,
    trak_predict,
)

__all__ = ["FAITHFULNESS_FILE", "OUTPUT_SIGN", "SCORE_KEYS", "SCORES_FILE", "TrakCalibration", "fit_calibration",
           "load_trak_scores", "save_trak_scores", "trak_faithfulness", "trak_pair_scores", "trak_predict"]
