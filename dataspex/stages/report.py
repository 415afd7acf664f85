"""``dataspex report``: bring the faithfulness-vs-budget curve up to date (fit layer), then write the report."""

from __future__ import annotations

import logging

from dataspex.fit.artifacts import load_fitted
from dataspex.fit.faithfulness import update_curve
from dataspex.report import write_report
from dataspex.stages.rundir import open_run

log = logging.getLogger("dataspex")


def report_run(cfg, store, data) -> str:
    """Refit the budget curve where this fit lacks points, then write every report file; returns report.md."""
    _, faithfulness = load_fitted(store)
    update_curve(cfg.get("estimators"), store, faithfulness, cfg.report.curve_fractions)
    path = write_report(cfg, store, data)
    log.info("report: %s", path)
    return path


def stage_report(cfg) -> str:
    store, data = open_run(cfg)
    return report_run(cfg, store, data)
