"""Smoke run of the proof-on-real-retraining benchmark (benchmarks/proof.py --quick): real LoRA retrains of a
tiny exhaustive task and a tiny planted-pairs task, every estimator fitted and scored, figures written."""

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_proof_quick_runs_and_resumes(tmp_path):
    cache, out = tmp_path / "cache", tmp_path / "out"
    cmd = [sys.executable, "-m", "benchmarks.proof", "--quick", "--cache", str(cache), "--out", str(out)]
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-4000:]
    results = json.loads((out / "proof_results.json").read_text())
    exact = results["exact"]
    assert exact["n_subsets"] == 2 ** exact["n"]
    names = {r["estimator"] for r in exact["rows"]}
    assert {"linear", "quadratic", "proxyspex", "pairwise_linear"} <= names
    for r in exact["rows"]:
        assert r["r2"] is None or r["r2"] <= 1.0
    assert "planted_n8" in results and results["planted_n8"]["rows"]
    assert 0.0 <= results["noise"]["exact_n6"]["replicate_r2"] <= 1.0 or results["noise"]["exact_n6"]["replicate_r2"] < 0
    assert (out / "proof_exact.png").exists() and (out / "proof_planted_n8.png").exists()
    assert "### Exact ground truth" in done.stdout

    # A second run retrains nothing: every retrain is cached.
    again = subprocess.run(cmd + ["--parts", "exact"], cwd=ROOT, env=env, capture_output=True, text=True,
                           timeout=900)
    assert again.returncode == 0, again.stderr[-4000:]
    assert json.loads((out / "proof_results.json").read_text())["exact"]["retrained_now"] == 0
