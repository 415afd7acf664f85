"""First-order baselines a curation team would use instead of pairs: one harm score per training example.

``harm[i] > 0`` means: keeping example i raises the mean test loss, so removing the examples with the largest harm
is what the baseline recommends. Both are computed on the test split, as dataspex's own ranking is, so that
``dataspex curate`` compares them on the eval split on equal terms:

* ``linear``: the linear datamodel's main effect of keeping i (the ``uniform`` estimand, nats), averaged over the
  test examples;
* ``trak``: minus the mean over test examples of the TRAK score (``scores[i, t] > 0``: keeping i raises test t's
  margin), in TRAK's own units; only its order matters here;
* ``cleanlab``: one minus cleanlab's label-quality score (self-confidence: the out-of-fold probability of the
  given label) from K-fold retrains of the same model and recipe (:mod:`dataspex.design.crossfit`); the examples
  cleanlab's ``find_label_issues`` flags are reported beside it;
* ``datainf``: DataInf's closed-form influence on the mean test loss (:mod:`dataspex.fit.datainf`), from the LoRA
  gradients of a model fine-tuned on the full training set (:mod:`dataspex.fit.lora_gradients`).
"""

from __future__ import annotations

import numpy as np

from dataspex.fit.ranking import n_test_outputs

__all__ = ["BASELINES", "cleanlab_harm", "harm_scores", "out_of_fold_probs", "pair_aware_harm", "top_harmful"]

BASELINES = ("linear", "trak", "cleanlab", "datainf")


def harm_scores(fitted: dict, trak_scores: np.ndarray | None) -> dict[str, np.ndarray]:
    """{baseline: (n_train,) harm} for those this run has: ``linear`` needs the fitted linear datamodel,
    ``trak`` the scores of ``dataspex trak`` (n_train, n_test)."""
    out = {}
    if "linear" in fitted:
        result = fitted["linear"]
        out["linear"] = np.mean([result.main_effects("uniform", output=t)
                                 for t in range(n_test_outputs(result))], axis=0)
    if trak_scores is not None:
        out["trak"] = -np.asarray(trak_scores, dtype=np.float64).mean(axis=1)
    return out


def top_harmful(harm: np.ndarray, k: int) -> list[int]:
    """The ``k`` examples with the largest harm (ties: the lower index first), ascending."""
    return sorted(int(i) for i in np.argsort(-np.asarray(harm), kind="stable")[:k])


def out_of_fold_probs(losses: np.ndarray, fold_of: np.ndarray, n_labels: int) -> np.ndarray:
    """(n_train, n_labels) class probabilities of each training example from the model that left its fold out.

    ``losses`` (K, n_train * n_labels): fold f's model scored on :func:`dataspex.design.crossfit.label_expansion`,
    so ``losses[f, i * n_labels + c] = -log p_f(c | x_i)``. Rows are renormalised (they sum to 1 up to float error)."""
    n_train = len(fold_of)
    table = np.asarray(losses, dtype=np.float64).reshape(len(losses), n_train, n_labels)
    probs = np.exp(-table[np.asarray(fold_of), np.arange(n_train)])
    return probs / probs.sum(axis=1, keepdims=True)


def cleanlab_harm(labels: np.ndarray, pred_probs: np.ndarray) -> tuple[np.ndarray, list[int]]:
    """(harm (n_train,) = 1 - cleanlab's self-confidence label quality, the indices ``find_label_issues`` flags)."""
    import cleanlab.filter  # about 2.5 s to import: only the cleanlab baseline needs it
    import cleanlab.rank

    labels = np.asarray(labels, dtype=np.int64)
    quality = cleanlab.rank.get_label_quality_scores(labels, pred_probs, method="self_confidence")
    flagged = cleanlab.filter.find_label_issues(labels, pred_probs, return_indices_ranked_by="self_confidence")
    return 1.0 - np.asarray(quality, dtype=np.float64), sorted(int(i) for i in flagged)


def pair_aware_harm(result) -> np.ndarray:
    """(n_train,) dataspex's own harm score of each example from a pair model, on the mean test loss (nats): the
    largest effect of keeping i, at the full training set or with any one other example j removed,

        harm[i] = max( f(1) - f(1 - e_i),  max_j  f(1 - e_j) - f(1 - e_i - e_j) ).

    A masking pair's examples have no effect one at a time at the full set (the other still does the damage),
    but each has the pair's effect once its partner is gone: this is how a pair model ranks them first where
    single-example scores cannot. The effects come from the ``full`` estimand, averaged over the test outputs."""
    T = n_test_outputs(result)
    main = np.mean([result.main_effects("full", output=t) for t in range(T)], axis=0)  # f(1) - f(1 - e_i)
    joint = np.mean([result.pair_effects("full", output=t) for t in range(T)], axis=0)  # f(1) - f(1 - e_i - e_j)
    without_j = joint - main[None, :]  # [i, j]: f(1 - e_j) - f(1 - e_i - e_j)
    np.fill_diagonal(without_j, -np.inf)
    return np.maximum(main, without_j.max(axis=1)) if len(main) > 1 else main
