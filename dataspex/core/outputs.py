"""The outputs dataspex can model, one name each, every one oriented as a cost: higher = worse for the test example.

A retrain records two numbers per test example (:mod:`dataspex.train.common`): the loss (nats: cross-entropy of
the gold label, or the completion's summed negative log-likelihood) and the margin (classification: gold logit
minus the logsumexp of the others, i.e. log p - log(1 - p)). ``fit.output`` picks what the estimators model, as a
function of those two:

* ``loss``: the loss itself, in nats.
* ``margin``: the *negative* margin, in nats of log-odds. Negated so that it points the way the loss does: every
  pair kind the report lists ("harmful": keeping both raises the output; "redundant": dropping both raises it) is
  defined for a cost, and before this orientation a margin fit listed the planted harmful pairs of the demo as
  redundant and advised dropping correct near-copies (tests/test_outputs.py).
* ``error``: the probability of a wrong answer, 1 - exp(-loss) = 1 - p(gold) (for a completion: 1 - p(completion)).
  Bounded in [0, 1], so it saturates where the loss does not: once one mislabelled near-copy has pushed p(gold)
  to about 0, a second adds nothing, and each copy's single effect shrinks to the chance that the other is absent.
  That makes harmful near-copy pairs "masking" pairs that first-order scores miss at a high kept fraction
  (benchmarks/README.md, *The error probability at a kept fraction of 0.9*).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dataspex.core.errors import DataspexError

__all__ = ["OUTPUTS", "Output", "modelled_output"]


@dataclass(frozen=True)
class Output:
    """One modelled output: ``name`` (the ``fit.output`` value), ``what`` (words for reports) and ``unit``."""

    name: str
    what: str
    unit: str


OUTPUTS = {
    "loss": Output("loss", "the test loss", "nats"),
    "margin": Output("margin", "the negative margin (minus the gold label's log-odds)", "nats of log-odds"),
    "error": Output("error", "the probability of a wrong answer (1 - p(gold))", "units of probability"),
}


def modelled_output(kind: str, losses: np.ndarray, margins: np.ndarray) -> np.ndarray:
    """The output ``kind`` (a key of :data:`OUTPUTS`) from recorded ``losses`` and ``margins`` (m, n_test), as a
    cost of the same shape (float64)."""
    if kind == "loss":
        return np.asarray(losses, dtype=np.float64)
    if kind == "margin":
        return -np.asarray(margins, dtype=np.float64)
    if kind == "error":
        return -np.expm1(-np.asarray(losses, dtype=np.float64))  # 1 - exp(-loss), exact near loss = 0
    raise DataspexError(f"output={kind!r} is not one of: {', '.join(OUTPUTS)}")
