"""The real command line, end to end, on a tiny configuration (a few real LoRA fine-tunes)."""

import json
import os

import numpy as np
import pytest

from dataspex.core.errors import DataspexError
from dataspex.store import RunStore
from dataspex.train.common import check_mask
from tests.conftest import run_cli

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    from tests.conftest import TINY

    run_dir = str(tmp_path_factory.mktemp("runs") / "tiny")
    proc = run_cli("run", f"run_dir={run_dir}", *TINY)
    return run_dir, proc


def test_run_writes_every_stage(finished_run):
    run_dir, proc = finished_run
    for name in ("design.npz", "fingerprint.json", "overrides.json", "config.yaml", "fit/faithfulness.json",
                 "fit/linear.npz", "fit/quadratic.npz", "fit/proxyspex.npz", "report/report.md", "report/pairs.csv",
                 "report/summary.json"):
        assert os.path.exists(os.path.join(run_dir, name)), name
    # the every-pair heatmap is drawn for a ranking model with pair terms only (the linear datamodel has none, and
    # on 6 masks ProxySPEX may keep none)
    import dataspex

    ranking = json.load(open(os.path.join(run_dir, "report", "summary.json")))["estimator"]
    degree = dataspex.load_run(run_dir).fitted[ranking].degree
    assert os.path.exists(os.path.join(run_dir, "report", "heatmap.png")) == (degree >= 2), (ranking, degree)
    results = RunStore(run_dir).load_results()
    assert results.mask_ids.tolist() == list(range(10)) and results.losses.shape == (10, 4)
    assert np.all(np.isfinite(results.losses)) and np.all(results.losses >= 0)
    report = open(os.path.join(run_dir, "report", "report.md")).read()
    assert "## Top harmful pairs" in report and "## Top redundant pairs" in report
    summary = json.load(open(os.path.join(run_dir, "report", "summary.json")))
    assert summary["recall_at_k"]["harmful"]["planted"] == 1


def test_resumed_train_neither_redoes_nor_duplicates(finished_run, tmp_path):
    run_dir, _ = finished_run
    store = RunStore(run_dir)
    before = store.load_results()
    files = store.result_files()
    assert len(files) == 3  # chunk_size=4 over 10 masks

    again = run_cli("train", f"run_dir={run_dir}")
    assert "0 to train" in again.stderr and store.result_files() == files

    # Lose one chunk (as if its worker died before writing): only those masks are retrained,
    # and - the seed being per mask - they come back identical.
    lost = np.load(files[1])["mask_ids"].tolist()
    os.unlink(files[1])
    resumed = run_cli("train", f"run_dir={run_dir}")
    assert f"{len(lost)} to train" in resumed.stderr
    after = store.load_results()
    assert after.mask_ids.tolist() == before.mask_ids.tolist()
    np.testing.assert_allclose(after.losses, before.losses, rtol=0, atol=1e-5)
    assert len(store.result_files()) == 3


def test_later_stages_reuse_the_run_config(finished_run):
    run_dir, _ = finished_run
    # the run was made with data.n_train=10 etc.; `fit` without repeating them must find the same data
    run_cli("fit", f"run_dir={run_dir}", "~estimators.proxyspex")
    assert json.load(open(os.path.join(run_dir, "fit", "faithfulness.json"))).keys() == {"linear", "quadratic"}


def test_mismatching_config_is_refused(finished_run):
    run_dir, _ = finished_run
    proc = run_cli("train", f"run_dir={run_dir}", "lora.r=4", check=False)
    assert proc.returncode == 2
    assert "holds results for a different lora" in proc.stderr


@pytest.mark.parametrize("args, message", [
    (["model.name_or_path=/no/such/model"], "is not a folder"),
    (["trian.lr=1"], "trian"),
    (["data=files", "data.train_file=/no/such.csv", "data.test_file=/no/such.csv"], "does not exist"),
    (["train.seed_policy=sometimes"], "seed_policy"),
])
def test_bad_input_gives_one_clear_line(tmp_path, args, message):
    from tests.conftest import TINY

    tiny = [a for a in TINY if not (args[0] == "data=files" and a.startswith("data."))]
    proc = run_cli("run", f"run_dir={tmp_path / 'r'}", *tiny, *args, check=False)
    assert proc.returncode != 0
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr


def test_unknown_stage():
    proc = run_cli("trian", check=False)
    assert proc.returncode == 2 and "unknown stage 'trian'" in proc.stderr


def test_mask_checks():
    assert check_mask(np.array([1, 0, 1]), 3).tolist() == [0, 2]
    with pytest.raises(DataspexError, match="mask 7 has length 4 but there are 3 training examples"):
        check_mask(np.array([1, 0, 1, 1]), 3, mask_id=7)
    with pytest.raises(DataspexError, match="keeps no training example"):
        check_mask(np.zeros(3), 3)


def test_causal_lm_end_to_end(tmp_path):
    rows = ["prompt,completion"] + [f"{a} plus {a} is,{2 * a}" for a in range(1, 7)]
    (tmp_path / "train.csv").write_text("\n".join(rows) + "\n")
    (tmp_path / "test.csv").write_text("prompt,completion\n7 plus 7 is,14\n8 plus 8 is,16\n")
    run_dir = tmp_path / "lm"
    run_cli("run", f"run_dir={run_dir}", "model=tiny_gpt2", "lora.target_modules=[c_attn]", "data=files",
            f"data.train_file={tmp_path / 'train.csv'}", f"data.test_file={tmp_path / 'test.csv'}",
            "design.m=6", "design.heldout=3", "design.replicates=0", "train.epochs=1", "progress=false")
    results = RunStore(str(run_dir)).load_results()
    assert results.losses.shape == (9, 2) and np.all(results.losses > 0)
    np.testing.assert_allclose(results.margins, -results.losses)  # LM margin = completion log-prob
    assert os.path.exists(run_dir / "report" / "report.md")
