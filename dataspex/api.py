"""``dataspex.load_run(path)``: everything a finished run directory holds, as Python objects.

    run = dataspex.load_run("outputs/2025-01-01_12-00-00")
    run.data.train.texts[3]           # the texts (and labels) the run was made on
    run.design                        # dataspex.design.Design: masks, ids, roles (fit / heldout / validate)
    run.results                       # DataFrame: one row per retrain (mask_id, role, n_kept, loss_<t>, margin_<t>)
    run.fitted["proxyspex"]           # InteractionResult of every fitted estimator
    run.faithfulness                  # held-out R^2 per estimator (DataFrame)
    run.pairs("harmful", k=10)        # ranked pairs, live from a fitted estimator
    run.report_pairs                  # report/pairs.parquet, as the report listed them
    run.validation                    # validate/validation.parquet (None before `dataspex validate`)
    run.summary["examples_to_review_predicted"]   # report/summary.json: what the ranking model says to review,
    run.summary["examples_to_review_validated"]   # and what the retrains confirmed (None before validate)
    run.to_shapiq(output="test_0")    # shapiq.InteractionValues (Moebius, or any index shapiq converts to)

Everything is read lazily: nothing is loaded until asked for, and the files are never modified.
"""

from __future__ import annotations

import os
from functools import cached_property

import numpy as np
import pandas as pd
from omegaconf import OmegaConf

from dataspex.core.data import load_data
from dataspex.core.errors import DataspexError
from dataspex.core.files import read_json
from dataspex.fit.artifacts import choose_estimator, load_fitted
from dataspex.fit.ranking import ranked_pairs
from dataspex.report import describe_pairs
from dataspex.store import RunStore

__all__ = ["Run", "load_run"]


def load_run(path) -> Run:
    """Open a run directory written by ``dataspex run`` (or ``design``/``train``/``fit``)."""
    path = os.path.abspath(os.path.expanduser(os.fspath(path)))
    if not os.path.exists(os.path.join(path, "fingerprint.json")):
        raise DataspexError(f"{path} is not a dataspex run directory (no fingerprint.json)")
    return Run(path)


class Run:
    """A run directory, read lazily. See the module docstring for a tour."""

    def __init__(self, path: str):
        self.path = path
        self.store = RunStore(path)

    def __repr__(self) -> str:
        return f"Run({self.path!r})"

    # ---------------------------------------------------------------------------------------- config, data
    @cached_property
    def config(self):
        """The run's resolved config (``config.yaml``) as an OmegaConf object."""
        path = self.store.path("config.yaml")
        if not os.path.exists(path):
            raise DataspexError(f"{self.path} has no config.yaml: it was not made by `dataspex run`/`design`")
        return OmegaConf.load(path)

    @cached_property
    def data(self):
        """The train and test splits (``dataspex.core.data.TaskData``), checked against the run's fingerprint."""
        data = load_data(self.config.data, self.config.model.task)
        stored = (self.store.stored_fingerprint() or {}).get("data")
        if stored is not None and stored != data.content_hash():
            raise DataspexError(f"the data described in {self.path}/config.yaml no longer matches the run's "
                                "fingerprint (the files changed since the run)")
        return data

    @property
    def train_texts(self) -> list[str]:
        return list(self.data.train.texts)

    @property
    def test_texts(self) -> list[str]:
        return list(self.data.test.texts)

    # ---------------------------------------------------------------------------------------- design, results
    @cached_property
    def design(self):
        return self.store.load_design()

    @cached_property
    def raw_results(self):
        """``dataspex.store.Results``: mask ids, masks and (m, n_test) losses and margins, ordered by id."""
        return self.store.load_results(self.design)

    @cached_property
    def results(self) -> pd.DataFrame:
        """One row per finished retrain: mask_id, role, n_kept, then loss_<t> and margin_<t> per test example."""
        res = self.raw_results
        role = dict(zip(self.design.mask_ids.tolist(), self.design.roles.tolist()))
        frame = pd.DataFrame({"mask_id": res.mask_ids, "role": [role[int(i)] for i in res.mask_ids],
                              "n_kept": res.masks.sum(axis=1).astype(np.int64)})
        T = res.losses.shape[1] if len(res) else 0
        losses = pd.DataFrame(res.losses, columns=[f"loss_{t}" for t in range(T)])
        margins = pd.DataFrame(res.margins, columns=[f"margin_{t}" for t in range(T)])
        return pd.concat([frame, losses, margins], axis=1)

    # ---------------------------------------------------------------------------------------- fitted models
    @cached_property
    def _fit(self):
        return load_fitted(self.store)

    @property
    def fitted(self) -> dict:
        """{estimator name: InteractionResult}; refuses (DataspexError) a fit set that is not one whole fit of the
        run's design (e.g. left mixed by a killed pre-stamp refit): re-run `dataspex fit` then."""
        return self._fit[0]

    @property
    def faithfulness(self) -> pd.DataFrame:
        """Held-out faithfulness per estimator: r2 (mean over outputs), r2_pooled (1 - total SSE / total SST over
        the test examples: what ``report.estimator=auto`` ranks by), fit masks, held-out masks, seconds."""
        rows = [{"estimator": n, "r2": f["r2_mean_over_outputs"], "r2_pooled": f.get("r2_pooled"),
                 "n_fit_masks": f["n_fit_masks"],
                 "n_heldout_masks": f["n_heldout_masks"], "fit_seconds": f["fit_seconds"],
                 "output": f.get("output")} for n, f in self._fit[1].items()]
        return pd.DataFrame(rows)

    @property
    def ranking_estimator(self) -> str:
        """The estimator the report ranks by (its ``report.estimator`` setting, auto = most faithful)."""
        wanted = self.config.get("report", {}).get("estimator", "auto") if "report" in self.config else "auto"
        return choose_estimator(self.fitted, self._fit[1], wanted)

    def result(self, estimator: str | None = None):
        """The InteractionResult of ``estimator`` (default: the ranking one)."""
        name = estimator or self.ranking_estimator
        if name not in self.fitted:
            raise DataspexError(f"estimator {name!r} was not fitted; fitted: {sorted(self.fitted)}")
        return self.fitted[name]

    def pairs(self, kind: str = "harmful", k: int = 10, estimand: str = "uniform",
              estimator: str | None = None, texts: bool = True) -> pd.DataFrame:
        """Ranked pairs of ``kind`` (harmful, redundant, complementary, interaction), each at its strongest test
        example, with the texts when ``texts`` (a design over units: ``i``, ``j`` are units, described by their
        names, member counts and first member texts)."""
        result = self.result(estimator)
        table = ranked_pairs(result, kind, k, estimand, 0)
        return describe_pairs(table, self.data, units=self.design.units) if texts else table

    def coefficients(self, estimator: str | None = None, basis: str = "fourier") -> pd.DataFrame:
        """Every coefficient of an estimator, long form (``InteractionResult.to_frame``)."""
        return self.result(estimator).to_frame(basis=basis)

    def to_shapiq(self, output="mean", estimator: str | None = None, index: str = "Moebius",
                  order: int | None = None):
        """One output (a test example's index or name, or "mean") as ``shapiq.InteractionValues``."""
        return self.result(estimator).to_shapiq(output=output, index=index, order=order)

    # ---------------------------------------------------------------------------------------- report tables
    def _table(self, *parts) -> pd.DataFrame | None:
        path = self.store.path(*parts)
        return pd.read_parquet(path) if os.path.exists(path) else None

    @property
    def report_pairs(self) -> pd.DataFrame | None:
        """report/pairs.parquet: the pairs the report listed (None before `dataspex report`)."""
        return self._table("report", "pairs.parquet")

    @property
    def triples(self) -> pd.DataFrame | None:
        """report/triples.parquet: degree-3 interactions the report listed (None when there are none)."""
        return self._table("report", "triples.parquet")

    @property
    def validation(self) -> pd.DataFrame | None:
        """validate/validation.parquet (None before `dataspex validate`)."""
        return self._table("validate", "validation.parquet")

    @property
    def faithfulness_curve(self) -> pd.DataFrame | None:
        path = self.store.path("report", "faithfulness_curve.csv")
        return pd.read_csv(path) if os.path.exists(path) else None

    @property
    def summary(self) -> dict | None:
        """report/summary.json (None before `dataspex report`): the headline numbers, with the training examples
        to review as two lists: ``examples_to_review_predicted`` (the top harmful pairs' examples, as the
        ranking model predicts them) and ``examples_to_review_validated`` (those of pairs whose interaction the
        retrains confirmed and whose removal lowered its test example's loss and the mean test loss; None before
        `dataspex validate`, [] when none did)."""
        path = self.store.path("report", "summary.json")
        return read_json(path) if os.path.exists(path) else None

    @property
    def report_html(self) -> str | None:
        path = self.store.path("report", "report.html")
        return path if os.path.exists(path) else None
