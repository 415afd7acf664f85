"""Every numeric knob checked once, at the start of a stage, into one clear error naming the key and its range.

A wrong type or value (``design.m=abc``, ``design.m=-5``, ``report.top_k=-3``) would otherwise surface as a
numpy traceback, or pass and mislead later (``design.m=0`` fails only at ``fit``). The table below names each
knob with its type and allowed range; a key a config does not have is not checked (e.g. ``design.p`` under
``design=spex``).
"""

from __future__ import annotations

import math
import numbers

from omegaconf import OmegaConf

from dataspex.core.errors import DataspexError

__all__ = ["KNOBS", "check_settings", "check_value"]

# key -> (kind, low, high, inclusive low, inclusive high); kind "int" or "float"; None = unbounded.
KNOBS = {
    "design.m": ("int", 1, None, True, True),
    "design.heldout": ("int", 0, None, True, True),
    "design.p": ("float", 0.0, 1.0, False, True),
    "design.seed": ("int", 0, None, True, True),
    "design.max_degree": ("int", 1, None, True, True),
    "design.candidates": ("int", 2, None, True, True),
    "design.replicates": ("int", 0, None, True, True),
    "report.trust_r2": ("float", 0.0, 1.0, True, False),
    "plan.shards": ("int", 1, None, True, True),
    "drill.top_k": ("int", 1, None, True, True),
    "drill.m": ("int", 1, None, True, True),
    "drill.heldout": ("int", 0, None, True, True),
    "drill.replicates": ("int", 0, None, True, True),
    "drill.p": ("float", 0.0, 1.0, False, False),
    "drill.seed": ("int", 0, None, True, True),
    "plan.gpu_speedup": ("float", 0.0, None, False, True),
    "report.top_k": ("int", 1, None, True, True),
    "validate.top_k": ("int", 1, None, True, True),
    "validate.seeds": ("int", 1, None, True, True),
    "validate.max_seeds": ("int", 1, None, True, True),
    "validate.level": ("float", 0.5, 1.0, True, False),
    "curate.seeds": ("int", 1, None, True, True),
    "curate.random_draws": ("int", 0, None, True, True),
    "curate.level": ("float", 0.5, 1.0, True, False),
    "curate.cleanlab_folds": ("int", 2, None, True, True),
    "data.n_eval": ("int", 0, None, True, True),
    "train.epochs": ("int", 1, None, True, True),
    "train.lr": ("float", 0.0, None, False, True),
    "train.batch_size": ("int", 1, None, True, True),
    "train.weight_decay": ("float", 0.0, None, True, True),
    "train.seed": ("int", 0, None, True, True),
    "train.plateau_tol": ("float", 0.0, None, False, True),
    "train.chunk_size": ("int", 1, None, True, True),
    "lora.r": ("int", 1, None, True, True),
    "lora.alpha": ("float", 0.0, None, False, True),
    "model.max_length": ("int", 1, None, True, True),
    "shard.count": ("int", 1, None, True, True),
    "shard.index": ("int", 0, None, True, True),
}


def _range(low, high, low_in, high_in) -> str:
    if high is None:
        return f"at least {low:g}" if low_in else f"greater than {low:g}"
    return f"in {'[' if low_in else '('}{low:g}, {high:g}{']' if high_in else ')'}"


def check_value(key: str, value, kind: str, low, high, low_in: bool = True, high_in: bool = True):
    """``value`` as an int or float, or a DataspexError naming ``key`` and the allowed range."""
    allowed = _range(low, high, low_in, high_in)
    integral = isinstance(value, numbers.Integral) and not isinstance(value, bool)
    number_ok = integral if kind == "int" else (isinstance(value, numbers.Real) and not isinstance(value, bool)
                                                and math.isfinite(float(value)))
    if not number_ok:
        what = "an integer" if kind == "int" else "a finite number"
        raise DataspexError(f"{key}={value!r} is not {what}: it must be {what} {allowed}")
    number = int(value) if kind == "int" else float(value)
    too_low = low is not None and (number < low if low_in else number <= low)
    too_high = high is not None and (number > high if high_in else number >= high)
    if too_low or too_high:
        raise DataspexError(f"{key}={value} must be {allowed}")
    return number


# design.m is a retraining budget: random and SPEX designs need masks, the pairwise design only warns over it.
BY_DESIGN = {"pairwise": {"design.m": ("int", 0, None, True, True)}}


def check_settings(cfg) -> None:
    """Check every knob of :data:`KNOBS` that ``cfg`` has (and ``shard.index < shard.count``)."""
    knobs = dict(KNOBS, **BY_DESIGN.get(OmegaConf.select(cfg, "design.kind", default=None), {}))
    for key, spec in knobs.items():
        value = OmegaConf.select(cfg, key, default=None)
        if value is None:
            continue
        check_value(key, value, *spec)
    index, count = OmegaConf.select(cfg, "shard.index"), OmegaConf.select(cfg, "shard.count")
    if index is not None and count is not None and not int(index) < int(count):
        raise DataspexError(f"shard.index={index} must be in [0, shard.count={count})")
