"""The fit set on disk, written and read here only: ``fit/<estimator>.npz`` (InteractionResult) and
``fit/faithfulness.json`` (held-out scores per estimator), plus the fit stamp that tells later files which fit
they were made from.

A fit set is one ``dataspex fit``: every estimator fitted to one output (``fit.output``: loss, margin or error,
:mod:`dataspex.core.outputs`) on one design. Each file records what it models: ``fit/<estimator>.npz`` carries a
``dataspex_fit`` member beside the InteractionResult (which :meth:`InteractionResult.load` ignores) and each row
of ``faithfulness.json`` the same record: ``fit_stamp`` (shared by the whole set), ``output`` and ``design``
(kind, number of training examples, number of fitted rows and a hash of them). The stamp is a hash of what was
fitted (design, output, every estimator's keys and coefficients, the held-out scores), so an identical refit
keeps it.

The set is replaced as a whole: :func:`write_fit_set` writes the new set into a fresh ``.fit-new-*`` directory
beside ``fit/`` and swaps it in with two renames, so a fit killed at any point leaves the old set (or, in the
instant between the renames, the old set under ``.fit-old-*``, which the next fit puts back) and never a mix.
:func:`load_fitted` refuses a set whose files disagree (a mix of two fits, say of a pre-stamp dataspex killed
halfway), one without stamps, and one fitted on another design than the run's.
"""

from __future__ import annotations

import glob
import hashlib
import io
import json
import logging
import os
import shutil
import tempfile
import uuid
import zipfile

import numpy as np

from dataspex.core.errors import DataspexError
from dataspex.core.files import read_json, write_json
from dataspex.design.base import UNFITTED_ROLES
from dataspex.fit.estimators import InteractionResult

__all__ = ["FAITHFULNESS", "FIT_DIR", "choose_estimator", "clean_stale_fit_dirs", "design_record", "fit_stamp",
           "load_faithfulness", "load_fitted", "write_fit_set"]

log = logging.getLogger("dataspex")

FIT_DIR = "fit"
FAITHFULNESS = (FIT_DIR, "faithfulness.json")
RECORD_MEMBER = "dataspex_fit"  # the zip member of fit/<estimator>.npz holding its fit record
RECORD_KEYS = ("fit_stamp", "output", "design")
_NEW, _OLD = ".fit-new-", ".fit-old-"  # beside fit/: a set being written, the set being replaced


def _refit(store) -> str:
    return f"run `dataspex fit run_dir={store.run_dir}`"


# ------------------------------------------------------------------------------------------- records

def design_record(design) -> dict:
    """What a fit set was fitted on: the design kind, its training examples, and its fitted rows (every row but
    the validation retrains and seed replicates, which later stages append and ``dataspex fit`` ignores), hashed."""
    keep = ~np.isin(design.roles, UNFITTED_ROLES)
    h = hashlib.sha256()
    h.update(np.ascontiguousarray(np.packbits(design.masks[keep], axis=1)).tobytes())
    h.update(np.ascontiguousarray(design.mask_ids[keep], dtype=np.int64).tobytes())
    h.update("\n".join(str(r) for r in design.roles[keep]).encode())
    record = {"kind": design.meta.get("kind"), "n_train": int(design.n_train), "n_masks": int(keep.sum()),
              "hash": h.hexdigest()[:16]}
    if design.by_unit:  # fitted over units: which grouping (runs over examples keep their old record)
        record.update(n_units=int(design.n_units), units=design.units.digest())
    return record


def _stamp(fitted: dict, faithfulness: dict, output: str, design: dict) -> str:
    h = hashlib.sha256(json.dumps({"output": output, "design": design}, sort_keys=True).encode())
    for name in sorted(fitted):
        res = fitted[name]
        scores = {k: v for k, v in faithfulness[name].items() if k != "fit_seconds"}
        h.update(json.dumps({"name": name, "estimator": res.estimator, "n": res.n_features, "keys": res.keys,
                             "outputs": res.output_names, "scores": scores}, sort_keys=True, default=float).encode())
        h.update(np.ascontiguousarray(res.fourier, dtype=np.float64).tobytes())
    return h.hexdigest()[:16]


def _read_record(store, path: str) -> dict | None:
    """The fit record of ``fit/<estimator>.npz`` (None when it has none: written before fit stamps)."""
    try:
        with zipfile.ZipFile(path) as z:
            if f"{RECORD_MEMBER}.npy" not in z.namelist():
                return None
        with np.load(path, allow_pickle=False) as archive:
            return json.loads(str(archive[RECORD_MEMBER]))
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
        raise DataspexError(f"{path} is unreadable (truncated or corrupted: {exc}): {_refit(store)}") from None


def _write_result(path: str, result, record: dict) -> None:
    """``result`` as InteractionResult writes it, plus its fit record as one more member of the archive."""
    result.save(path)
    buffer = io.BytesIO()
    np.save(buffer, np.array(json.dumps(record, sort_keys=True)), allow_pickle=False)
    with zipfile.ZipFile(path, "a") as z:
        z.writestr(f"{RECORD_MEMBER}.npy", buffer.getvalue())
    with open(path, "rb+") as fh:
        os.fsync(fh.fileno())


# ------------------------------------------------------------------------------------------- writing

def _pid_alive(name: str) -> bool:
    """Whether the process that made ``.fit-new-<pid>-...`` still runs here (its set is not stale then)."""
    try:
        pid = int(os.path.basename(name).split("-")[2])
    except (IndexError, ValueError):
        return False
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_stale_fit_dirs(store) -> None:
    """Tidy what a killed ``dataspex fit`` left beside ``fit/``: put the old set back if it was killed between
    its two renames, and remove the unfinished new sets and replaced old ones."""
    fit_dir = store.path(FIT_DIR)
    old = sorted(glob.glob(store.path(_OLD + "*")), key=os.path.getmtime)
    if not os.path.exists(fit_dir) and old:
        os.rename(old[-1], fit_dir)
        log.warning("fit: restored the previous fit set from %s (a fit was killed while swapping it in)", old[-1])
        old = old[:-1]
    stale = old + [d for d in glob.glob(store.path(_NEW + "*")) if not _pid_alive(d)]
    for path in stale:
        shutil.rmtree(path, ignore_errors=True)
        log.info("fit: removed %s, left by a fit that was killed", path)


def write_fit_set(store, fitted: dict, faithfulness: dict, output: str, design) -> dict:
    """Write a whole fit set (``fitted``: estimator name -> InteractionResult, ``faithfulness``: name -> scores)
    and swap it in for ``fit/`` atomically; returns the faithfulness table as written (with the records)."""
    if set(fitted) != set(faithfulness) or not fitted:
        raise DataspexError(f"a fit set needs one score row per fitted estimator, got {sorted(fitted)} and "
                            f"{sorted(faithfulness)}")
    clean_stale_fit_dirs(store)
    d = design_record(design)
    record = {"fit_stamp": _stamp(fitted, faithfulness, output, d), "output": output, "design": d}
    table = {name: dict(faithfulness[name], **record) for name in faithfulness}
    new = tempfile.mkdtemp(prefix=f"{_NEW}{os.getpid()}-", dir=store.run_dir)
    fit_dir, old = store.path(FIT_DIR), None
    try:
        for name, result in fitted.items():
            _write_result(os.path.join(new, f"{name}.npz"), result, record)
        write_json(os.path.join(new, FAITHFULNESS[1]), table)
        _carry_caches(store, new, record["fit_stamp"])
        os.chmod(new, 0o777 & ~_umask())
        old = store.path(f"{_OLD}{os.getpid()}-{uuid.uuid4().hex[:8]}") if os.path.exists(fit_dir) else None
        if old is not None:
            os.rename(fit_dir, old)  # killed right here: fit/ is missing, the next fit puts the old set back
        os.rename(new, fit_dir)
    except BaseException:
        if old is not None and os.path.exists(old) and not os.path.exists(fit_dir):
            os.rename(old, fit_dir)
        shutil.rmtree(new, ignore_errors=True)
        raise
    _fsync_dir(store.run_dir)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return table


def _carry_caches(store, new: str, stamp: str) -> None:
    """An identical refit (same stamp) keeps the files made from the set (the budget curve cache): they are
    keyed by the stamp and still hold. Any other refit starts without them."""
    fit_dir = store.path(FIT_DIR)
    if not os.path.exists(store.path(*FAITHFULNESS)) or fit_stamp(store) != stamp:
        return
    for name in os.listdir(fit_dir):
        if not os.path.exists(os.path.join(new, name)) and os.path.isfile(os.path.join(fit_dir, name)) \
                and name.endswith(".json"):
            shutil.copy2(os.path.join(fit_dir, name), os.path.join(new, name))


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# ------------------------------------------------------------------------------------------- reading

def load_faithfulness(store) -> dict | None:
    """The faithfulness table, or None before ``dataspex fit``."""
    path = store.path(*FAITHFULNESS)
    return read_json(path) if os.path.exists(path) else None


def _check_set(store, faithfulness: dict, records: dict, design) -> None:
    """Refuse a fit set that is not one fit of this run's design (each check one line naming the fix)."""
    fit_dir = store.path(FIT_DIR)
    unstamped = sorted(n for n, rec in records.items() if rec is None)
    unstamped += sorted(n for n, f in faithfulness.items() if any(k not in f for k in RECORD_KEYS))
    if unstamped:
        raise DataspexError(f"{fit_dir} records no fit stamp for {', '.join(sorted(set(unstamped)))} (written by an "
                            "older dataspex, possibly by a fit killed halfway), so it may mix two fits: "
                            f"{_refit(store)}")
    described = {name: {k: f[k] for k in RECORD_KEYS} for name, f in faithfulness.items()}
    kinds = {json.dumps(r, sort_keys=True) for r in list(records.values()) + list(described.values())}
    if len(kinds) > 1:
        parts = [f"{name}.npz: {_describe(records[name])}" for name in sorted(records)]
        parts += [f"faithfulness.json: {_describe(r)}" for r in {json.dumps(r, sort_keys=True): r
                                                                  for r in described.values()}.values()]
        raise DataspexError(f"{fit_dir} mixes fits ({'; '.join(parts)}), as a fit killed halfway would leave "
                            f"it: {_refit(store)}")
    if design is not None:
        now, then = design_record(design), next(iter(described.values()))["design"]
        if now != then:
            raise DataspexError(f"{fit_dir} was fitted on another design ({then['kind']}, {then['n_masks']} masks, "
                                f"hash {then['hash']}; the run's is {now['kind']}, {now['n_masks']} masks, hash "
                                f"{now['hash']}): {_refit(store)}")


def _describe(record: dict) -> str:
    return f"fit {record['fit_stamp']} on {record['output']}, design {record['design'].get('hash')}"


def load_fitted(store) -> tuple[dict, dict]:
    """{estimator name: InteractionResult} and the faithfulness table written by `dataspex fit`, checked to be
    one whole fit of the run's current design."""
    faithfulness = load_faithfulness(store)
    if faithfulness is None:
        if glob.glob(store.path(_OLD + "*")):
            raise DataspexError(f"{store.path(FIT_DIR)} is missing: a `dataspex fit` was killed while swapping in "
                                f"its set (the previous one is kept beside it): {_refit(store)}")
        raise DataspexError(f"{store.run_dir} has no fitted estimators: {_refit(store)}")
    if not faithfulness:
        raise DataspexError(f"{store.path(*FAITHFULNESS)} lists no fitted estimators: {_refit(store)}")
    records, results = {}, {}
    for name in faithfulness:
        path = store.path(FIT_DIR, f"{name}.npz")
        if not os.path.exists(path):
            raise DataspexError(f"{path} is missing though faithfulness.json lists {name}: {_refit(store)}")
        records[name] = _read_record(store, path)
    for path in sorted(glob.glob(store.path(FIT_DIR, "*.npz"))):  # a stray file of another fit
        name = os.path.basename(path)[:-4]
        if name not in faithfulness:
            records[name] = _read_record(store, path)
    design = store.load_design() if store.has_design() else None
    _check_set(store, faithfulness, records, design)
    for name in faithfulness:
        results[name] = InteractionResult.load(store.path(FIT_DIR, f"{name}.npz"))
    return results, faithfulness


def fit_stamp(store) -> str:
    """The stamp of the fit set in ``fit/``: tells files made from a fit (validation, curves) whether it changed.
    A set written before fit stamps gets a hash of its faithfulness.json (such a set is refused for use)."""
    table = load_faithfulness(store) or {}
    stamps = {f.get("fit_stamp") for f in table.values()}
    if len(stamps) == 1 and None not in stamps:
        return stamps.pop()
    with open(store.path(*FAITHFULNESS), "rb") as fh:
        return hashlib.sha256(fh.read()).hexdigest()[:16]


def choose_estimator(results: dict, faithfulness: dict, wanted: str) -> str:
    """The estimator that ranks pairs: the one asked for, else (``auto``) the most faithful of all fitted ones by
    pooled held-out R^2, the linear datamodel included. When that is a model without pair terms, pair terms did
    not improve the held-out fit over main effects, and the report lists no pair.

    Pooled, not the mean of per-output R^2: an output that barely varies across masks has an R^2 near 0 or
    below for any model and drags the mean (ProxySPEX on the demo: pooled 0.71, mean over outputs -0.30)."""
    if wanted != "auto":
        if wanted not in results:
            raise DataspexError(f"report.estimator={wanted!r} was not fitted; fitted: {sorted(results)}")
        return wanted

    def r2(name):
        value = faithfulness[name].get("r2_pooled")
        value = faithfulness[name].get("r2_mean_over_outputs") if value is None else value
        return -np.inf if value is None or not np.isfinite(value) else value

    return max(results, key=r2)
