"""The CLI stages, one module each, as functions of the composed config: a thin composition of the layers below.

    design -> train -> fit -> report      (``run`` does all four)
    trak, validate, curate, plan, drill, status, collect   (on an existing run directory)

Each stage reads what the previous one wrote into the run directory, so any stage can be re-run alone.
:mod:`dataspex.stages.rundir` holds what every stage shares (the fingerprint, opening a run, shards).
"""

from __future__ import annotations

import importlib

__all__ = ["STAGES", "STAGE_HELP", "stage_function"]

# Every CLI stage: name -> "module:function". Imported by name on use, so that `dataspex --help` and a stage's
# start do not pay for every other stage's heavy imports (torch, transformers, traker, matplotlib).
STAGES = {
    "run": "dataspex.stages.run:stage_run",
    "design": "dataspex.stages.design:stage_design",
    "train": "dataspex.stages.train:stage_train",
    "fit": "dataspex.stages.fit:stage_fit",
    "report": "dataspex.stages.report:stage_report",
    "status": "dataspex.stages.status:stage_status",
    "collect": "dataspex.stages.collect:stage_collect",
    "trak": "dataspex.stages.trak:stage_trak",
    "validate": "dataspex.stages.validate:stage_validate",
    "curate": "dataspex.stages.curate:stage_curate",
    "plan": "dataspex.stages.plan:stage_plan",
    "drill": "dataspex.stages.drill:stage_drill",
}
STAGE_HELP = {
    "run": "design + train + fit + report (the whole job)",
    "design": "write the ablation masks into the run directory",
    "train": "retrain a LoRA adapter per mask and store every test loss (resumable, shardable)",
    "fit": "fit interaction estimators to the stored results",
    "report": "write the report: ranked pairs, tables, heatmaps",
    "status": "show done/total masks per shard",
    "collect": "consolidate all results into one table (Parquet) for pandas / datasets",
    "trak": "TRAK influence scores on the LoRA parameters (first-order baseline and screen)",
    "validate": "retrain the report's findings directly (full, minus i, minus j, minus both) to confirm them",
    "curate": "write the curated training set; retrain it, random removals and baselines; score on the eval split",
    "plan": "from a pilot run: the retrains and wall time a target faithfulness needs, and the study's commands",
    "drill": "retrain the members of the top pairs, the rest kept: over units the example pairs inside, over "
             "examples which pairs hold at the full set",
}


def stage_function(name: str):
    """The function behind stage ``name``."""
    module, func = STAGES[name].split(":")
    return getattr(importlib.import_module(module), func)
