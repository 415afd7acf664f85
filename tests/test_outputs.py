"""The modelled outputs (dataspex/core/outputs.py): exact values, every one a cost, and a report whose pair kinds
do not depend on which output was fitted."""

from __future__ import annotations

import json
import os

import numpy as np
import pandas as pd
import pytest

from tests.conftest import run_cli
from tests.test_report import REPORT_ARGS, copy_run


def test_modelled_outputs_exact_values():
    from dataspex.core.outputs import modelled_output

    losses = np.array([[0.0, np.log(2.0), 50.0], [1e-12, np.log(4.0), 2.0]])
    margins = np.array([[3.0, -1.0, 0.0], [0.5, 2.0, -7.0]])
    np.testing.assert_array_equal(modelled_output("loss", losses, margins), losses)
    np.testing.assert_array_equal(modelled_output("margin", losses, margins), -margins)
    error = modelled_output("error", losses, margins)
    np.testing.assert_allclose(error, [[0.0, 0.5, 1.0], [1e-12, 0.75, 1.0 - np.exp(-2.0)]], rtol=1e-12, atol=0)
    assert error[1, 0] > 0  # 1 - exp(-1e-12) computed without cancellation


def test_unknown_output_is_refused_by_name():
    from dataspex.core.errors import DataspexError
    from dataspex.core.outputs import modelled_output

    with pytest.raises(DataspexError) as info:
        modelled_output("accuracy", np.zeros((1, 1)), np.zeros((1, 1)))
    assert str(info.value) == "output='accuracy' is not one of: loss, margin, error"


def test_results_outputs_are_the_modelled_outputs(tmp_path):
    from dataspex.core.outputs import OUTPUTS, modelled_output
    from dataspex.store import RunStore

    run = RunStore(copy_run(tmp_path))
    results = run.load_results(run.load_design())
    for name in OUTPUTS:
        np.testing.assert_array_equal(results.outputs(name),
                                      modelled_output(name, results.losses, results.margins))


def _pairs(run_dir: str) -> pd.DataFrame:
    pairs = pd.read_parquet(os.path.join(run_dir, "report", "pairs.parquet"))
    return pairs.sort_values(["kind", "rank"]).reset_index(drop=True)


def test_a_margin_fit_ranks_the_same_pairs_as_the_loss(tmp_path):
    """The synthetic run records margin = -loss. Fitted on the margin, the report must list the same pairs under
    the same kinds as on the loss: before the margin was modelled as a cost, harmful and redundant swapped places
    (the demo's mislabelled near-copies were listed as "keep at least one")."""
    run_dir = copy_run(tmp_path)
    on_loss = _pairs(run_dir)
    run_cli("fit", f"run_dir={run_dir}", "fit.output=margin")
    run_cli("report", f"run_dir={run_dir}", *REPORT_ARGS)
    on_margin = _pairs(run_dir)
    assert set(on_loss["kind"]) == {"harmful", "redundant"}
    cols = ["kind", "rank", "i", "j", "test"]
    pd.testing.assert_frame_equal(on_margin[cols], on_loss[cols])
    summary = json.load(open(os.path.join(run_dir, "report", "summary.json")))
    assert summary["output"] == "margin"
    assert summary["recall_at_k"]["harmful"]["recall"] == 1.0
    report = open(os.path.join(run_dir, "report", "report.md")).read()
    assert "the negative margin (minus the gold label's log-odds) in nats of log-odds" in report


def test_an_error_fit_names_its_output_and_unit(tmp_path):
    run_dir = copy_run(tmp_path)
    run_cli("fit", f"run_dir={run_dir}", "fit.output=error")
    run_cli("report", f"run_dir={run_dir}", *REPORT_ARGS)
    faith = json.load(open(os.path.join(run_dir, "fit", "faithfulness.json")))
    assert {row["output"] for row in faith.values()} == {"error"}
    assert json.load(open(os.path.join(run_dir, "report", "summary.json")))["output"] == "error"
    report = open(os.path.join(run_dir, "report", "report.md")).read()
    assert "the probability of a wrong answer (1 - p(gold)) in units of probability" in report
    assert 'where this report says "test loss" it means this output' in report


def test_an_unknown_fit_output_fails_before_fitting(tmp_path):
    run_dir = copy_run(tmp_path)
    before = open(os.path.join(run_dir, "fit", "faithfulness.json")).read()
    proc = run_cli("fit", f"run_dir={run_dir}", "fit.output=accuracy", check=False)
    assert proc.returncode != 0
    assert "output='accuracy' is not one of: loss, margin, error" in proc.stderr
    assert open(os.path.join(run_dir, "fit", "faithfulness.json")).read() == before

