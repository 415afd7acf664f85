"""The run directory: design, fingerprint and retraining results, written so that nothing is lost or doubled.

Layout of a run directory::

    fingerprint.json     what the results depend on (model, data content, LoRA, training); checked on reuse
    overrides.json       the command-line overrides the run was created with (later stages start from them)
    config.yaml          the resolved config, for people
    design.npz           masks (bit-packed), mask ids, roles, design metadata
    results/part-*.npz   one file per finished chunk of masks: ids, the masks themselves, losses, margins
    results/quarantine/  damaged result files, moved aside with a warning, never used
    fit/, report/        estimator results and the report

Result files are immutable once written and named uniquely, so any number of workers can write into one
store concurrently. Reading collapses duplicates (a mask trained twice keeps its first result).
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import uuid
import warnings
from dataclasses import dataclass

import numpy as np

from dataspex.design import Design
from dataspex.errors import DataspexError
from dataspex.io import load_npz, read_json, save_npz, write_json


@dataclass
class Results:
    """Retraining results ordered by mask id: ``losses``/``margins`` are (m, n_test) float64."""

    mask_ids: np.ndarray
    masks: np.ndarray
    losses: np.ndarray
    margins: np.ndarray

    def __len__(self) -> int:
        return len(self.mask_ids)

    def outputs(self, kind: str) -> np.ndarray:
        if kind == "loss":
            return self.losses
        if kind == "margin":
            return self.margins
        raise DataspexError(f"output={kind!r} is not one of: loss, margin")


class RunStore:
    def __init__(self, run_dir: str):
        self.run_dir = os.path.abspath(os.path.expanduser(run_dir))

    def path(self, *parts: str) -> str:
        return os.path.join(self.run_dir, *parts)

    # fingerprint ---------------------------------------------------------------------------------------
    def check_fingerprint(self, fingerprint: dict, create: bool) -> None:
        """Refuse to mix results from different models, data or training configs in one directory.

        ``create``: write the fingerprint if the directory has none (the design stage); otherwise a missing
        fingerprint means the directory is not a run directory.
        """
        path = self.path("fingerprint.json")
        if not os.path.exists(path):
            if not create:
                raise DataspexError(f"{self.run_dir} is not a dataspex run directory (no fingerprint.json): "
                                    "run `dataspex design` (or `dataspex run`) there first")
            write_json(path, fingerprint)
            return
        stored = read_json(path)
        differing = sorted(k for k in set(stored) | set(fingerprint) if stored.get(k) != fingerprint.get(k))
        if differing:
            details = "; ".join(f"{k}: stored {stored.get(k)!r}, now {fingerprint.get(k)!r}" for k in differing)
            raise DataspexError(f"{self.run_dir} holds results for a different {', '.join(differing)} ({details}). "
                                "Use a new run_dir, or repeat the run's original settings")

    # design ------------------------------------------------------------------------------------------------
    def has_design(self) -> bool:
        return os.path.exists(self.path("design.npz"))

    def save_design(self, design: Design) -> None:
        arrays = {"masks_packed": np.packbits(design.masks, axis=1), "mask_ids": design.mask_ids,
                  "roles": design.roles}
        save_npz(self.path("design.npz"), arrays, {"n_train": design.n_train, "meta": design.meta})

    def load_design(self) -> Design:
        if not self.has_design():
            raise DataspexError(f"{self.run_dir} has no design.npz: run `dataspex design run_dir={self.run_dir}`")
        arrays, meta = load_npz(self.path("design.npz"))
        masks = np.unpackbits(arrays["masks_packed"], axis=1, count=meta["n_train"])
        return Design(masks, arrays["mask_ids"], arrays["roles"], meta["meta"])

    # results -----------------------------------------------------------------------------------------------
    def write_results(self, mask_ids, masks, losses, margins, meta: dict | None = None) -> str:
        """Write one chunk of finished masks as a new, uniquely named file; returns its path."""
        mask_ids = np.asarray(mask_ids, dtype=np.int64)
        name = f"part-{int(mask_ids.min()):07d}-{int(mask_ids.max()):07d}-{uuid.uuid4().hex[:12]}.npz"
        arrays = {"mask_ids": mask_ids, "masks_packed": np.packbits(np.asarray(masks, dtype=np.uint8), axis=1),
                  "losses": np.asarray(losses, dtype=np.float64), "margins": np.asarray(margins, dtype=np.float64)}
        info = {"n_train": int(np.asarray(masks).shape[1]), "host": socket.gethostname(), "pid": os.getpid()}
        path = self.path("results", name)
        save_npz(path, arrays, dict(meta or {}, **info))
        return path

    def result_files(self) -> list[str]:
        return sorted(glob.glob(self.path("results", "part-*.npz")))

    def _quarantine(self, path: str, reason: str) -> None:
        target_dir = self.path("results", "quarantine")
        os.makedirs(target_dir, exist_ok=True)
        shutil.move(path, os.path.join(target_dir, os.path.basename(path)))
        warnings.warn(f"quarantined {os.path.basename(path)}: {reason} (moved to {target_dir}; "
                      "its masks will be retrained)", stacklevel=3)

    def load_results(self, design: Design | None = None) -> Results:
        """Every verified result, duplicates collapsed, ordered by mask id.

        Damaged files and files whose masks disagree with the design are quarantined, never used."""
        design = design if design is not None else self.load_design()
        by_id = dict(zip(design.mask_ids.tolist(), range(len(design))))
        seen: dict[int, tuple] = {}
        for path in self.result_files():
            try:
                arrays, meta = load_npz(path)
                masks = np.unpackbits(arrays["masks_packed"], axis=1, count=meta["n_train"])
            except DataspexError as exc:
                self._quarantine(path, str(exc))
                continue
            except FileNotFoundError:  # another reader quarantined it meanwhile
                continue
            rows = [by_id.get(int(i)) for i in arrays["mask_ids"]]
            if None in rows or masks.shape[1] != design.n_train or \
                    not np.array_equal(design.masks[[r for r in rows]], masks):
                self._quarantine(path, "its masks do not match this run's design")
                continue
            for k, mask_id in enumerate(arrays["mask_ids"].tolist()):
                seen.setdefault(mask_id, (arrays["losses"][k], arrays["margins"][k]))
        ids = np.array(sorted(seen), dtype=np.int64)
        n_test = len(next(iter(seen.values()))[0]) if seen else 0
        losses = np.array([seen[i][0] for i in ids]).reshape(len(ids), n_test)
        margins = np.array([seen[i][1] for i in ids]).reshape(len(ids), n_test)
        masks = design.masks[[by_id[i] for i in ids.tolist()]] if len(ids) else design.masks[:0]
        return Results(ids, masks, losses, margins)

    def done_ids(self) -> set[int]:
        """Ids with a result on disk (read from file headers; cheap enough for resume checks)."""
        done: set[int] = set()
        for path in self.result_files():
            try:
                arrays, _ = load_npz(path)
            except (DataspexError, FileNotFoundError):
                continue  # load_results quarantines it; here it just doesn't count as done
            done.update(arrays["mask_ids"].tolist())
        return done
