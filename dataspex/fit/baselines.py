"""First-order baselines a curation team would use instead of pairs: one harm score per training example.

``harm[i] > 0`` means: keeping example i raises the mean test loss, so removing the examples with the largest harm
is what the baseline recommends. Both are computed on the test split, as dataspex's own ranking is, so that
``dataspex curate`` compares them on the eval split on equal terms:

* ``linear``: the linear datamodel's main effect of keeping i (the ``uniform`` estimand, nats), averaged over the
  test examples;
* ``trak``: minus the mean over test examples of the TRAK score (``scores[i, t] > 0``: keeping i raises test t's
  margin), in TRAK's own units; only its order matters here.
"""

from __future__ import annotations

import numpy as np

from dataspex.fit.ranking import n_test_outputs

__all__ = ["BASELINES", "harm_scores", "top_harmful"]

BASELINES = ("linear", "trak")


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
