"""``dataspex drill run_dir=<a run over units>``: from unit pairs down to example pairs.

A study over units (``design.units=column:<name>`` or ``cluster:<K>``) says which two sources or clusters act
together; ``drill`` says which of their examples do. It takes the ranking model's top unit pairs (``drill.top_k``
of each of ``drill.kinds``), and studies their members in a drill-down run nested in the run, ``<run_dir>/drill``:
random masks over those members only (``drill.m`` fit and ``drill.heldout`` held-out masks, each member kept
with probability ``drill.p``), every other training example always kept, so each retrain is the full training
set minus some members. The drill-down is a run directory like any other (same model, data and recipe: its
fingerprint differs only in its units), trained, fitted and reported here, and resumable with
``dataspex drill`` or any stage on ``run_dir=<run_dir>/drill``. The run's own report then links each drilled unit
pair to the example pairs found inside it.
"""

from __future__ import annotations

import logging

import numpy as np
from omegaconf import OmegaConf, open_dict

from dataspex.core.errors import DataspexError
from dataspex.design import make_design
from dataspex.design.units import drill_units
from dataspex.fit.artifacts import choose_estimator, load_fitted
from dataspex.fit.ranking import select_pairs
from dataspex.report.drill import DRILL_DIR
from dataspex.stages.design import add_replicates
from dataspex.stages.fit import stage_fit
from dataspex.stages.report import report_run, stage_report
from dataspex.stages.rundir import fingerprint, open_run, override_key, record_creation, stored_overrides
from dataspex.stages.train import stage_train
from dataspex.store import RunStore

log = logging.getLogger("dataspex")

# The drill-down's design block: a random design over the members, its knobs from the `drill:` block.
_DESIGN_KEYS = ("m", "heldout", "replicates", "p", "seed")


def drill_config(cfg, run_dir: str):
    """The config of the drill-down run in ``run_dir``: the run's own, with a random design over the members."""
    child = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    with open_dict(child):
        child.run_dir = run_dir
        child.design = {"kind": "random", "units": "drill", **{k: cfg.drill[k] for k in _DESIGN_KEYS}}
        wanted = str(cfg.report.estimator)
        if wanted != "auto" and wanted not in (child.get("estimators") or {}):
            # the run's ranking model came from an estimator this invocation does not configure: the
            # drill-down fits the configured ones and ranks by the most faithful
            log.info("drill: report.estimator=%s is not among the configured estimators %s: the drill-down "
                     "ranks by auto (add +estimator@estimators.%s=%s to fit it there)", wanted,
                     sorted(child.get("estimators") or {}), wanted, wanted)
            child.report.estimator = "auto"
    return child


def _record(child, parent_store) -> None:
    """The drill-down's overrides.json (the run's own creation overrides, its design replaced) and config.yaml,
    so that every stage on ``run_dir=<run_dir>/drill`` replays the drill-down's settings."""
    keep = [o for o in stored_overrides(parent_store.run_dir)
            if override_key(o).split(".")[0] not in ("run_dir", "design")]
    design = ["design=random", "design.units=drill"] + [f"design.{k}={child.design[k]}" for k in _DESIGN_KEYS]
    record_creation(child.run_dir, [f"run_dir={child.run_dir}", *keep, *design], child)


def drill_pairs(cfg, store, n_test: int):
    """(the unit pairs to drill into [(a, b)], the ranking estimator's name) from the run's fit."""
    fitted, faithfulness = load_fitted(store)
    ranking = choose_estimator(fitted, faithfulness, cfg.report.estimator)
    pairs = select_pairs(fitted[ranking], [str(k) for k in cfg.drill.kinds], int(cfg.drill.top_k),
                         cfg.report.estimand, n_test)
    if pairs.empty:
        why = (f"the most faithful model, {ranking}, has no pair terms" if fitted[ranking].degree < 2 else
               f"{ranking} lists no {' or '.join(cfg.drill.kinds)} unit pairs")
        raise DataspexError(f"nothing to drill into: {why}. Name a pair model (report.estimator=quadratic or "
                            "proxyspex) to drill into its top unit pairs anyway: they are then candidates, not "
                            "findings")
    return [(int(i), int(j)) for i, j in zip(pairs["i"], pairs["j"])], ranking


def stage_drill(cfg) -> str:
    store, data = open_run(cfg)
    design = store.load_design()
    if not design.by_unit:
        raise DataspexError(f"{store.run_dir}'s masks are over the training examples (design.units=example): "
                            "`dataspex drill` goes from unit pairs down to example pairs, in a run made with "
                            "design.units=column:<name> or cluster:<K>")
    if design.units.spec == "drill":
        raise DataspexError(f"{store.run_dir} is itself a drill-down: drill from the run it is inside")
    pairs, ranking = drill_pairs(cfg, store, data.n_test)
    units = design.units
    members = units.members_of(sorted({u for pair in pairs for u in pair}))
    child_dir = store.path(DRILL_DIR)
    child = drill_config(cfg, child_dir)
    made = make_design(child.design, len(members)).over_units(drill_units(data.n_train, members))
    made.meta["drill"] = {"pairs": [list(p) for p in pairs], "unit_names": [[units.names[u] for u in p]
                                                                            for p in pairs], "ranking": ranking}
    child_store = RunStore(child_dir)
    existing = child_store.load_design() if child_store.has_design() else None
    if existing is not None:
        existing = existing.without_extensions()
        if existing.meta != made.meta or not np.array_equal(existing.masks, made.masks):
            raise DataspexError(f"{child_dir} already holds a drill-down into other unit pairs "
                                f"({existing.meta.get('drill', {}).get('unit_names')}): remove it (or move it "
                                "aside) to drill into the current top pairs")
    _record(child, store)
    child_store.check_fingerprint(fingerprint(child, data), create=True)
    if existing is None:
        child_store.save_design(made)
        add_replicates(child, child_store)
    log.info("drill: %d unit pairs by %s (%s) -> %d members, %d masks over them, the other %d examples always "
             "kept -> %s", len(pairs), ranking, "; ".join(" + ".join(n) for n in made.meta["drill"]["unit_names"]),
             len(members), len(child_store.load_design()), data.n_train - len(members), child_dir)
    stage_train(child)
    stage_fit(child)
    stage_report(child)
    report_run(cfg, store, data)  # the run's report links the drilled unit pairs to the example pairs inside
    return child_dir
