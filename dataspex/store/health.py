"""Did every mask's fine-tune train? Flags masks whose training diverged or did not converge.

Pure functions of the results (nothing is read or written): ``dataspex train`` logs the flagged masks (a
WARNING line), ``dataspex status`` prints them (a ``DIVERGED`` line), and the report can show them::

    from dataspex.store.health import flag_results, summary
    flags = flag_results(store.load_results())
    if flags["n_flagged"]:
        print("DIVERGED", summary(flags))

A mask is flagged, with each reason that applies, when

* ``non-finite test loss``: a test loss is NaN or infinite;
* ``test loss above MAX_LOSS nats``: a test loss exceeds :data:`MAX_LOSS` (absurd: see below);
* ``non-finite training loss``: a recorded training loss is infinite, or NaN before a recorded one (the epochs
  a plateau stop skipped, ``train.plateau_tol``, are a run of NaN at the end of the record, not a fault: a NaN
  training loss that did come from training leaves NaN weights, which the engines refuse at the test losses);
* ``training loss did not fall``: the last trained epoch's mean training loss is not below the loss training
  started from (the untrained model on the mask's first batch: ``dataspex.train.common.loss_record``). Checked
  with two or more trained epochs (with one, that epoch holds the start), and not for masks from result files
  written before training losses were recorded.

Why ``MAX_LOSS = 1000`` nats. A test loss is a cross-entropy (classification) or a completion's summed
negative log-likelihood (causal LM), so 1000 nats means a probability of e^-1000 for the gold answer. Measured
on the demo set (64 training examples, 16 test examples, MiniLM, 12 epochs, batch 16; the default recipe's
240 masks at lr 5e-3, 64 masks at each other lr): healthy runs reach at most 7.9 nats (median 0.005; the
mislabelled "harmful" examples are the high ones), 15.6 at lr 0.05; lr 0.5 reaches 41 nats, lr 5 205,
lr 50 2.0e3 and lr 1e6 5.2e7 nats. An untrained causal LM pays about ln(vocabulary) ~ 11 nats per completion
token, so 1000 nats stays clear of healthy completions of up to ~90 tokens (pass ``max_loss`` for longer ones).

The training-loss check catches the divergence below that: every mask starts at 0.68-0.70 nats (ln 2, two
labels); the last epoch ends at most 0.15x the start at lr 5e-3 and 0.79x at lr 0.05 (no mask flagged), while
11 of 64 masks end above the start at lr 0.5, 62 of 64 at lr 5 and all at lr 50 and 1e6.
"""

from __future__ import annotations

import numpy as np

from dataspex.store.run_store import Results

MAX_LOSS = 1000.0  # nats; see the module docstring for the measurement behind it

NON_FINITE_TEST = "non-finite test loss"
NON_FINITE_TRAIN = "non-finite training loss"
NOT_FALLING = "training loss did not fall"


def absurd(max_loss: float) -> str:
    """The reason naming test losses above ``max_loss``."""
    return f"test loss above {max_loss:g} nats"


def flag_masks(mask_ids, losses, train_losses=None, max_loss: float = MAX_LOSS) -> dict:
    """Flag masks of diverged or non-converged training.

    ``losses`` (m, n_test): test losses; ``train_losses`` (m, 1 + epochs), optional: training-loss records
    (the start, then each epoch's mean), all-NaN rows where not recorded. Returns a dict:

    * ``n_masks``: how many masks were checked; ``n_flagged``: how many are flagged; ``ids``: their mask ids,
      sorted;
    * ``reasons``: mask id -> list of the reasons above (strings), for flagged masks only;
    * ``counts``: reason -> how many masks have it; ``max_loss``: the threshold used.
    """
    mask_ids = [int(i) for i in np.asarray(mask_ids).reshape(-1)]
    losses = _rows(losses, len(mask_ids))
    reasons: dict[int, list[str]] = {}

    def add(rows, reason):
        for k in np.flatnonzero(rows):
            reasons.setdefault(mask_ids[k], []).append(reason)

    finite = np.isfinite(losses)
    add(~finite.all(axis=1), NON_FINITE_TEST)
    add(np.where(finite, losses, -np.inf).max(axis=1, initial=-np.inf) > max_loss, absurd(max_loss))
    if train_losses is not None:
        curves = _rows(train_losses, len(mask_ids))
        recorded = ~np.isnan(curves).all(axis=1) if curves.shape[1] else np.zeros(len(mask_ids), bool)
        if curves.shape[1]:
            epochs = trained_epochs(curves)
            trained = np.arange(curves.shape[1]) <= epochs[:, None]  # the start up to the last recorded column
            add(recorded & (np.isinf(curves).any(axis=1) | (trained & ~np.isfinite(curves)).any(axis=1)),
                NON_FINITE_TRAIN)
            last = curves[np.arange(len(curves)), np.maximum(epochs, 0)]
            with np.errstate(invalid="ignore"):  # the start and two or more trained epochs
                add(recorded & (epochs >= 2) & ~(last < curves[:, 0]), NOT_FALLING)
    return _flags(len(mask_ids), reasons, max_loss)


def trained_epochs(train_losses) -> np.ndarray:
    """The epochs each training-loss record (m, 1 + epochs) holds: the index of its last recorded (non-NaN)
    column, fewer than ``train.epochs`` after a plateau stop; -1 for a record with nothing recorded. (m,) int."""
    curves = np.asarray(train_losses, dtype=np.float64)
    recorded = ~np.isnan(curves)
    last = curves.shape[1] - 1 - np.argmax(recorded[:, ::-1], axis=1)
    return np.where(recorded.any(axis=1), last, -1)


def flag_results(results: Results, max_loss: float = MAX_LOSS) -> dict:
    """:func:`flag_masks` on a run's :class:`~dataspex.store.Results` (``RunStore.load_results()``)."""
    return flag_masks(results.mask_ids, results.losses, results.train_losses, max_loss)


def merge(a: dict, b: dict) -> dict:
    """The flags of two disjoint sets of masks (say two chunks) as one."""
    return _flags(a["n_masks"] + b["n_masks"], {**a["reasons"], **b["reasons"]}, a["max_loss"])


def summary(flags: dict, limit: int = 20) -> str:
    """``"12 masks: 3, 5, ... (test loss above 1000 nats: 10, training loss did not fall: 12)"``."""
    ids = flags["ids"]
    shown = ", ".join(map(str, ids[:limit])) + (", ..." if len(ids) > limit else "")
    counts = ", ".join(f"{reason}: {n}" for reason, n in flags["counts"].items())
    return f"{flags['n_flagged']} of {flags['n_masks']} masks: {shown} ({counts})"


def _rows(values, m: int) -> np.ndarray:
    """``values`` as an (m, k) float64 array, one row per mask."""
    values = np.asarray(values, dtype=np.float64)
    return values.reshape(m, -1) if m else values.reshape(0, 0)


def _flags(n_masks: int, reasons: dict, max_loss: float) -> dict:
    counts: dict[str, int] = {}
    for why in reasons.values():
        for reason in why:
            counts[reason] = counts.get(reason, 0) + 1
    order = [NON_FINITE_TEST, absurd(max_loss), NON_FINITE_TRAIN, NOT_FALLING]  # the order the checks run in
    counts = dict(sorted(counts.items(), key=lambda kv: order.index(kv[0]) if kv[0] in order else len(order)))
    return {"n_masks": int(n_masks), "n_flagged": len(reasons), "ids": sorted(reasons),
            "reasons": {i: reasons[i] for i in sorted(reasons)}, "counts": counts, "max_loss": float(max_loss)}
