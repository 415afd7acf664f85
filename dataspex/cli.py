"""The ``dataspex`` command: ``dataspex <stage> [hydra overrides...]``.

Stages (``dataspex.stages.STAGES``, one module each): run (= design, train, fit, report), design, train, fit,
report, status, collect, trak, validate. Everything after the stage is passed to Hydra, so any
config key can be overridden (``train.lr=1e-3``), groups swapped (``model=hub``), and ``--multirun`` sweeps
launched. A later stage pointed at an existing ``run_dir=`` starts from the overrides that created the run,
with the new ones applied on top.
"""

from __future__ import annotations

import logging
import os
import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from dataspex.core.errors import DataspexError
from dataspex.core.settings import check_settings
from dataspex.stages import STAGE_HELP, STAGES, stage_function
from dataspex.stages.rundir import override_key, record_creation, stored_overrides

USAGE = """usage: dataspex <stage> [overrides...]

stages:
""" + "".join(f"  {name:<9}{text}\n" for name, text in STAGE_HELP.items()) + """
examples:
  dataspex run                                   # the default job on the built-in demo data
  dataspex run train.epochs=8 design.m=256       # any config key, on the command line
  dataspex fit run_dir=outputs/<run>             # re-fit an existing run
  dataspex train --multirun run_dir=outputs/<run> shard.count=4 'shard.index=range(0,4)' hydra/launcher=joblib
  dataspex run --cfg job                         # print the composed config
"""
# Overrides that belong to one invocation and must not be replayed on later stages.
_NOT_REPLAYED = ("stage", "run_dir", "hydra", "shard", "progress", "fit", "report", "estimator", "train.engine",
                 "train.chunk_size", "train.threads")


def config_dir() -> str:
    """The conf/ folder beside the package (editable installs and source checkouts)."""
    here = os.path.dirname(os.path.abspath(__file__))
    for candidate in (os.path.join(here, "conf"), os.path.join(os.path.dirname(here), "conf")):
        if os.path.isfile(os.path.join(candidate, "config.yaml")):
            return candidate
    raise DataspexError(f"cannot find dataspex's conf/ folder next to {here}: install with `pip install -e .`")


def _replayable(override: str) -> bool:
    key = override_key(override)
    return not any(key == k or key.startswith(k + ".") or key.startswith(k + "/") for k in _NOT_REPLAYED)


def _is_override(arg: str) -> bool:
    return not arg.startswith("-") and ("=" in arg or arg.startswith("~"))


def _run_dir_from(overrides: list[str]) -> str | None:
    for o in overrides:
        if override_key(o) == "run_dir":
            return o.split("=", 1)[1]
    return None


def merge_overrides(stored: list[str], new: list[str]) -> list[str]:
    """The run's creation overrides, minus keys the new ones set, then the new ones (new wins)."""
    new_keys = {override_key(o) for o in new if "=" in o or o.startswith("~")}
    return [o for o in stored if override_key(o) not in new_keys] + new


def _with_stored_overrides(args: list[str]) -> list[str]:
    """Prepend the run's stored creation overrides to the command line (flags such as --multirun and
    ``--cfg job`` pass through untouched)."""
    run_dir = _run_dir_from([a for a in args if not a.startswith("-")])
    stored = stored_overrides(os.path.expanduser(run_dir)) if run_dir else []
    if not stored:
        return args
    new = [a for a in args if "=" in a and not a.startswith("-")]
    return merge_overrides(stored, new)[: -len(new) or None] + args


def _task(cfg: DictConfig) -> None:
    """The Hydra task function: one stage on one run directory."""
    try:
        check_settings(cfg)  # before a new run records its overrides: a bad value must not be replayed later
        overrides = list(HydraConfig.get().overrides.task)
        if cfg.stage in CREATING_STAGES:
            record_creation(cfg.run_dir, [o for o in overrides if _replayable(o)], cfg)
        stage_function(cfg.stage)(cfg)
    except DataspexError as exc:
        logging.getLogger("dataspex").error("error: %s", exc)
        if HydraConfig.get().mode == RunMode.MULTIRUN:
            raise  # a sweep job: the launcher (joblib, submitit) must see the failure and report it
        print(f"dataspex: error: {exc}", file=sys.stderr)
        sys.exit(2)


# Stages that may create their run directory, and stages that never write into it (a colleague's read-only
# study): those run with console logging only and Hydra's files kept out of the run directory.
CREATING_STAGES = ("design", "run")
READ_ONLY_STAGES = ("status",)
_READ_ONLY_HYDRA = ["hydra/job_logging=console", "hydra.run.dir=.", "hydra.output_subdir=null"]


def check_run_dir(stage: str, run_dir: str | None) -> None:
    """Refuse a run directory the stage cannot use, before Hydra creates or writes anything there."""
    if run_dir is None or "${" in run_dir:  # unset: a new run; an interpolation: Hydra resolves it
        if stage not in CREATING_STAGES:
            raise DataspexError(f"`dataspex {stage}` works on an existing run: give run_dir=<a directory made by "
                                "`dataspex run` or `dataspex design`>")
        return
    path = os.path.abspath(os.path.expanduser(run_dir))
    existing = path
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        where = "is a file" if existing == path else f"lies below {existing}, which is a file"
        raise DataspexError(f"run_dir={run_dir!r} {where}: give a directory (a new one for `dataspex run`)")
    if existing != path:
        if stage not in CREATING_STAGES:
            raise DataspexError(f"run_dir={run_dir!r} does not exist: run `dataspex run` or `dataspex design` "
                                "first (or check the path)")
        if not os.access(existing, os.W_OK | os.X_OK):
            raise DataspexError(f"run_dir={run_dir!r} cannot be created: {existing} is read-only for you")
    elif stage not in READ_ONLY_STAGES and not os.access(path, os.W_OK | os.X_OK):
        raise DataspexError(f"run_dir={run_dir!r} is read-only for you, and `dataspex {stage}` writes into it: "
                            f"`dataspex status` can read it; to work on it, copy it (cp -r {run_dir} <yours>) "
                            "and use run_dir=<yours>")


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return
    stage, rest = argv[0], argv[1:]
    if stage not in STAGES:
        print(f"dataspex: error: unknown stage {stage!r}\n\n{USAGE}", file=sys.stderr)
        sys.exit(2)
    try:
        check_run_dir(stage, _run_dir_from([a for a in rest if not a.startswith("-")]))
        args = _with_stored_overrides(rest)
        conf = config_dir()
    except DataspexError as exc:
        print(f"dataspex: error: {exc}", file=sys.stderr)
        sys.exit(2)
    # Hydra takes its overrides as one run of positional arguments: flags (--multirun, --cfg job) go first.
    overrides = [a for a in args if _is_override(a)]
    flags = [a for a in args if not _is_override(a)]
    if stage in READ_ONLY_STAGES:
        overrides += _READ_ONLY_HYDRA
    sys.argv = [f"dataspex-{stage}"] + flags + overrides + [f"stage={stage}"]
    hydra.main(version_base="1.3", config_path=conf, config_name="config")(_task)()


if __name__ == "__main__":
    main()
