"""Cross-fitting designs: K-fold training sets whose models predict every training example out of fold.

cleanlab's label-issue finder needs, for every training example, predicted class probabilities from a model that
did not train on it. With K folds, mask f keeps every example outside fold f; its model then scores fold f's
examples. The engine records losses, not probabilities, so the scored split lists each training example once per
class (:func:`label_expansion`): the loss of row (i, c) is -log p(c | x_i), and the K rows of losses give the
out-of-fold probability table (:func:`dataspex.fit.baselines.out_of_fold_probs`).
"""

from __future__ import annotations

import numpy as np

from dataspex.core.data import Split
from dataspex.design.base import Design

__all__ = ["ROLE", "crossfit_design", "fold_assignment", "label_expansion"]

ROLE = "crossfit"


def fold_assignment(n_train: int, folds: int, seed: int) -> np.ndarray:
    """(n_train,) int64: each example's fold in [0, folds), sizes within one of each other, shuffled by ``seed``."""
    if not 2 <= folds <= n_train:
        raise ValueError(f"folds={folds} must be in [2, n_train={n_train}]")
    order = np.random.default_rng([int(seed), 2_000]).permutation(n_train)
    fold_of = np.empty(n_train, dtype=np.int64)
    fold_of[order] = np.arange(n_train) % folds
    return fold_of


def crossfit_design(fold_of: np.ndarray) -> Design:
    """One mask per fold f (ids 0..K-1, role ``crossfit``): every example outside fold f kept."""
    folds = int(fold_of.max()) + 1
    masks = np.stack([(fold_of != f).astype(np.uint8) for f in range(folds)])
    return Design(masks, np.arange(folds), [ROLE] * folds, {"kind": "crossfit", "fold_of": fold_of.tolist()})


def label_expansion(train: Split, n_labels: int) -> Split:
    """Every training text once per class: row i * n_labels + c is text i labelled c, (n_train * n_labels) rows."""
    texts = [t for t in train.texts for _ in range(n_labels)]
    return Split(texts, np.tile(np.arange(n_labels, dtype=np.int64), len(train)))
