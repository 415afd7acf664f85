"""``dataspex drill run_dir=<run>``: the members of a run's top pairs, retrained at random with the rest kept.

It takes the ranking model's top pairs (``drill.top_k`` of each of ``drill.kinds``) and studies their members in a
drill-down run nested in the run, ``<run_dir>/drill``: random masks over those members only (``drill.m`` fit and
``drill.heldout`` held-out masks, each member kept with probability ``drill.p``), every other training example
always kept, so each retrain is the full training set minus some members. The drill-down is a run directory like
any other (same model, data and recipe: its fingerprint differs only in its units), resumable with ``dataspex
drill`` or any stage on ``run_dir=<run_dir>/drill``. What it answers depends on what the run's masks are over:

* units (``design.units=column:<name>`` or ``cluster:<K>``): the study says which two sources or clusters act
  together, the drill-down which of their examples do. It is fitted and reported here, and the run's report
  links each drilled unit pair to the example pairs its report found inside it.
* examples: whether each top pair holds at the full training set, where a team acts (the run's pair models
  describe half-size training sets). Each drilled pair is tested on its own test example over the drill-down's
  retrains that keep the other drilled pairs of that test example (:mod:`dataspex.validate.fullset`,
  ``drill/fullset.json``); nothing is fitted or ranked there, since ranking again among the members would pick
  the noisiest test examples (on fresh WordNet such a ranking listed no finding). The run's report gains the
  verdicts beside its findings, and ``validate.select=drilled`` retrains the pairs that hold.
"""

from __future__ import annotations

import logging

import numpy as np
from omegaconf import OmegaConf, open_dict

from dataspex.core.errors import DataspexError
from dataspex.design import make_design
from dataspex.design.units import drill_units, example_units
from dataspex.fit.artifacts import choose_estimator, fit_stamp, load_fitted
from dataspex.fit.ranking import select_pairs
from dataspex.report.drill import DRILL_DIR
from dataspex.stages.design import add_replicates
from dataspex.stages.fit import stage_fit
from dataspex.stages.report import report_run, stage_report
from dataspex.stages.rundir import fingerprint, open_run, override_key, record_creation, stored_overrides
from dataspex.stages.train import stage_train
from dataspex.store import RunStore
from dataspex.validate.fullset import FULLSET, fullset_table, random_retrains, save_fullset

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
    """(the run's top pairs to drill into: ``select_pairs`` rows with kind, rank, i, j, test, score, estimand,
    pattern; the ranking estimator's name; the fit) from the run's fit."""
    fitted, faithfulness = load_fitted(store)
    ranking = choose_estimator(fitted, faithfulness, cfg.report.estimator)
    pairs = select_pairs(fitted[ranking], [str(k) for k in cfg.drill.kinds], int(cfg.drill.top_k),
                         cfg.report.estimand, n_test)
    if pairs.empty:
        what = "unit pairs" if store.load_design().by_unit else "pairs"
        why = (f"the most faithful model, {ranking}, has no pair terms" if fitted[ranking].degree < 2 else
               f"{ranking} lists no {' or '.join(cfg.drill.kinds)} {what}")
        raise DataspexError(f"nothing to drill into: {why}. Name a pair model (report.estimator=quadratic or "
                            f"proxyspex) to drill into its top {what} anyway: they are then candidates, not "
                            "findings")
    return pairs, ranking, (fitted, faithfulness)


def stage_drill(cfg) -> str:
    store, data = open_run(cfg)
    design = store.load_design()
    if design.by_unit and design.units.spec == "drill":
        raise DataspexError(f"{store.run_dir} is itself a drill-down: drill from the run it is inside")
    table, ranking, fit = drill_pairs(cfg, store, data.n_test)
    pairs = [(int(i), int(j)) for i, j in zip(table["i"], table["j"])]
    units = design.units if design.by_unit else example_units(data.n_train)
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
            raise DataspexError(f"{child_dir} already holds a drill-down into other pairs "
                                f"({existing.meta.get('drill', {}).get('unit_names')}): remove it (or move it "
                                "aside) to drill into the current top pairs")
    _record(child, store)
    child_store.check_fingerprint(fingerprint(child, data), create=True)
    if existing is None:
        child_store.save_design(made)
        add_replicates(child, child_store)
    log.info("drill: %d %s pairs by %s (%s) -> %d members, %d masks over them, the other %d examples always "
             "kept -> %s", len(pairs), "unit" if design.by_unit else "example", ranking,
             "; ".join(" + ".join(n) for n in made.meta["drill"]["unit_names"]), len(members),
             len(child_store.load_design()), data.n_train - len(members), child_dir)
    stage_train(child)
    if design.by_unit:  # which example pairs lie inside the unit pairs: the drill-down's own fit and report
        stage_fit(child)
        stage_report(child)
    else:  # which of the run's pairs hold at the full set: each drilled pair's own test
        at_full_set(cfg, store, child_store, table, ranking, fit, members)
    report_run(cfg, store, data)  # the run's report links the drill-down's answer
    return child_dir


def at_full_set(cfg, parent, child_store, table, ranking: str, fit, members) -> None:
    """The drilled example pairs' full-set interactions (:func:`dataspex.validate.fullset.fullset_table`) from the
    random retrains of the drill-down (fit, held-out and replicate masks) that keep each pair's neighbours, written
    to its fullset.json."""
    fitted, faithfulness = fit
    output = faithfulness[ranking].get("output", "loss")
    design = child_store.load_design()
    masks, Y = random_retrains(design, child_store.load_results(design), output)
    predicted = [fitted[ranking].pair_scores("full", output=int(t))[int(i), int(j)]
                 for i, j, t in zip(table["i"], table["j"], table["test"])]
    q_max = float(cfg.report.q_max)
    found = fullset_table(table, predicted, masks, Y, members, q_max)
    save_fullset(child_store.run_dir, found, {"ranking": ranking, "output": output, "n_masks": len(masks),
                                              "fit_stamp": fit_stamp(parent),
                                              "members": [int(x) for x in members], "q_max": q_max,
                                              "p": float(cfg.drill.p)})
    for r in found.itertuples():
        if r.note:
            log.warning("drill: %-9s (%d, %d) on test %d: not measured: %s", r.kind, r.i, r.j, r.test, r.note)
            continue
        log.info("drill: %-9s (%d, %d) on test %d: predicted at the full set %+.3f, drill-down %+.3f +- %.3f "
                 "(q = %.3g; %d retrains keeping %s) -> %s", r.kind, r.i, r.j, r.test, r.predicted, r.estimate, r.se,
                 r.q_value, r.masks, f"its neighbours {r.neighbours}" if r.neighbours else "any members",
                 "holds" if r.holds else "does not hold")
    log.info("drill: %d of %d drilled pairs hold at the full training set (q <= report.q_max=%g; %d retrains) -> "
             "%s", int(found["holds"].sum()), len(found), q_max, len(masks),
             child_store.path(FULLSET))
