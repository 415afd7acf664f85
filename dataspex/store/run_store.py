"""The run directory: design, fingerprint and retraining results, written so that nothing is lost or doubled.

Layout of a run directory::

    fingerprint.json     what the results depend on (model, data content, LoRA, training); checked on reuse
    overrides.json       the command-line overrides the run was created with (later stages start from them)
    config.yaml          the resolved config, for people
    design.npz           masks (bit-packed), mask ids, roles, design metadata, and each example's unit when the
                         masks are over units (design.units)
    embeddings.npz       design.units=cluster:K only: the base model's embeddings of the training texts
    results/part-*.npz   one file per finished chunk of masks: ids, the masks themselves, losses, margins,
                         the training-loss records (optional: older files have none), and the id of
                         the fingerprint they were trained under
    results/quarantine/  damaged or foreign result files, moved aside with a warning, never used
    results.parquet      ``dataspex collect``: every result in one table (one row per mask)
    fit/, report/        estimator results and the report

Result files are immutable once written and named uniquely, so any number of workers can write into one
store concurrently. Reading collapses duplicates (a mask trained twice keeps its first result). A file is
used only if it opens, passes its checksum, holds exactly the design's masks under their ids, and was
written under this run's fingerprint; anything else is quarantined when results are loaded.
"""

from __future__ import annotations

import glob
import hashlib
import io
import json
import os
import shutil
import socket
import uuid
import warnings
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from dataspex.core.data import summary_differences, summary_text
from dataspex.core.errors import DataspexError
from dataspex.core.files import atomic_write_bytes, load_npz, read_json, save_npz, write_json
from dataspex.core.outputs import modelled_output
from dataspex.design.base import Design
from dataspex.design.units import Units


class _Rejected(Exception):
    """A result file that must not be used (the message says why)."""


@dataclass
class StoreScan:
    """What ``results/`` holds, file by file, without changing anything (see :meth:`RunStore.scan`)."""

    done: set = field(default_factory=set)  # mask ids with at least one usable result
    n_results: int = 0  # usable results, duplicates included
    good: dict = field(default_factory=dict)  # path -> mask ids it holds
    rejected: dict = field(default_factory=dict)  # path -> why it cannot be used
    temp_files: list = field(default_factory=list)  # .tmp-* left by writers killed mid-write

    @property
    def duplicates(self) -> int:
        """Results beyond the first for their mask (harmless: reading keeps one per mask)."""
        return self.n_results - len(self.done)


@dataclass
class Results:
    """Retraining results ordered by mask id: ``losses``/``margins`` are (m, n_test) float64.

    ``train_losses`` (m, 1 + epochs) float64: each mask's training-loss record, the loss training started from
    then each epoch's mean (``dataspex.train.common.loss_record``); NaN rows for masks from files written before
    it was recorded, None when no file has it. :func:`dataspex.store.health.flag_results` reads it."""

    mask_ids: np.ndarray
    masks: np.ndarray
    losses: np.ndarray
    margins: np.ndarray
    train_losses: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.mask_ids)

    def keep(self, design: Design, role: str) -> np.ndarray:
        """(m,) bool: which of these results belong to the design rows of ``role`` (as :meth:`Design.rows`)."""
        return np.isin(self.mask_ids, design.ids(role))

    def outputs(self, kind: str) -> np.ndarray:
        """(m, n_test) float64: the output ``kind`` as dataspex models it, a cost (higher = worse):
        :func:`dataspex.core.outputs.modelled_output` (``margin`` is the negative margin)."""
        return modelled_output(kind, self.losses, self.margins)


def _train_losses(curves: list) -> np.ndarray | None:
    """Per-mask training-loss rows (None where a file had none) as one (m, epochs) array, NaN rows for the
    missing ones; None if no row has them."""
    width = max((len(c) for c in curves if c is not None), default=None)
    if width is None:
        return None
    out = np.full((len(curves), width), np.nan)
    for k, c in enumerate(curves):
        if c is not None:
            out[k, : len(c)] = c
    return out


# Fingerprint keys recorded for people and messages, never compared: the data summary says what differs when the
# data hash does (runs fingerprinted before it was recorded have none, and still open).
RECORDED_ONLY = ("data_summary",)


def _fingerprint_id(fingerprint: dict) -> str:
    return hashlib.sha256(json.dumps(fingerprint, sort_keys=True).encode()).hexdigest()[:16]


def _difference(key: str, stored: dict, now: dict) -> str:
    """One fingerprint key's difference in words; for the data, what in it differs when both sides say."""
    if key == "data" and stored.get("data_summary") and now.get("data_summary"):
        said = summary_differences(stored["data_summary"], now["data_summary"])
        if said:
            return "data: " + "; ".join(said)
    if key == "data" and now.get("data_summary"):
        return (f"data: stored content hash {str(stored.get(key))[:16]}, now {str(now.get(key))[:16]}, from "
                f"{summary_text(now['data_summary'])}; the run predates data summaries, so compare these with the "
                "data block of its config.yaml")
    old, new = stored.get(key), now.get(key)
    if isinstance(old, dict) and isinstance(new, dict):  # a config block: name the settings that differ
        return "; ".join(f"{key}.{k}: stored {old.get(k)!r}, now {new.get(k)!r}"
                         for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k))
    return f"{key}: stored {old!r}, now {new!r}"


class RunStore:
    def __init__(self, run_dir: str):
        self.run_dir = os.path.abspath(os.path.expanduser(run_dir))

    def path(self, *parts: str) -> str:
        return os.path.join(self.run_dir, *parts)

    # fingerprint ---------------------------------------------------------------------------------------
    def check_fingerprint(self, fingerprint: dict, create: bool) -> None:
        """Refuse to mix results from different models, data or training configs in one directory.

        ``create``: write the fingerprint if the directory has none (the design stage). A directory that holds
        results or a fingerprinted design but lost its fingerprint.json gets it back only when these settings
        provably are the run's (:meth:`_restore_fingerprint`): a new fingerprint would turn every result there
        into a foreign one. Otherwise a missing fingerprint means the directory is not a run directory.
        """
        path = self.path("fingerprint.json")
        if not os.path.exists(path):
            held = self._held()
            if held and not create:
                raise DataspexError(f"{self.run_dir} has no fingerprint.json (deleted?) but holds {held}: restore "
                                    f"the file from a backup, or run `dataspex design run_dir={self.run_dir}` "
                                    "without overrides (it replays the run's own settings and restores the file "
                                    "once they check out against design.npz's copy or the results)")
            if not create:
                raise DataspexError(f"{self.run_dir} is not a dataspex run directory (no fingerprint.json): "
                                    "run `dataspex design` (or `dataspex run`) there first")
            restored = self._restore_fingerprint(fingerprint, held) if held else fingerprint
            if self._create_exclusively(path, restored):
                return
            # another process created the run at the same moment: its fingerprint must be ours
        self._compare(self.stored_fingerprint(), fingerprint)

    def _compare(self, stored: dict, fingerprint: dict, lost: bool = False) -> None:
        """Refuse when ``fingerprint`` differs from ``stored`` in a compared key, saying what differs."""
        keys = (set(stored) | set(fingerprint)) - set(RECORDED_ONLY)
        differing = sorted(k for k in keys if stored.get(k) != fingerprint.get(k))
        if not differing:
            return
        details = "; ".join(_difference(k, stored, fingerprint) for k in differing)
        if lost:
            raise DataspexError(f"{self.run_dir} has no fingerprint.json (deleted?), and these settings are not the "
                                f"run's (design.npz keeps a copy of its fingerprint): different {', '.join(differing)} "
                                f"({details}). Run `dataspex design run_dir={self.run_dir}` without overrides (it "
                                "replays the run's own settings) to restore the file, or use a new run_dir")
        raise DataspexError(f"{self.run_dir} holds results for a different {', '.join(differing)} ({details}). "
                            "Use a new run_dir, or repeat the run's original settings")

    def _held(self) -> str:
        """What the directory holds that a fingerprint is for, in words ("" when nothing)."""
        n_results = len(self.result_files())
        held = (["a design (design.npz)"] if self.has_design() else []) + \
            ([f"{n_results} result files"] if n_results else [])
        return " and ".join(held)

    def _restore_fingerprint(self, fingerprint: dict, held: str) -> dict:
        """The fingerprint to put back in a directory that lost its fingerprint.json, or a refusal.

        Written back only with proof that it is the lost one: equal to the copy design.npz keeps (runs made
        since the copy is kept), or hashing to the fingerprint id stamped into the result files (older runs).
        A design with no copy and no results is fingerprinted afresh: nothing was trained under it."""
        copy = load_npz(self.path("design.npz"))[1].get("fingerprint") if self.has_design() else None
        if copy is not None:
            self._compare(copy, fingerprint, lost=True)
            restored, how = copy, "restored it from the copy in design.npz"
        else:
            stamps = self._result_stamps()
            # a fingerprint written before data summaries were recorded hashes without one
            candidates = [fingerprint, {k: v for k, v in fingerprint.items() if k not in RECORDED_ONLY}]
            restored = next((c for c in candidates if _fingerprint_id(c) in stamps), None)
            if restored is None and self.result_files():
                trained = ", ".join(sorted(stamps)) or "no readable fingerprint"
                raise DataspexError(
                    f"{self.run_dir} has no fingerprint.json (deleted?) but holds {held}, trained under fingerprint "
                    f"{trained}, and these settings give {_fingerprint_id(fingerprint)}: they are not the run's, and "
                    "a new fingerprint would disown every result there. Restore fingerprint.json from a backup, "
                    f"or run `dataspex design run_dir={self.run_dir}` without overrides (it replays the run's own "
                    "settings and restores the file if they reproduce the results' fingerprint), or use a new "
                    "run_dir")
            restored = fingerprint if restored is None else restored
            how = ("restored it from these settings: they reproduce the fingerprint the results were trained under"
                   if stamps else "wrote one from these settings (design.npz keeps no copy of the old one, and "
                   "nothing was trained under it)")
        warnings.warn(f"{self.run_dir} had no fingerprint.json: {how}", stacklevel=3)
        return restored

    def _result_stamps(self) -> set:
        """The fingerprint ids stamped into the readable result files."""
        stamps = set()
        for path in self.result_files():
            try:
                stamp = load_npz(path)[1].get("fingerprint")
            except (DataspexError, FileNotFoundError):  # damaged or gone: quarantined when results are loaded
                continue
            if stamp is not None:
                stamps.add(stamp)
        return stamps

    @staticmethod
    def _create_exclusively(path: str, obj) -> bool:
        """Write ``obj`` as JSON to ``path`` unless it exists (atomic even when two runs race to create it:
        the file is complete before it is linked into place, and linking never replaces). True if written."""
        directory = os.path.dirname(path)
        os.makedirs(directory, exist_ok=True)
        tmp = os.path.join(directory, f".tmp-{uuid.uuid4().hex}")
        write_json(tmp, obj)
        try:
            os.link(tmp, path)
            return True
        except FileExistsError:
            return False
        finally:
            os.unlink(tmp)

    def stored_fingerprint(self) -> dict | None:
        """``fingerprint.json`` (None before there is one); a damaged one is refused, naming the file and the fix."""
        path = self.path("fingerprint.json")
        fix = (f"restore it from a backup, or delete it and run `dataspex design run_dir={self.run_dir}` without "
               "overrides (it re-creates the file once the run's settings check out against design.npz's copy or "
               "the results)")
        try:
            with open(path, "rb") as fh:
                stored = json.loads(fh.read().decode("utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            raise DataspexError(f"{path} is damaged (truncated or not JSON: {exc}): {fix}") from exc
        if not isinstance(stored, dict):
            raise DataspexError(f"{path} is not a dataspex fingerprint (a JSON {type(stored).__name__}, not an "
                                f"object): {fix}")
        return stored

    def fingerprint_id(self) -> str | None:
        """A short hash of ``fingerprint.json`` (None before there is one); stamped into every result file."""
        stored = self.stored_fingerprint()
        return None if stored is None else _fingerprint_id(stored)

    # design ------------------------------------------------------------------------------------------------
    def has_design(self) -> bool:
        return os.path.exists(self.path("design.npz"))

    def save_design(self, design: Design) -> None:
        arrays = {"masks_packed": np.packbits(design.masks, axis=1), "mask_ids": design.mask_ids,
                  "roles": design.roles}
        # "n_train" is the masks' width (their columns: units when the design has them), as files always said.
        header = {"n_train": design.n_units, "meta": design.meta, "fingerprint": self.stored_fingerprint()}
        if design.units is not None:  # the grouping's names and spec are in design.meta["units"]
            arrays["unit_of"] = design.units.unit_of
        # A copy of the fingerprint: what restores a lost fingerprint.json (see check_fingerprint).
        save_npz(self.path("design.npz"), arrays, header)

    def load_design(self) -> Design:
        if not self.has_design():
            raise DataspexError(f"{self.run_dir} has no design.npz: run `dataspex design run_dir={self.run_dir}`")
        arrays, meta = load_npz(self.path("design.npz"))
        masks = np.unpackbits(arrays["masks_packed"], axis=1, count=meta["n_train"])
        units = None
        if "unit_of" in arrays:
            record = meta["meta"]["units"]
            units = Units(arrays["unit_of"], record["names"], record["spec"])
        return Design(masks, arrays["mask_ids"], arrays["roles"], meta["meta"], units)

    # embeddings (design.units=cluster:K) -------------------------------------------------------------------
    def load_embeddings(self, source: dict) -> np.ndarray | None:
        """The base model's embeddings of the training texts (n_train, hidden) float32 kept by
        :meth:`save_embeddings`, or None when there are none or they were made from another ``source`` (model
        and data: then they are recomputed)."""
        path = self.path("embeddings.npz")
        if not os.path.exists(path):
            return None
        arrays, meta = load_npz(path)
        return arrays["embeddings"] if meta.get("source") == source else None

    def save_embeddings(self, embeddings: np.ndarray, source: dict) -> None:
        save_npz(self.path("embeddings.npz"), {"embeddings": np.asarray(embeddings, dtype=np.float32)},
                 {"source": source})

    # results -----------------------------------------------------------------------------------------------
    def write_results(self, mask_ids, masks, losses, margins, meta: dict | None = None,
                      train_losses=None) -> str:
        """Write one chunk of finished masks as a new, uniquely named file; returns its path. ``train_losses``
        (m, 1 + epochs), optional: each mask's training-loss record (stored when given)."""
        mask_ids = np.asarray(mask_ids, dtype=np.int64)
        name = f"part-{int(mask_ids.min()):07d}-{int(mask_ids.max()):07d}-{uuid.uuid4().hex[:12]}.npz"
        arrays = {"mask_ids": mask_ids, "masks_packed": np.packbits(np.asarray(masks, dtype=np.uint8), axis=1),
                  "losses": np.asarray(losses, dtype=np.float64), "margins": np.asarray(margins, dtype=np.float64)}
        if train_losses is not None:
            arrays["train_losses"] = np.asarray(train_losses, dtype=np.float64).reshape(len(mask_ids), -1)
        info = {"n_train": int(np.asarray(masks).shape[1]), "host": socket.gethostname(), "pid": os.getpid(),
                "fingerprint": self.fingerprint_id()}
        path = self.path("results", name)
        save_npz(path, arrays, dict(meta or {}, **info))
        return path

    def result_files(self) -> list[str]:
        return sorted(glob.glob(self.path("results", "part-*.npz")))

    def training_rate(self) -> dict:
        """Measured training time of this run's result files that record it: {"seconds", "n_masks",
        "threads" (sorted distinct torch thread counts)}; seconds are wall time per chunk, loading excluded.
        Damaged files are skipped (``dataspex status`` reports them)."""
        seconds, n_masks, threads = 0.0, 0, set()
        for path in self.result_files():
            try:
                arrays, meta = load_npz(path)
            except DataspexError:
                continue
            if "seconds" in meta:
                seconds += float(meta["seconds"])
                n_masks += len(arrays["mask_ids"])
                threads.add(int(meta.get("threads", 0)))
        return {"seconds": seconds, "n_masks": n_masks, "threads": sorted(threads)}

    def _quarantine(self, path: str, reason: str) -> None:
        target_dir = self.path("results", "quarantine")
        os.makedirs(target_dir, exist_ok=True)
        shutil.move(path, os.path.join(target_dir, os.path.basename(path)))
        warnings.warn(f"quarantined {os.path.basename(path)}: {reason} (moved to {target_dir}; "
                      "its masks will be retrained)", stacklevel=3)

    def _read_result(self, path: str, design: Design, by_id: dict, fingerprint: str | None):
        """(arrays, meta) of a usable result file; raises _Rejected (why not) or FileNotFoundError."""
        try:
            arrays, meta = load_npz(path)
            masks = np.unpackbits(arrays["masks_packed"], axis=1, count=meta["n_train"])
        except DataspexError as exc:
            raise _Rejected(str(exc)) from exc
        except (KeyError, ValueError, TypeError) as exc:
            raise _Rejected(f"{path} is not a dataspex result file ({exc})") from exc
        stamp = meta.get("fingerprint")
        if fingerprint is not None and stamp is not None and stamp != fingerprint:
            raise _Rejected(f"it was written under another fingerprint ({stamp}, this run has {fingerprint}): "
                            "results of a different model, data or training config")
        rows = [by_id.get(int(i)) for i in arrays["mask_ids"]]
        if None in rows or masks.shape[1] != design.n_units or not np.array_equal(design.masks[rows], masks):
            raise _Rejected("its masks do not match this run's design")
        curves = arrays.get("train_losses")  # optional: files written before it was recorded have none
        if curves is not None and (curves.ndim != 2 or len(curves) != len(rows)):
            raise _Rejected(f"its train_losses have shape {curves.shape}, not one row per mask")
        return arrays, meta

    def scan(self, design: Design | None = None) -> StoreScan:
        """Check every result file against the design and fingerprint; changes nothing on disk."""
        design = design if design is not None else self.load_design()
        by_id = dict(zip(design.mask_ids.tolist(), range(len(design))))
        fingerprint = self.fingerprint_id()
        scan = StoreScan(temp_files=sorted(glob.glob(self.path("results", ".tmp-*"))))
        for path in self.result_files():
            try:
                arrays, _ = self._read_result(path, design, by_id, fingerprint)
            except _Rejected as exc:
                scan.rejected[path] = str(exc)
                continue
            except FileNotFoundError:  # quarantined by someone else meanwhile
                continue
            ids = arrays["mask_ids"].tolist()
            scan.good[path] = ids
            scan.n_results += len(ids)
            scan.done.update(ids)
        return scan

    def load_results(self, design: Design | None = None, quarantine: bool = True) -> Results:
        """Every verified result, duplicates collapsed, ordered by mask id.

        Damaged files, files whose masks disagree with the design and files written under another
        fingerprint are quarantined (``quarantine=False``: skipped, left in place), never used."""
        design = design if design is not None else self.load_design()
        by_id = dict(zip(design.mask_ids.tolist(), range(len(design))))
        fingerprint = self.fingerprint_id()
        seen: dict[int, tuple] = {}
        for path in self.result_files():
            try:
                arrays, _ = self._read_result(path, design, by_id, fingerprint)
            except _Rejected as exc:
                if quarantine:
                    self._quarantine(path, str(exc))
                continue
            except FileNotFoundError:  # another reader quarantined it meanwhile
                continue
            curves = arrays.get("train_losses")
            for k, mask_id in enumerate(arrays["mask_ids"].tolist()):
                seen.setdefault(mask_id, (arrays["losses"][k], arrays["margins"][k],
                                          None if curves is None else curves[k]))
        ids = np.array(sorted(seen), dtype=np.int64)
        n_test = len(next(iter(seen.values()))[0]) if seen else 0
        losses = np.array([seen[i][0] for i in ids]).reshape(len(ids), n_test)
        margins = np.array([seen[i][1] for i in ids]).reshape(len(ids), n_test)
        masks = design.masks[[by_id[i] for i in ids.tolist()]] if len(ids) else design.masks[:0]
        return Results(ids, masks, losses, margins, _train_losses([seen[i][2] for i in ids]))

    def done_ids(self) -> set[int]:
        """Ids with a usable result on disk: files that are damaged, foreign or disagree with the design
        don't count (``load_results`` quarantines them), so resuming retrains their masks."""
        if not self.has_design():
            return set()
        return self.scan().done

    # one table ----------------------------------------------------------------------------------------------
    def table(self, design: Design | None = None):
        """Every result as a pandas DataFrame, one row per mask, ordered by mask id: ``mask_id``, ``role``,
        ``n_kept``, ``mask`` (the 0/1 mask as a uint8 array), then ``loss_<t>`` and ``margin_<t>`` per test
        example (the columns of :attr:`dataspex.api.Run.results`, plus the mask)."""
        design = design if design is not None else self.load_design()
        res = self.load_results(design)
        role = dict(zip(design.mask_ids.tolist(), design.roles.tolist()))
        n_test = res.losses.shape[1]
        columns = {"mask_id": res.mask_ids, "role": [role[int(i)] for i in res.mask_ids],
                   "n_kept": res.masks.sum(axis=1).astype(np.int64), "mask": list(res.masks)}
        columns.update({f"loss_{t}": res.losses[:, t] for t in range(n_test)})
        columns.update({f"margin_{t}": res.margins[:, t] for t in range(n_test)})
        return pd.DataFrame(columns)

    def write_table(self, path: str | None = None, design: Design | None = None) -> tuple[str, dict]:
        """Write :meth:`table` as Parquet, atomically (default ``<run_dir>/results.parquet``); the file's
        metadata (key ``dataspex``) holds the fingerprint, the design's metadata and the counts.
        Returns (path, that metadata)."""
        design = design if design is not None else self.load_design()
        frame = self.table(design)
        path = os.path.abspath(path or self.path("results.parquet"))
        fingerprint = read_json(self.path("fingerprint.json")) if os.path.exists(self.path("fingerprint.json")) \
            else None
        info = {"run_dir": self.run_dir, "fingerprint": fingerprint, "fingerprint_id": self.fingerprint_id(),
                "design": design.meta, "n_train": design.n_train, "n_units": design.n_units,
                "unit_of": None if design.units is None else design.units.unit_of.tolist(),
                "n_masks": len(design), "n_results": len(frame),
                "complete": len(frame) == len(design)}
        table = pa.Table.from_pandas(frame, preserve_index=False)
        schema_meta = dict(table.schema.metadata or {})
        schema_meta[b"dataspex"] = json.dumps(info, sort_keys=True, default=str).encode()
        table = table.replace_schema_metadata(schema_meta)
        buffer = io.BytesIO()
        pq.write_table(table, buffer)
        atomic_write_bytes(path, buffer.getvalue())
        return path, info
