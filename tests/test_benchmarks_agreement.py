"""benchmarks/validated_agreement.py: fitted pair models against validate's realised interactions."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from dataspex.fit.estimators.result import InteractionResult
from tests.benchmark_scripts import load_benchmark

agreement = load_benchmark("validated_agreement")

FIELDS = ["kind", "i", "j", "test", "realised", "se", "seeds", "verdict"]


def write_validation(folder: Path, rows: list[dict]) -> str:
    folder.mkdir()
    with open(folder / "validation.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    return str(folder)


def row(i, j, test, realised, seeds):
    return {"kind": "harmful", "i": i, "j": j, "test": test, "realised": realised, "se": 0.1, "seeds": seeds,
            "verdict": "confirmed"}


def test_pairs_and_scores_against_a_known_model(tmp_path, capsys):
    """Two validations of pair (0, 1) keep the one with more seeds; the model's full-set interaction of a pair is
    its pair coefficient at that test example, compared exactly."""
    first = write_validation(tmp_path / "v1", [row(0, 1, 0, 0.9, 16), row(2, 3, 1, -0.5, 16)])
    second = write_validation(tmp_path / "v2", [row(0, 1, 0, 1.1, 64), row(1, 2, 1, 0.2, 16)])
    pairs = agreement.validated_pairs([first, second])
    assert sorted(pairs) == [(0, 1, 0), (1, 2, 1), (2, 3, 1)]
    assert pairs[(0, 1, 0)]["realised"] == "1.1"  # the 64-seed row

    # f_t(x) = sum_k fourier[k, t] (-1)^{|k & x|}: a pair term c (-1)^{x_i + x_j} has second difference 4c.
    model = InteractionResult(4, [(), (0, 1), (1, 2), (2, 3)], np.array([[0.0, 0.0], [0.25, 0.0], [0.0, 0.05],
                                                                          [0.0, -0.1]]))
    path = tmp_path / "model.npz"
    model.save(str(path))
    out = agreement.main(["--validate", first, second, "--model", f"m:{path}"])
    # predicted (0, 1, 0) = 1.0, (1, 2, 1) = 0.2, (2, 3, 1) = -0.4; realised 1.1, 0.2, -0.5
    assert out["m"]["mae"] == pytest.approx((0.1 + 0.0 + 0.1) / 3)
    assert out["m"]["signs"] == 3 and out["m"]["n"] == 3
    assert out["m"]["corr"] == pytest.approx(np.corrcoef([1.0, 0.2, -0.4], [1.1, 0.2, -0.5])[0, 1])
    assert "| (0, 1) (0) | +1.000 | +1.100 (0.100, 64) | confirmed |" in capsys.readouterr().out


def test_a_model_that_predicts_nothing_has_no_correlation():
    scores = agreement.agreement(np.zeros(3), np.array([0.5, -0.2, 0.1]))
    assert np.isnan(scores["corr"]) and scores["signs"] == 0 and scores["mae"] == pytest.approx(0.8 / 3)


def test_confirmed_by_kind_counts_findings_per_kind_and_refuses_other_selections(tmp_path, capsys):
    """benchmarks/confirmed_by_kind.py: per folder and in total, confirmed of validated by kind; a validation of
    another selection (drilled pairs) is refused by name."""
    import json

    script = load_benchmark("confirmed_by_kind")

    def folder(name, select, rows):
        path = tmp_path / name
        path.mkdir()
        (path / "validation.json").write_text(json.dumps({"select": select}))
        (path / "validation.csv").write_text("kind,i,j,predicted,realised,verdict\n" + "".join(
            f"{k},0,1,{p},{r},{v}\n" for k, p, r, v in rows))
        return str(path)

    a = folder("a", "findings", [("harmful", -0.4, -0.3, "confirmed"), ("harmful", -0.5, 0.1, "not confirmed"),
                                 ("redundant", 0.5, 0.2, "confirmed")])
    b = folder("b", "findings", [("redundant", 0.6, 0.3, "not confirmed"), ("redundant", 0.2, 0.3, "confirmed"),
                                 ("harmful", 0.3, "", "pending")])
    out = script.main([a, b])
    assert out["folders"][a] == {"harmful": (1, 2), "redundant": (1, 1)}
    assert out["total"] == {"harmful": (1, 3), "redundant": (2, 3)}
    # signs and sizes over pairs with a realised value: harmful 0.75 and -0.2, redundant 0.4, 0.5 and 1.5
    assert out["signs"]["harmful"] == (1, 2, pytest.approx(0.275), pytest.approx(0.45))
    assert out["signs"]["redundant"] == (3, 3, pytest.approx(0.5), pytest.approx(0.5))
    printed = capsys.readouterr().out
    assert "| all | 1 of 3 | 2 of 3 |" in printed and "harmful: 1 of 2 realised with the predicted sign" in printed
    c = folder("c", "drilled", [("harmful", -0.1, -0.1, "confirmed")])
    with pytest.raises(SystemExit, match="validated select='drilled', not the report's findings"):
        script.main([a, c])
