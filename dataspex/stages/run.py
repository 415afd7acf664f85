"""``dataspex run``: the whole job, design + train + fit + report, on one run directory."""

from __future__ import annotations

from dataspex.stages.design import stage_design
from dataspex.stages.fit import stage_fit
from dataspex.stages.report import stage_report
from dataspex.stages.train import stage_train


def stage_run(cfg) -> str:
    stage_design(cfg)
    stage_train(cfg)
    stage_fit(cfg)
    return stage_report(cfg)
