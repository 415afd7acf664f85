"""BLAS threading for many small matrix products."""

from __future__ import annotations

import contextlib

from threadpoolctl import ThreadpoolController

__all__ = ["small_blas"]


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
