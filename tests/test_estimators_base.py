"""Input validation of the estimator base class, and the metrics."""

import numpy as np
import pytest

from dataspex.core.errors import DataspexError
from dataspex.estimators import DataspexInputError, LinearDatamodel
from dataspex.core.metrics import faithfulness_r2, lds, recall_at_k


@pytest.fixture(scope="module")
def fitted():
    rng = np.random.default_rng(0)
    X = (rng.random((100, 6)) < 0.5).astype(np.uint8)
    return LinearDatamodel(cv=3).fit(X, X @ np.arange(6.0)), X


def test_nan_in_y_names_rows():
    X = np.ones((5, 3), dtype=np.uint8)
    Y = np.zeros((5, 2))
    Y[3, 1] = np.nan
    with pytest.raises(DataspexInputError, match=r"rows \[3\]") as err:
        LinearDatamodel().fit(X, Y)
    assert isinstance(err.value, ValueError) and isinstance(err.value, DataspexError)


@pytest.mark.parametrize(
    "masks, Y, match",
    [
        (np.ones((3, 2)), np.zeros((0,)), "empty|rows"),
        (np.ones((0, 2)), np.zeros((0, 1)), "empty"),
        (np.ones((3, 2)), np.zeros((4, 1)), "4 rows but masks has 3"),
        (np.full((3, 2), 2), np.zeros(3), "only 0 and 1"),
        (np.ones(3), np.zeros(3), "2-D"),
        (np.ones((3, 2)), np.zeros((3, 1, 1)), "1-D"),
        (np.ones((3, 2)), np.zeros((3, 0)), "empty"),
    ],
)
def test_bad_fit_inputs(masks, Y, match):
    with pytest.raises(DataspexInputError, match=match):
        LinearDatamodel().fit(masks, Y)


def test_predict_wrong_width_and_score(fitted):
    est, X = fitted
    with pytest.raises(DataspexInputError, match="7 columns"):
        est.predict(np.ones((2, 7), dtype=np.uint8))
    assert est.score(X, X @ np.arange(6.0)) > 0.99
    assert est.top_pairs("interaction").empty  # a linear model has no pairs


def test_metrics():
    rng = np.random.default_rng(1)
    Y = rng.normal(size=(50, 3))
    assert faithfulness_r2(Y, Y) == 1.0
    per = faithfulness_r2(Y, np.zeros_like(Y) + Y.mean(0), multioutput="raw_values")
    np.testing.assert_allclose(per, 0.0, atol=1e-12)
    assert lds(Y, 2 * Y + 1) == pytest.approx(1.0)
    assert lds(Y, -Y, multioutput="raw_values").tolist() == pytest.approx([-1.0] * 3)
    assert faithfulness_r2(np.ones(4), np.ones(4)) == 1.0
    with pytest.raises(DataspexError):
        faithfulness_r2(Y, Y[:, :2])
    reported = [(1, 2), (3, 4), (2, 1), (5, 6)]
    assert recall_at_k(reported, [(2, 1), (6, 5)], k=2) == 0.5
    assert recall_at_k(reported, [(2, 1), (6, 5)], k=3) == 1.0  # repeated (2, 1) counts once
    import pandas as pd

    assert recall_at_k(pd.DataFrame({"i": [4], "j": [3]}), [(3, 4)], k=1) == 1.0
