"""Writing a training split back out, in the format the user gave it (``dataspex curate`` writes the curated set).

The columns are the data config's own names (``data.text_column`` and ``data.label_column``, or the prompt and
completion columns), labels as their names, plus ``row``: each example's index in the training split as dataspex
loaded it, so that the curated file can be joined back to the source; the source's other columns (a source, an
annotator: ``Split.columns``) follow, so a curated set keeps what ``design.units=column:<name>`` grouped by.
Formats: csv, tsv, jsonl (JSON lines; also for ``.json`` sources), parquet, and ``datasets`` (a
``datasets.Dataset.save_to_disk`` folder). Files are written atomically; a ``datasets`` folder is written beside
its final name and moved into place.
"""

from __future__ import annotations

import os
import shutil
import uuid

import pandas as pd

from dataspex.core.data import Split
from dataspex.core.errors import DataspexError
from dataspex.core.files import atomic_write_bytes, atomic_write_text

__all__ = ["FORMATS", "format_for", "split_frame", "write_split"]

FORMATS = ("csv", "tsv", "jsonl", "parquet", "datasets")
_SUFFIX = {"csv": ".csv", "tsv": ".tsv", "jsonl": ".jsonl", "parquet": ".parquet", "datasets": ""}


def format_for(data_cfg, requested: str = "auto") -> str:
    """The format to write: ``requested`` unless it is ``auto``, then the train file's own (a ``.json`` source is
    written as JSON lines, which ``datasets`` reads the same way); hub and demo data: parquet."""
    requested = str(requested)
    if requested != "auto":
        if requested not in FORMATS:
            raise DataspexError(f"curate.format={requested!r} is not one of: auto, {', '.join(FORMATS)}")
        return requested
    if data_cfg.get("source") == "files" and data_cfg.get("train_file"):
        ext = os.path.splitext(str(data_cfg.train_file))[1].lower().lstrip(".")
        return {"json": "jsonl"}.get(ext, ext) if ext in ("csv", "tsv", "json", "jsonl", "parquet") else "csv"
    return "parquet"


def split_frame(split: Split, rows: list[int], data_cfg, label_names: list[str] | None) -> pd.DataFrame:
    """The split as a table under the data config's column names, then its other columns (``split.columns``, by
    row of ``split``) as read; ``rows``: each row's source index."""
    if split.labels is not None:
        labels = [label_names[y] if label_names else int(y) for y in split.labels]
        frame = pd.DataFrame({"row": rows, str(data_cfg.get("text_column", "text")): split.texts,
                              str(data_cfg.get("label_column", "label")): labels})
    else:
        frame = pd.DataFrame({"row": rows, str(data_cfg.get("prompt_column", "prompt")): split.texts,
                              str(data_cfg.get("completion_column", "completion")): split.completions})
    for name, values in (split.columns or {}).items():
        if name not in frame.columns:
            frame[name] = values
    return frame


def write_split(frame: pd.DataFrame, path_stem: str, fmt: str) -> str:
    """Write ``frame`` as ``<path_stem><suffix>`` in ``fmt``; returns the path written."""
    path = path_stem + _SUFFIX[fmt]
    if fmt == "csv":
        atomic_write_text(path, frame.to_csv(index=False))
    elif fmt == "tsv":
        atomic_write_text(path, frame.to_csv(index=False, sep="\t"))
    elif fmt == "jsonl":
        atomic_write_text(path, frame.to_json(orient="records", lines=True, force_ascii=False))
    elif fmt == "parquet":
        atomic_write_bytes(path, frame.to_parquet(index=False))
    else:
        import datasets  # about 1 s to import: only this format needs it

        tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
        datasets.Dataset.from_pandas(frame, preserve_index=False).save_to_disk(tmp)
        if os.path.isdir(path):
            shutil.rmtree(path)
        os.replace(tmp, path)
    return path
