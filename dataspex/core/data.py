"""Loading the train and test splits: the built-in demo, a hub data set, or local csv/json/parquet files.

A split is held as plain Python lists and a NumPy label array, so every later stage (tokenising, training,
reporting) works the same whatever the source. Two task shapes:

* classification: ``texts`` + integer ``labels`` (indices into ``label_names``);
* causal_lm: ``texts`` are prompts, ``completions`` the target continuations whose NLL is the test loss.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field

import numpy as np

from dataspex.core.demo import make_demo
from dataspex.core.errors import DataspexError

_FILE_BUILDERS = {".csv": "csv", ".tsv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}


@dataclass
class Split:
    """One split of examples. ``labels`` is set for classification, ``completions`` for causal LM."""

    texts: list[str]
    labels: np.ndarray | None = None  # (n,) int64
    completions: list[str] | None = None

    def __len__(self) -> int:
        return len(self.texts)


@dataclass
class TaskData:
    """Train and test splits plus what the report needs to describe them."""

    train: Split
    test: Split
    task: str  # "classification" or "causal_lm"
    label_names: list[str] | None = None
    planted: list[dict] = field(default_factory=list)  # ground truth, demo data only

    @property
    def n_train(self) -> int:
        return len(self.train)

    @property
    def n_test(self) -> int:
        return len(self.test)

    def content_hash(self) -> str:
        """SHA-256 over every text, label and completion: the data part of a run's fingerprint."""
        h = hashlib.sha256()
        payload = {"task": self.task, "label_names": self.label_names}
        for name, split in (("train", self.train), ("test", self.test)):
            payload[name] = {
                "texts": split.texts,
                "labels": None if split.labels is None else split.labels.tolist(),
                "completions": split.completions,
            }
        h.update(json.dumps(payload, sort_keys=True).encode())
        return h.hexdigest()


def load_data(cfg, task: str) -> TaskData:
    """Build the splits described by a ``conf/data/*.yaml`` config for ``task``."""
    if cfg.source == "demo":
        if task != "classification":
            raise DataspexError("the demo data set is a classification task: use a classification model "
                                "(model=minilm) or point data= at your own causal-LM data")
        data = _load_demo(cfg)
    elif cfg.source in ("hub", "files"):
        data = _load_with_datasets(cfg, task)
    else:
        raise DataspexError(f"data.source={cfg.source!r} is not one of: demo, hub, files")
    validate(data)
    return data


def _load_demo(cfg) -> TaskData:
    demo = make_demo(n_train=cfg.n_train, n_harmful=cfg.n_harmful, n_redundant=cfg.n_redundant,
                     n_test_bulk=cfg.n_test_bulk, seed=cfg.seed)
    return TaskData(
        train=Split(demo.train_texts, demo.train_labels), test=Split(demo.test_texts, demo.test_labels),
        task="classification", label_names=demo.label_names, planted=demo.planted,
    )


def _load_with_datasets(cfg, task: str) -> TaskData:
    import datasets  # heavy (about 1 s): only file and hub data need it

    datasets.disable_progress_bars()
    if cfg.source == "files":
        train_ds = _read_file(datasets, cfg.train_file, "train")
        test_ds = _read_file(datasets, cfg.test_file, "test")
    else:
        try:
            train_ds = datasets.load_dataset(cfg.path, cfg.get("name"), split=cfg.train_split)
            test_ds = datasets.load_dataset(cfg.path, cfg.get("name"), split=cfg.test_split)
        except Exception as exc:
            raise DataspexError(
                f"could not load data set {cfg.path!r} (splits {cfg.train_split!r}/{cfg.test_split!r}): {exc}. "
                "Check the name, or download it first and use data=files with local paths") from exc
    if cfg.get("max_train"):
        train_ds = train_ds.select(range(min(cfg.max_train, len(train_ds))))
    if cfg.get("max_test"):
        test_ds = test_ds.select(range(min(cfg.max_test, len(test_ds))))

    if task == "classification":
        label_names = _label_names(cfg, train_ds)
        return TaskData(train=_classification_split(train_ds, cfg, label_names, "train"),
                        test=_classification_split(test_ds, cfg, label_names, "test"),
                        task=task, label_names=label_names)
    if task == "causal_lm":
        return TaskData(train=_lm_split(train_ds, cfg, "train"), test=_lm_split(test_ds, cfg, "test"), task=task)
    raise DataspexError(f"model.task={task!r} is not one of: classification, causal_lm")


def _read_file(datasets, path, split: str):
    """One split from a local .csv/.tsv/.json/.jsonl/.parquet file."""
    path = _existing(path, f"data.{split}_file")
    builder = _FILE_BUILDERS.get(os.path.splitext(path)[1].lower())
    if builder is None:
        raise DataspexError(f"data.{split}_file={path!r}: use a .csv, .tsv, .json, .jsonl or .parquet file")
    kwargs = {"delimiter": "\t"} if path.lower().endswith(".tsv") else {}
    if os.path.getsize(path) == 0:
        raise DataspexError(f"the {split} split is empty: {path} has no rows")
    try:
        return datasets.load_dataset(builder, data_files={split: path}, split=split, **kwargs)
    except Exception as exc:  # datasets raises many types for unreadable files
        raise DataspexError(f"could not read the {split} split from {path} (is it empty or malformed?): "
                            f"{exc}") from exc


def _existing(path, key: str) -> str:
    if not path:
        raise DataspexError(f"{key} is not set: give the path of a .csv/.json/.parquet file")
    path = os.path.expanduser(str(path))
    if not os.path.isfile(path):
        raise DataspexError(f"{key}={path!r} does not exist: check the path (relative paths are taken from "
                            f"the directory you ran dataspex in, {os.getcwd()})")
    return path


def _column(ds, column: str, key: str, split: str) -> list:
    if column not in ds.column_names:
        raise DataspexError(f"the {split} split has no column {column!r} (set by {key}); "
                            f"its columns are {ds.column_names}")
    return list(ds[column])


def _label_names(cfg, train_ds) -> list[str]:
    if cfg.get("label_names"):
        return [str(x) for x in cfg.label_names]
    feature = train_ds.features.get(cfg.label_column)
    if feature is not None and hasattr(feature, "names"):
        return list(feature.names)
    values = _column(train_ds, cfg.label_column, "data.label_column", "train")
    return [str(v) for v in sorted(set(values), key=str)]


def _classification_split(ds, cfg, label_names: list[str], split: str) -> Split:
    texts = [str(t) for t in _column(ds, cfg.text_column, "data.text_column", split)]
    raw = _column(ds, cfg.label_column, "data.label_column", split)
    index = {name: k for k, name in enumerate(label_names)}
    labels = []
    for row, value in enumerate(raw):
        # integer labels index label_names directly; anything else is matched by its string form
        if isinstance(value, (int, np.integer)) and not isinstance(value, bool) and 0 <= value < len(label_names):
            labels.append(int(value))
        elif str(value) in index:
            labels.append(index[str(value)])
        else:
            raise DataspexError(f"{split} row {row}: label {value!r} is not in the label set {label_names}; "
                                "fix the row or set data.label_names")
    return Split(texts, np.asarray(labels, dtype=np.int64))


def _lm_split(ds, cfg, split: str) -> Split:
    prompts = [str(t) for t in _column(ds, cfg.prompt_column, "data.prompt_column", split)]
    completions = [str(t) for t in _column(ds, cfg.completion_column, "data.completion_column", split)]
    return Split(prompts, completions=completions)


def validate(data: TaskData) -> None:
    """Refuse data no run can use, with a message that names the fix."""
    for name, split in (("train", data.train), ("test", data.test)):
        if len(split) == 0:
            raise DataspexError(f"the {name} split is empty: check data.{name}_split / data.{name}_file")
    if data.task == "classification":
        n_labels = len(data.label_names or [])
        if n_labels < 2:
            raise DataspexError(f"classification needs at least 2 labels, found {data.label_names}")
        for name, split in (("train", data.train), ("test", data.test)):
            bad = np.flatnonzero((split.labels < 0) | (split.labels >= n_labels))
            if bad.size:
                raise DataspexError(f"{name} row {bad[0]}: label {split.labels[bad[0]]} is outside the label set "
                                    f"{data.label_names}")
