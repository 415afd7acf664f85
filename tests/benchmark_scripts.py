"""The benchmark scripts as modules, for the tests that check their arithmetic (not collected: no test_ prefix).

``benchmarks/`` is a folder of scripts, not a package: each is loaded from its file under a private name
(``_bench_<name>``), and the folder goes on ``sys.path`` because the scripts import each other by name (as they do
when run from the command line)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def load_benchmark(name: str):
    """``benchmarks/<name>.py``, executed as a fresh module."""
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    spec = importlib.util.spec_from_file_location(f"_bench_{name}", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
