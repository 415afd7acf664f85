"""``dataspex plan run_dir=<pilot>``: from a pilot run, the retrains and wall time a target faithfulness needs.

Reads the pilot's faithfulness-vs-budget curve (every estimator refitted on growing prefixes of its fit masks;
:mod:`dataspex.fit.faithfulness`), its noise ceiling (seed replicates of held-out masks) and the seconds per
retrain its result files recorded, fits ``r2(m) = intercept + per_doubling * log2(m)`` per estimator, beside it
the power law to the noise ceiling (:mod:`dataspex.fit.planning`), and prints, for the estimator that needs the
fewest retrains: the retrains, the wall time here, with ``plan.shards`` Slurm jobs and on a GPU
(``plan.gpu_speedup``), and the exact commands of the study: the pilot's design grown in place. Writes
``<run_dir>/plan.json``. Target: ``plan.target`` (pooled held-out R^2), else 80% of the pilot's noise ceiling,
else ``report.trust_r2``. A pilot with fewer fit masks than units (training examples, or ``design.units``) that
does not already reach the target gets no forecast: its study is the pilot grown to as many fit masks as units
(``grow_first`` in plan.json), after which `dataspex plan` runs again (on real text such a pilot's curves asked
0.2 to more than 64 times the retrains needed: :func:`dataspex.fit.planning.extrapolation_record`). From
4n fit masks it also prints the run's main-effects limit (:func:`dataspex.fit.faithfulness.main_effects_limit`):
a target past it gets no forecast for an estimator of main effects only, and a warning for the pair models; for
an estimator that records its screened pairs (the quadratic model) the limit plus their energy
(:func:`dataspex.fit.faithfulness.screen_reach`) is its reach, and a target past that gets it no forecast either.
Under such a bound the second curve is the power law to the bound, and its figure is the one the plan acts on
(``figure``, ``figure_from`` per estimator in plan.json; :func:`dataspex.fit.planning.bound_forecast`): on six
real-text runs it asked a median 1.03x the retrains needed, where the log2 line asked too few in all 21 targets,
and it comes with the range the bound's standard error moves it over (``figure_range``; the need lay inside it in
16 of 21); a target at or above the bound (within two SEs of it, too) gets no figure. Without a bound, from 2n fit
masks on, the figure is the power law to the ceiling's (it asked at most 1.01x the retrains needed; the log2 line
fewer); where that makes a model without a bound the best because the bounded ones stop short, the plan says its
figure assumes it passes their bounds (``best_passes_bounds_of``).
"""

from __future__ import annotations

import logging

import numpy as np

from dataspex.core.errors import DataspexError
from dataspex.core.files import write_json
from dataspex.fit.artifacts import load_fitted
from dataspex.fit.faithfulness import (
    estimator_bound,
    limit_above_ceiling,
    load_curve,
    noise_ceiling,
    run_main_effects_limit,
    update_curve,
)
from dataspex.fit.planning import (
    CEILING_SHARE,
    MAX_DOUBLINGS,
    acted_forecast,
    curve_r2,
    describe,
    describe_range,
    estimator_curve,
    extrapolation_record,
    needed_retrains,
    past_limit,
)
from dataspex.stages.rundir import open_run

log = logging.getLogger("dataspex")
printed = logging.getLogger("dataspex.printed")  # the run's log file only: the plan itself goes to stdout


def choose_target(plan_cfg, ceiling: dict, trust_r2: float) -> tuple[float, str]:
    """(target pooled R^2, where it came from)."""
    if plan_cfg.get("target") is not None:
        target = float(plan_cfg.target)
        if not 0 < target < 1:
            raise DataspexError(f"plan.target={plan_cfg.target} must be a pooled R^2 in (0, 1)")
        return target, "plan.target"
    if ceiling.get("pooled") is not None:
        se = ceiling.get("pooled_se")
        # the ceiling's own sampling error moves the target: +-0.036 to +-0.068 from 16 replicates on real text
        error = "" if se is None else (f" (+- {se:.3f}, its bootstrap standard error over {ceiling['n_masks']} "
                                       "replicated masks: the target is as uncertain)")
        return (CEILING_SHARE * ceiling["pooled"],
                f"{CEILING_SHARE:.0%} of the noise ceiling {ceiling['pooled']:.3f}{error}")
    return float(trust_r2), f"report.trust_r2 (no noise ceiling: {ceiling.get('why')})"


def duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def study_commands(run_dir: str, n_masks: int, shards: int) -> list[str]:
    """The study's commands: the pilot's random design grown in place to ``n_masks`` fit masks (its retrains are
    kept: :func:`dataspex.design.random.grow_random`; its other settings are replayed from ``overrides.json``),
    the new masks' sharded training, then fit and report."""
    return [f"dataspex design run_dir={run_dir} design.m={n_masks}",
            (f"dataspex train --multirun run_dir={run_dir} hydra/launcher=slurm shard.count={shards} "
             f"'shard.index=range(0,{shards})' train.threads=1"),
            f"dataspex fit run_dir={run_dir} && dataspex report run_dir={run_dir}"]


def stage_plan(cfg) -> dict:
    store, data = open_run(cfg)
    fitted, faithfulness = load_fitted(store)
    design = store.load_design()
    if design.meta.get("kind") != "random":
        raise DataspexError(f"dataspex plan needs a random design (its fit masks are prefixes of one budget "
                            f"curve); {store.run_dir} has a {design.meta.get('kind')} design")
    update_curve(cfg.estimators, store, faithfulness, cfg.report.curve_fractions)
    curve = load_curve(store, faithfulness, cfg.report.curve_fractions)
    results = store.load_results(design)
    output = next(iter(faithfulness.values())).get("output", "loss")
    ceiling = noise_ceiling(design, results, output)
    target, source = choose_target(cfg.plan, ceiling, float(cfg.report.trust_r2))
    rate = store.training_rate()
    per_retrain = rate["seconds"] / rate["n_masks"] if rate["n_masks"] else None

    rows = {}
    for name in faithfulness:
        points, line = estimator_curve(curve, name)
        power = estimator_curve(curve, name, ceiling["pooled"])[1] if ceiling.get("pooled") is not None else None
        rows[name] = {"points": points, "curve": line, **needed_retrains(line, target, ceiling.get("pooled")),
                      "power": None if power is None or power["kind"] != "power" else
                      {"curve": power, **needed_retrains(power, target, ceiling["pooled"])}}
    limit = run_main_effects_limit(design, results, output)
    beyond = past_limit(limit, target)
    # The most each estimator can explain at any budget, where that is measured: main effects only -> the
    # limit; main effects and screened pairs -> the limit plus its pairs' energy. No curve is read past it.
    bounds = {name: estimator_bound(design, results, output, f, f.get("config") or cfg.estimators.get(name), limit)
              for name, f in faithfulness.items()}
    caps = {name: b for name, b in bounds.items() if b is not None and b["r2"] is not None}
    reach = {name: b for name, b in caps.items() if b["kind"] == "screen"}
    n_fit = int(len(design.rows("fit")))
    _choose_figures(rows, caps, curve, target, ceiling.get("pooled"), n_fit, design.n_units)
    reachable = {n: r for n, r in rows.items() if r["figure"] is not None}
    best = min(reachable, key=lambda n: reachable[n]["figure"]) if reachable else None
    n_heldout = int(len(design.rows("heldout")))
    plan = {"run_dir": store.run_dir, "target_r2_pooled": target, "target_from": source, "ceiling": ceiling,
            "estimators": rows, "best": best, "pilot_fit_masks": n_fit, "seconds_per_retrain": per_retrain,
            "threads": rate["threads"], "shards": int(cfg.plan.shards), "gpu_speedup": float(cfg.plan.gpu_speedup),
            "main_effects_limit": limit, "screen_reach": reach}

    lines = [f"plan: pilot {store.run_dir}: {n_fit} fit + {n_heldout} held-out retrains, target pooled held-out "
             f"R^2 {target:.3f} ({source})"]
    for name, r in rows.items():
        need = (f"{r['n_masks']} fit retrains ({r['doublings']:.1f} doublings beyond the pilot)"
                if r["n_masks"] is not None else f"not reachable: {r['why']}")
        if r["power"] is not None:
            p = r["power"]
            span = (describe_range(r["figure_range"], caps[name]["r2_se"])
                    if r["figure_from"] == "power law to its bound" else "")  # a bound's power law: name in caps
            need += f"; {describe(p['curve'])}: " + (
                f"{p['n_masks']}" + (f"; {span}" if span else "") if p["n_masks"] is not None else
                f"more than {2 ** MAX_DOUBLINGS}x the pilot ({p['doublings']:.1f} doublings)" if p["doublings"] else
                f"not reachable ({p['why']})")
        pts = ", ".join(f"{m}: {v:.3f}" for m, v in r["points"])
        lines.append(f"plan:   {name:<10} R^2 by retrains {pts}; {describe(r['curve'])}: {need}")
    if limit["r2"] is not None:
        lines.append(_limit_line(limit, target, ceiling, beyond))
    for name, r in reach.items():
        lines.append(f"plan: {name}'s {r['n_pairs']} screened pairs hold {r['pairs']:.3f} +- {r['pairs_se']:.3f} "
                     f"of a retrain's variance (estimated from pairs of retrains, no model): with main effects it "
                     f"explains at most R^2 {r['r2']:.3f} +- {r['r2_se']:.3f} at any budget with this screen"
                     + ("; the target is above it" if past_limit(r, target) else ""))
    n_units = design.n_units
    if n_fit < n_units and not (best is not None and rows[best]["figure"] <= n_fit):
        # Below m = n_units the curves see only the slow start of R^2 (extrapolation_record): grow to n_units first.
        goal = n_units
        plan["grow_first"] = goal
        lines.append(f"plan: {extrapolation_record(n_fit, n_units, design.units)}. The next step: grow the "
                     f"pilot to {goal} fit retrains ({goal - n_fit} more, added to its design; its {n_heldout} "
                     "held-out masks and every retrain it has are kept), then run `dataspex plan` again on its own "
                     "curve")
    elif best is None:
        # What the curves say at 16x the pilot, for a team that plans for less than the target.
        goal = n_fit
        ahead = 16 * n_fit
        at = {n: float(curve_r2(r["power"]["curve"], ahead)) if r["figure_from"] == "power law to its bound" else
              min(float(curve_r2(r["curve"], ahead)), caps[n]["r2"] if n in caps else np.inf)
              for n, r in rows.items() if r["curve"] is not None}
        plan["r2_at_16x"] = {"n_masks": ahead, **at}
        lines.append(f"plan: no estimator reaches the target by more retrains of this design (within "
                     f"{2 ** MAX_DOUBLINGS}x the pilot" + (", or at any budget for those with a measured bound"
                                                          if caps else "") + "): "
                     "a less noisy output (fit.output=margin, train.seed_policy=shared), seed replicates or a larger "
                     "unit (groups of examples) are what is left"
                     + (f"; at 16x the pilot ({ahead} fit retrains) the curves say "
                        + ", ".join(f"{n} {v:.3f}" + (" (its limit)" if n in caps and v == caps[n]["r2"] else "")
                                    for n, v in sorted(at.items(), key=lambda kv: -kv[1]))
                        + " (plan.target=<R^2> plans for one of those)" if at else ""))
    else:
        goal = rows[best]["figure"]
        span = describe_range(rows[best]["figure_range"], caps[best]["r2_se"]) if best in caps else ""
        lines.append(f"plan: best: {best} at {goal} fit retrains"
                     + (f" (its {rows[best]['figure_from']}" + (f"; {span}" if span else "") + ")"
                        if rows[best]["figure_from"] != "log2 line" else "")
                     + (f"; the pilot's {n_fit} already reach it" if goal <= n_fit else
                        f": {goal - n_fit} more than the pilot's {n_fit}, added to its design (its {n_heldout} "
                        "held-out masks and every retrain it has are kept)"))
        stopped = _stopped_at_bounds(best, rows, caps)
        if stopped and goal > n_fit:
            plan["best_passes_bounds_of"] = sorted(stopped)
            lines.append(_unbounded_best_line(best, stopped))
    new = plan["new_retrains"] = max(goal - n_fit, 0)
    plan["commands"] = study_commands(store.run_dir, goal, int(cfg.plan.shards)) if new else []
    if new:
        lines += _time_lines(plan, new, per_retrain, rate, cfg.plan)
        lines += ["plan: the study:"] + [f"    {c}" for c in plan["commands"]]
    if new and "grow_first" not in plan:
        power, source = rows[best]["power"], rows[best]["figure_from"]
        record = extrapolation_record(n_fit, n_units, design.units, bound=source == "power law to its bound")
        lines.append(f"plan: both curves are extrapolations: {record}"
                     + ("" if source == "power law to its bound" else f" (here {power['n_masks']})"
                        if power is not None and power["n_masks"] is not None
                        else f" (here more than {2 ** MAX_DOUBLINGS}x the pilot)" if power is not None else "")
                     + "; growing keeps every retrain, so grow to " + ("the first figure" if source == "log2 line"
                                                                       else "it")
                     + " and run `dataspex plan` again on the grown run's own curve")
    write_json(store.path("plan.json"), plan)
    for line in lines:
        printed.info(line)
        print(line, flush=True)
    return plan


def _choose_figures(rows: dict, caps: dict, curve, target: float, ceiling: float | None, n_fit: int,
                    n_units: int) -> None:
    """The figure the plan acts on per estimator (``figure``, ``figure_from``):
    :func:`dataspex.fit.planning.acted_forecast` under its bound (``caps``: :func:`estimator_bound` by name, where
    measured). A refused target gets no figure and says why; under a bound, the power law to it becomes the row's
    second curve (``power``)."""
    for name, row in rows.items():
        cap = caps.get(name)
        acted = acted_forecast(curve, name, target, ceiling, cap, n_fit, n_units)
        if acted["refused"] == "past":
            row.update(n_masks=None, power=None, why=(
                f"the target is above the main-effects limit {cap['r2']:.3f} (no budget reaches it with main "
                "effects alone)" if cap["kind"] == "main effects" else
                f"the target is above what main effects and its {cap['n_pairs']} screened pairs can explain "
                f"(R^2 {cap['r2']:.3f}: no budget reaches it with this screen)"))
        elif acted["refused"] == "within":
            row.update(n_masks=None, power=None, why=(
                f"the target is at or above its bound R^2 {cap['r2']:.3f}, within two of its standard errors "
                f"({cap['r2_se']:.3f}): no curve reaches it, though the bound may lie higher (more held-out masks, "
                "design.heldout, narrow it)"))
        elif acted["source"] == "power law to its bound":
            row["power"] = {k: acted[k] for k in ("curve", "n_masks", "why", "doublings")}  # its range: figure_range
        row["figure"], row["figure_from"] = acted["n_masks"], acted["source"] or "log2 line"
        row["figure_range"] = acted["range"] if acted["n_masks"] is not None else None
        row["refused"] = acted["refused"]  # None, or "past" / "within" its bound


def _stopped_at_bounds(best: str, rows: dict, caps: dict) -> dict:
    """The bounds (``caps``, by name) of the estimators refused a figure at them (``refused``, as
    :func:`_choose_figures` sets it), where ``best`` has none of its own: then it is best only because they stop
    short, and its figure assumes it passes them. {} otherwise."""
    if best in caps:
        return {}
    return {name: caps[name] for name, row in rows.items() if name in caps and row.get("refused")}


def _unbounded_best_line(best: str, stopped: dict) -> str:
    """The plan's line on a best estimator without a bound, beside the ``stopped`` ones
    (:func:`_stopped_at_bounds`), with what the real-text runs measured of such a model."""
    top = max(stopped, key=lambda name: stopped[name]["r2"])
    return (f"plan: {best} has no measured bound, so nothing checks its figure against one; "
            f"{', '.join(sorted(stopped))} stop short of the target at their bounds (the highest, {top}'s, R^2 "
            f"{stopped[top]['r2']:.3f} +- {stopped[top]['r2_se']:.3f}), and its figure assumes {best} passes that: "
            "on five real-text runs of benchmarks/README ProxySPEX stayed under the quadratic model at every budget "
            "measured, to 16n on four (the gap narrowing to 0.02-0.07 there)")


def _limit_line(limit: dict, target: float, ceiling: dict, beyond: bool) -> str:
    """The plan's line on the main-effects limit (beside the run's :func:`noise_ceiling` dict), and what it means
    for the target."""
    share = "" if not ceiling.get("pooled") else f", {limit['r2'] / ceiling['pooled']:.0%} of the noise ceiling"
    line = (f"plan: main effects alone reach at most R^2 {limit['r2']:.3f} +- {limit['r2_se']:.3f} on this run at "
            f"any budget{share} (least squares on {limit['K']} disjoint blocks of {limit['block_masks']} fit masks, "
            f"its variance removed){limit_above_ceiling(limit, ceiling)}")
    if target <= limit["r2"]:
        return line + "; the target is within it"
    if not beyond:
        return (line + f"; the target is {target - limit['r2']:.3f} above it, within two of its standard errors: "
                "main effects alone may not reach it (more held-out masks, design.heldout, narrow the error)")
    return (line + f"; the target is above it by {target - limit['r2']:.3f}, which only interaction terms can add: "
            "on the unplanted real-text runs the quadratic model, its variance removed, reached 1 and 4 points of "
            "the ceiling past this limit at 8n (the planted ones 9-10; benchmarks/README, 'Why the fits stop "
            "short'), so a pair model's forecast past it assumes interactions this run has not yet shown")


def _time_lines(plan: dict, new: int, per_retrain: float | None, rate: dict, plan_cfg) -> list[str]:
    """The wall time of ``new`` more retrains here, on ``plan.shards`` Slurm jobs and on a GPU (also into ``plan``)."""
    if per_retrain is None:
        return ["plan: seconds per retrain: not recorded in this run's results (written before dataspex recorded "
                "it): time estimates left out"]
    total = new * per_retrain
    shards, gpu = int(plan_cfg.shards), float(plan_cfg.gpu_speedup)
    plan.update(wall_seconds_here=total, wall_seconds_slurm=total / shards, wall_seconds_gpu=total / gpu)
    return [f"plan: time: {per_retrain:.2f} s per retrain measured here ({rate['n_masks']} retrains, "
            f"{'/'.join(map(str, rate['threads']))} threads) -> {duration(total)} on this machine; "
            f"{duration(total / shards)} as {shards} Slurm jobs (plan.shards) with as many cores each; "
            f"~{duration(total / gpu)} on one GPU (plan.gpu_speedup={plan_cfg.gpu_speedup:g}, an estimate, not a "
            "measurement on this data)"]
