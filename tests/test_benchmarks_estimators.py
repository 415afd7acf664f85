"""CI-sized smoke tests of benchmarks/estimators.py (--quick) and benchmarks/scale.py."""

from __future__ import annotations

import math
import sys
import time

import pytest

from tests.benchmark_scripts import load_benchmark


@pytest.fixture(scope="module")
def quick_run():
    pytest.importorskip("shapiq")
    lines: list[str] = []
    t0 = time.perf_counter()
    out = load_benchmark("estimators").main(["--quick"], log=lines.append)
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


@pytest.fixture(scope="module")
def spectralexplain_run():
    pytest.importorskip("spectralexplain")
    lines: list[str] = []
    out = load_benchmark("estimators").main(["--quick", "--parts", "spectralexplain"], log=lines.append)
    return out, "\n".join(lines)


@pytest.mark.slow  # spectralexplain's first call compiles galois/numba code (about a minute on 2 cores)
@pytest.mark.timeout(600)
def test_spectralexplain_cross_check(spectralexplain_run):
    out, text = spectralexplain_run
    assert "| SPEX (spectralexplain) |" in text and "| SPEX (dataspex) |" in text
    rows = {r["estimator"]: r for r in out["spectralexplain"]}
    ours, main, theirs = rows["SPEX (dataspex)"], rows["SPEX +main effects (dataspex)"], rows["SPEX (spectralexplain)"]
    # Same data where the designs allow it: the same held-out masks for every R^2, and the same structured budget
    # (C * (P + 1) * 2^b = 3 * 22 * 16 masks at n = 64, t = 3, m = 2000) on both sides.
    assert ours["heldout_sum"] == main["heldout_sum"] == theirs["heldout_sum"]
    assert ours["b"] == theirs["b"] == 4 and ours["masks"] == theirs["masks"] == theirs["masks_expected"] == 1056
    assert theirs["masks_per_output"] == [1056]
    # Every value spectralexplain decoded came from our value function, which recorded the masks it was asked.
    assert theirs["same_queries"]
    # Its design has no offset: the empty set is queried and the P + 1 delay masks repeat in each of the 3 groups;
    # our default design (random offsets) has neither.
    assert theirs["has_empty_mask"] and theirs["distinct_masks"] == 1056 - 2 * 22
    assert not ours["has_empty_mask"] and ours["distinct_masks"] == 1056
    # Recovery.  At SNR 10 an estimate with the full planted support fit on ~1,000 masks has R^2 ~ 0.99 (estimation
    # error ~ (#coefficients / #masks) / SNR <= 78 / 1056 / 10 < 0.01 with spectralexplain's lasso over all n main
    # effects); missing even the weakest pair (0.5^2 of a variance ~ 12.5) costs 0.02.  So R^2 > 0.97 means at most a
    # triple was lost.  spectralexplain recovers every planted term of the first outputs; ours, on all T = 10
    # outputs at once, misses one pair and one triple of output 0 (0.962) and is near exact elsewhere.
    assert theirs["r2_subset"] > 0.97
    assert all(f == p for f, p in zip(theirs["planted_found"], theirs["n_planted"]))
    assert ours["r2_all"] > 0.97 and main["r2_all"] > 0.97
    assert sum(ours["planted_found"]) >= sum(ours["n_planted"]) - 3
    # The strongest interactions agree: the two top-10 lists share at least 8 keys on average.
    assert ours["top_agreement"] >= 0.8 and main["top_agreement"] >= 0.8
    assert ours["s_per_output"] > 0 and theirs["s_per_output"] > 0


def test_spectralexplain_missing_is_reported(monkeypatch):
    monkeypatch.setitem(sys.modules, "spectralexplain", None)  # makes `import spectralexplain` raise ImportError
    lines: list[str] = []
    out = load_benchmark("estimators").main(["--quick", "--parts", "spectralexplain"], log=lines.append)
    assert out["spectralexplain"] == [] and "not installed" in out["spectralexplain_skipped"]
    assert any("Skipping the spectralexplain cross-check" in ln and "pip install spectralexplain" in ln for ln in lines)


def test_scale_script_smoke(tmp_path):
    lines: list[str] = []
    rows = load_benchmark("scale").main(["--n", "120", "--m", "400", "--T", "4", "--heldout", "200", "--json", str(tmp_path / "s.jsonl")], log=lines.append)
    assert {r["estimator"] for r in rows} == {"linear", "proxyspex", "spex"}
    assert all(r["masks_dtype"] == "uint8" and r["peak_rss_gb"] > 0 for r in rows)
    assert any("| ProxySPEX(" in ln for ln in lines)
    assert (tmp_path / "s.jsonl").read_text().count("\n") == 3
