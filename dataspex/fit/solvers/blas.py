"""Threads: BLAS threading for many small matrix products, and how many cores this process may use."""

from __future__ import annotations

import contextlib
import os

from threadpoolctl import ThreadpoolController

__all__ = ["small_blas", "usable_cores"]


def small_blas(flops_per_call: float, threshold: float = 2e8):
    """Context limiting BLAS to one thread when the matrix products are small.

    Many small products (iterative solvers) gain nothing from BLAS threads, and on a busy
    2-core machine OpenBLAS's spinning threads made them ~20x slower (measured).
    """
    if flops_per_call >= threshold:
        return contextlib.nullcontext()
    global _CONTROLLER
    if _CONTROLLER is None:  # scanning the loaded libraries costs ~5 ms: do it once
        _CONTROLLER = ThreadpoolController()
    return _CONTROLLER.limit(limits=1, user_api="blas")


_CONTROLLER = None


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity: a Slurm allocation or taskset, not the machine's count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)
