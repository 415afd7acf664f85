"""benchmarks/curation.py: the flipped-label table by hand, and a small end-to-end run on a synthetic fit (the
cross-fit, DataInf and removal-study retrains are real fine-tunes)."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from tests.benchmark_scripts import load_benchmark

curation = load_benchmark("curation")


def test_flip_table_by_hand():
    harm = np.arange(20, dtype=float)[::-1]  # example 0 ranked first, 19 last
    table = curation.flip_table({"m": harm}, flipped=[0, 3, 19], n_train=20)["m"]
    # top 5% = 1 example (#0), 10% = 2 (#0, #1), 20% = 4 (#0..#3)
    assert table["found_at_5pct"] == pytest.approx(1 / 3) and table["found_at_10pct"] == pytest.approx(1 / 3)
    assert table["found_at_20pct"] == pytest.approx(2 / 3)
    # AUC: of the 3 x 17 (flipped, clean) pairs, #0 beats 17, #3 beats 15 (not #1, #2), #19 beats 0
    assert table["auc"] == pytest.approx((17 + 15 + 0) / 51)


@pytest.mark.slow
def test_curation_benchmark_end_to_end(tmp_path, capsys):
    from tests.test_report import copy_run

    run_dir = copy_run(tmp_path)
    data_manifest = {"planted": [{"kind": "harmful", "i": 0, "j": 1, "test": 0}], "flipped": [{"i": 2}, {"i": 5}]}
    manifest = tmp_path / "manifest.json"
    manifest.write_text(json.dumps(data_manifest))
    out = tmp_path / "bench"
    assert curation.main(["--run", run_dir, "--manifest", str(manifest), "--out", str(out), "--seeds", "2",
                          "--fractions", "0.1,0.2", "--random-draws", "2"]) == 0
    result = json.load(open(out / "curation.json"))
    assert set(result["flipped"]) == {"dataspex", "linear", "cleanlab", "datainf", "random"}  # no TRAK in this run
    assert result["replicates"] == 2 and result["n_flipped"] == 2
    for method, row in result["removal"].items():
        assert [row[f]["removed"] for f in ("0.1", "0.2")] == [1, 2]
        assert all(np.isfinite(row[f]["loss_change"]) for f in row)
    from dataspex.store import RunStore
    (study_dir,) = [p for p in out.iterdir() if p.name.startswith("study-")]
    study = RunStore(str(study_dir))
    design = study.load_design()
    # full + 4 methods x 2 fractions + 2 random draws x 2 fractions, each x 2 seeds, all trained
    assert len(design) == (1 + 4 * 2 + 2 * 2) * 2 == len(study.load_results(design))
    assert "| method | AUC |" in capsys.readouterr().out
    assert os.path.isdir(os.path.join(run_dir, "curate", "crossfit-5")) and (out / "datainf.npy").exists()
    faith = json.load(open(os.path.join(run_dir, "fit", "faithfulness.json")))
    pair_models = {"quadratic", "proxyspex"}  # the run's fitted pair models: the score comes from the more faithful
    assert result["dataspex_estimator"] == max(pair_models, key=lambda n: faith[n]["r2_pooled"])
