"""Shared fixtures: a tiny run configuration that trains in seconds on 2 CPU cores."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

# A few real fine-tunes of the bundled model on a 10-example demo set: small enough for CI, real enough
# to exercise every stage. No seed replicates (4 held-out masks could not give a ceiling): tests/test_report.py's
# synthetic run and tests/test_planning.py exercise them.
TINY = [
    "data.n_train=10", "data.n_harmful=1", "data.n_redundant=1", "data.n_test_bulk=2",
    "design.m=6", "design.heldout=4", "design.replicates=0", "train.epochs=1", "train.batch_size=8", "train.chunk_size=4",
    "progress=false",
]


def run_cli(*args: str, cwd=None, check: bool = True) -> subprocess.CompletedProcess:
    """Run the real ``dataspex`` console script; returns the completed process (stdout+stderr text)."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HYDRA_FULL_ERROR="0")
    exe = os.path.join(os.path.dirname(sys.executable), "dataspex")
    proc = subprocess.run([exe, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"dataspex {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.fixture
def tiny_args():
    return list(TINY)
