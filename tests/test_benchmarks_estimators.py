"""CI-sized smoke tests of benchmarks/estimators.py (--quick) and benchmarks/scale.py."""

from __future__ import annotations

import importlib.util
import math
import time
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"_bench_{name}", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def quick_run():
    pytest.importorskip("shapiq")
    lines: list[str] = []
    t0 = time.perf_counter()
    out = _load("estimators").main(["--quick"], log=lines.append)
    return out, "\n".join(lines), time.perf_counter() - t0


def test_quick_benchmark_prints_tables_in_time(quick_run):
    out, text, seconds = quick_run
    assert seconds < 60, f"--quick took {seconds:.0f} s"
    assert "Faithfulness R^2" in text and "Fit time per output" in text
    for name in ("LinearDatamodel", "QuadraticProxy", "ProxySPEX", "SPEX", "Pairwise"):
        assert f"| {name} |" in text
    assert "| ProxySPEX (shapiq) |" in text and "| ProxySPEX (dataspex) |" in text


def test_quick_benchmark_r2_is_sane(quick_run):
    out, _, _ = quick_run
    r2 = {(r["estimator"], r["m"]): r["r2"] for r in out["r2"]}
    for m in (500, 1000):
        assert r2[("ProxySPEX", m)] > 0.8  # easy sparse function: trees find it
        # a linear model explains the main effects (~60% of the variance) and no more
        assert 0.4 < r2[("LinearDatamodel", m)] < 0.8
        assert r2[("QuadraticProxy", m)] > r2[("LinearDatamodel", m)]
        assert math.isfinite(r2[("SPEX", m)])
    timing = {r["estimator"]: r for r in out["timing"]}
    ours, theirs = timing["ProxySPEX (dataspex)"], timing["ProxySPEX (shapiq)"]
    assert theirs["r2_subset"] > 0.8
    assert ours["r2_subset"] > theirs["r2_subset"] - 0.05  # same masks, same values, same grid
    assert ours["s_per_output"] > 0 and ours["speedup"] > 0


def test_scale_script_smoke(tmp_path):
    lines: list[str] = []
    rows = _load("scale").main(["--n", "120", "--m", "400", "--T", "4", "--heldout", "200", "--json", str(tmp_path / "s.jsonl")], log=lines.append)
    assert {r["estimator"] for r in rows} == {"linear", "proxyspex", "spex"}
    assert all(r["masks_dtype"] == "uint8" and r["peak_rss_gb"] > 0 for r in rows)
    assert any("| ProxySPEX(" in ln for ln in lines)
    assert (tmp_path / "s.jsonl").read_text().count("\n") == 3
