"""``dataspex status``: where a sharded ``train`` sweep stands (done/total per shard and role, damaged files).

    dataspex design run_dir=R ...                                        # once, on the login node
    dataspex train --multirun run_dir=R hydra/launcher=slurm \\
        shard.count=S 'shard.index=range(0,S)' train.threads=1           # S jobs (one Slurm job array)
    dataspex status run_dir=R                                            # done/total per shard, damaged files
    dataspex collect run_dir=R                                           # R/results.parquet: one row per mask

Shard ``i`` of ``S`` trains the design rows ``i, i+S, i+2S, ...`` (:func:`dataspex.stages.rundir.shard_rows`).
Any job can be killed at any time and the same sweep resubmitted: finished chunks are on disk, a resumed
shard trains only what is missing, and masks trained twice are collapsed to one result on reading.
"""

from __future__ import annotations

import glob
import logging
import os

import numpy as np
from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf

from dataspex.core.errors import DataspexError
from dataspex.store import RunStore, StoreScan, health

log = logging.getLogger("dataspex")


def shard_of(rows: np.ndarray, count: int) -> np.ndarray:
    """The shard (of ``count``) that trains each design row: the inverse of ``shard_rows``."""
    return np.asarray(rows) % count


def recorded_shard_count(run_dir: str) -> int | None:
    """``shard.count`` of the newest ``train`` sweep whose Hydra record lies under ``<run_dir>/sweeps``."""
    newest = None
    for path in glob.glob(os.path.join(run_dir, "sweeps", "*", "multirun.yaml")):
        try:
            conf = OmegaConf.load(path)
            if conf.get("stage") != "train":
                continue
            count = int(conf.shard.count)
        except Exception:  # a sweep record we cannot read tells us nothing
            continue
        mtime = os.path.getmtime(path)
        if newest is None or mtime > newest[0]:
            newest = (mtime, count)
    return None if newest is None else newest[1]


def _shard_count(cfg, store: RunStore) -> int:
    """``shard.count`` from the command line if given there, else that of the last sweep, else 1."""
    given = False
    try:
        
        given = any(o.lstrip("+").startswith("shard.count=") for o in HydraConfig.get().overrides.task)
    except ValueError:  # not running under Hydra (called from Python)
        given = int(cfg.shard.count) != 1
    if given:
        return int(cfg.shard.count)
    return recorded_shard_count(store.run_dir) or 1


def run_status(run_dir: str, shard_count: int = 1) -> dict:
    """Done/total per shard and per role, the files that cannot be used, and the masks whose training diverged
    (``health``: :func:`dataspex.store.health.flag_results` of the usable results); changes nothing on disk."""
    store = RunStore(run_dir)
    if not os.path.isdir(store.run_dir):
        raise DataspexError(f"run_dir={run_dir!r} does not exist")
    if shard_count < 1:
        raise DataspexError(f"shard.count={shard_count} must be at least 1")
    design = store.load_design()
    scan: StoreScan = store.scan(design)
    done = np.isin(design.mask_ids, np.fromiter(scan.done, dtype=np.int64, count=len(scan.done)))
    shard = shard_of(np.arange(len(design)), shard_count)
    shards = [{"shard": i, "done": int(done[shard == i].sum()), "total": int((shard == i).sum())}
              for i in range(shard_count)]
    roles = {str(r): {"done": int(done[design.roles == r].sum()), "total": int((design.roles == r).sum())}
             for r in dict.fromkeys(design.roles.tolist())}
    return {"run_dir": store.run_dir, "fingerprint_id": store.fingerprint_id(), "design": design.meta,
            "n_train": design.n_train, "n_units": design.n_units, "shard_count": shard_count, "shards": shards,
            "roles": roles,
            "done": int(done.sum()), "total": len(design), "missing_ids": design.mask_ids[~done].tolist(),
            "files": len(scan.good), "results": scan.n_results, "duplicates": scan.duplicates,
            "rejected": {os.path.basename(p): why for p, why in scan.rejected.items()},
            "temp_files": [os.path.basename(p) for p in scan.temp_files],
            "health": health.flag_results(store.load_results(design, quarantine=False))}


def _over(status: dict) -> str:
    """What the masks are over: the training examples, or units of them (design.units)."""
    units = status["design"].get("units")
    if not units:
        return f"{status['n_train']} training examples"
    return f"{units['n_units']} units ({units['spec']}) of {status['n_train']} training examples"


def format_status(status: dict) -> str:
    """The human-readable ``dataspex status`` report."""
    kind = status["design"].get("kind", "?")
    lines = [f"run      {status['run_dir']}",
             f"design   {kind}: {status['total']} masks over {_over(status)}; "
             f"fingerprint {status['fingerprint_id']}",
             "", f"{'shard':>9} {'done':>7} {'total':>7}"]
    count = status["shard_count"]
    for row in status["shards"]:
        left = row["total"] - row["done"]
        note = "finished" if left == 0 else f"{left} to train"
        lines.append(f"{row['shard']:>5}/{count:<3} {row['done']:>7} {row['total']:>7}   {note}")
    pct = 100.0 * status["done"] / status["total"] if status["total"] else 100.0
    lines.append(f"{'all':>9} {status['done']:>7} {status['total']:>7}   {pct:.0f}% done")
    lines.append("")
    lines.append("roles    " + ", ".join(f"{r} {v['done']}/{v['total']}" for r, v in status["roles"].items()))
    lines.append(f"files    {status['files']} result files, {status['results']} results, "
                 f"{status['duplicates']} duplicate results (collapsed on reading)")
    missing = status["missing_ids"]
    if missing:
        shown = ", ".join(map(str, missing[:20])) + (", ..." if len(missing) > 20 else "")
        lines.append(f"missing  {len(missing)} masks: {shown}")
    if status["rejected"]:
        lines.append(f"REJECTED {len(status['rejected'])} result files (never used; quarantined to "
                     "results/quarantine/ when results are next loaded, their masks retrained by `train`):")
        lines += [f"         {name}: {why}" for name, why in sorted(status["rejected"].items())]
    flags = status.get("health")
    if flags and flags["n_flagged"]:
        lines.append(f"DIVERGED {health.summary(flags)}: training diverged or did not converge; their "
                     "results are likely useless (lower train.lr, retrain in a new run_dir)")
    if status["temp_files"]:
        lines.append(f"partial  {len(status['temp_files'])} unfinished writes (.tmp-*) from killed or running "
                     "workers: ignored; safe to delete once no job runs")
    if count == 1 and not status["shards"][0]["done"] == status["total"]:
        lines.append("\n(per-shard counts: add shard.count=<S> of your sweep)")
    return "\n".join(lines)


def stage_status(cfg) -> dict:
    """``dataspex status``: done/total masks per shard and per role, duplicates, damaged files, diverged masks.

    Any rejected result file makes it fail (exit 2, after printing the status), so scripts notice."""
    store = RunStore(cfg.run_dir)
    status = run_status(store.run_dir, _shard_count(cfg, store))
    print(format_status(status), flush=True)
    if status["rejected"]:
        n = len(status["rejected"])
        raise DataspexError(f"{n} result file{'s are' if n > 1 else ' is'} rejected (damaged, or not this run's: "
                            "see REJECTED above): `dataspex train` retrains their masks; loading results (fit, "
                            "collect) quarantines them")
    return status
