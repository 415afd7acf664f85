"""Loading the train, test and (optional) eval splits: the built-in demo, a hub data set, or local csv/json/parquet
files. The eval split (``data.eval_file``, ``data.eval_split``, the demo's ``data.n_eval``) is never used for
attribution: only ``dataspex curate`` scores retrained models on it, so that a curated set is judged on data the
ranking never saw.

A split is held as plain Python lists and a NumPy label array, so every later stage (tokenising, training,
reporting) works the same whatever the source. Two task shapes:

* classification: ``texts`` + integer ``labels`` (indices into ``label_names``);
* causal_lm: ``texts`` are prompts, ``completions`` the target continuations whose NLL is the test loss.
"""

from __future__ import annotations

import codecs
import functools
import hashlib
import json
import logging
import math
import os
import socket
import threading
import urllib.parse
from dataclasses import dataclass, field

import numpy as np

from dataspex.core.demo import make_demo
from dataspex.core.errors import DataspexError

log = logging.getLogger("dataspex")

_FILE_BUILDERS = {".csv": "csv", ".tsv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}
_HUB_PROBE_S = 3.0  # a hub that has not accepted a connection by then is taken as unreachable


@dataclass
class Split:
    """One split of examples. ``labels`` is set for classification, ``completions`` for causal LM."""

    texts: list[str]
    labels: np.ndarray | None = None  # (n,) int64
    completions: list[str] | None = None
    # Every column of the rows as read, by name (train split of file and hub data; None for the demo):
    # what design.units=column:<name> groups by.
    columns: dict[str, list] | None = None

    def __len__(self) -> int:
        return len(self.texts)


@dataclass
class TaskData:
    """Train, test and (optional) eval splits plus what the report needs to describe them."""

    train: Split
    test: Split
    task: str  # "classification" or "causal_lm"
    label_names: list[str] | None = None
    planted: list[dict] = field(default_factory=list)  # ground truth, demo data only
    eval: Split | None = None  # independent evaluation split for `dataspex curate`; None when not configured

    @property
    def n_train(self) -> int:
        return len(self.train)

    @property
    def n_test(self) -> int:
        return len(self.test)

    @property
    def n_eval(self) -> int:
        return 0 if self.eval is None else len(self.eval)

    def splits(self) -> list[tuple[str, Split]]:
        """(name, split) for train, test and, when configured, eval."""
        return [("train", self.train), ("test", self.test)] + ([("eval", self.eval)] if self.eval is not None else [])

    def content_hash(self) -> str:
        """SHA-256 over every train and test text, label and completion: the data part of a run's fingerprint.

        The eval split is not in it: no attribution result depends on it, so an eval split can be added to (or
        changed on) a finished study. It is part of the fingerprint of each ``dataspex curate`` study, whose
        targets it is (:meth:`eval_hash`), and of the recorded :meth:`summary`."""
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

    def eval_hash(self) -> str | None:
        """SHA-256 over the eval split's texts, labels and completions (None without an eval split)."""
        if self.eval is None:
            return None
        payload = {"texts": self.eval.texts, "completions": self.eval.completions,
                   "labels": None if self.eval.labels is None else self.eval.labels.tolist()}
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()

    def summary(self, config: dict | None = None) -> dict:
        """What the content hash covers, part by part, and the data config that made it: stored beside the hash
        in a run's fingerprint so that a mismatch can say what differs (see :func:`summary_differences`)."""
        parts = {}
        for name, split in self.splits():
            parts[f"{name} texts"] = _digest(split.texts)
            if split.labels is not None:
                parts[f"{name} labels"] = _digest(split.labels.tolist())
            if split.completions is not None:
                parts[f"{name} completions"] = _digest(split.completions)
        out = {"config": config, "task": self.task, "n_train": self.n_train, "n_test": self.n_test,
               "label_names": self.label_names, "hashes": parts}
        if self.eval is not None:
            out["n_eval"] = self.n_eval
        return out


def _digest(values) -> str:
    return hashlib.sha256(json.dumps(values).encode()).hexdigest()[:16]


def summary_text(summary: dict) -> str:
    """A :meth:`TaskData.summary` in a few words: rows, labels, and the data settings that made them."""
    config = summary.get("config") or {}
    settings = ", ".join(f"data.{k}={v}" for k, v in sorted(config.items()) if v is not None)
    labels = f", labels {summary['label_names']}" if summary.get("label_names") else ""
    evals = f", {summary['n_eval']} eval" if summary.get("n_eval") else ""
    return f"{summary.get('n_train')} train and {summary.get('n_test')} test rows{evals}{labels} ({settings})"


def summary_differences(stored: dict, now: dict) -> list[str]:
    """What differs between two :meth:`TaskData.summary` records, in words (data settings first)."""
    out = []
    old_cfg, new_cfg = stored.get("config") or {}, now.get("config") or {}
    for key in sorted(set(old_cfg) | set(new_cfg)):
        if old_cfg.get(key) != new_cfg.get(key):
            out.append(f"data.{key}: stored {old_cfg.get(key)!r}, now {new_cfg.get(key)!r}")
    for key, what in (("task", "task"), ("n_train", "train rows"), ("n_test", "test rows"),
                      ("n_eval", "eval rows"), ("label_names", "label names")):
        if stored.get(key) != now.get(key):
            out.append(f"{what}: stored {stored.get(key)!r}, now {now.get(key)!r}")
    old_hashes, new_hashes = stored.get("hashes") or {}, now.get("hashes") or {}
    parts = sorted(set(old_hashes) | set(new_hashes), key=lambda part: (not part.startswith("train"), part))
    changed = [part for part in parts if old_hashes.get(part) != new_hashes.get(part)]
    if changed:
        out.append(f"{', '.join(changed)} differ")
    return out


def hub_offline(for_datasets: bool = False) -> str | None:
    """The offline variable that is set (``"HF_HUB_OFFLINE=1"``), None if none is: then only the local
    Hugging Face cache is used. ``datasets`` also reads HF_DATASETS_OFFLINE, which overrides the others."""
    names = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    if for_datasets and os.environ.get("HF_DATASETS_OFFLINE", "").strip():
        names = ("HF_DATASETS_OFFLINE",)
    for var in names:
        if os.environ.get(var, "").strip().lower() in ("1", "true", "yes", "on"):
            return f"{var}={os.environ[var]}"
    return None


def hub_unreachable() -> str | None:
    """Why the Hugging Face hub cannot be reached (None when it answers): checked before a download, because
    huggingface_hub retries an unreachable hub for about a minute, per job, before it fails."""
    endpoint = os.environ.get("HF_ENDPOINT") or "https://huggingface.co"
    proxy = next((os.environ[v] for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")
                  if os.environ.get(v)), None)
    url = proxy or endpoint
    target = urllib.parse.urlsplit(url if "//" in url else f"http://{url}")
    port = target.port or (443 if target.scheme == "https" else 80)
    reason = _probe(target.hostname or "", port)
    return None if reason is None else f"{'the proxy ' if proxy else ''}{url} is unreachable ({reason})"


@functools.lru_cache(maxsize=None)
def _probe(host: str, port: int) -> str | None:
    """None if ``host:port`` accepts a TCP connection within a few seconds, else why not. A thread bounds
    the wait, name resolution included (which a socket timeout does not)."""
    outcome = []

    def connect():
        try:
            socket.create_connection((host, port), timeout=_HUB_PROBE_S).close()
            outcome.append(None)
        except OSError as exc:
            outcome.append(str(exc) or type(exc).__name__)

    thread = threading.Thread(target=connect, daemon=True)
    thread.start()
    thread.join(_HUB_PROBE_S + 1)
    return outcome[0] if outcome else f"no answer within {_HUB_PROBE_S:g} s"


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
    n_eval = int(cfg.get("n_eval") or 0)
    if n_eval < 0:
        raise DataspexError(f"data.n_eval={n_eval} must be 0 (no eval split) or more")
    demo = make_demo(n_train=cfg.n_train, n_harmful=cfg.n_harmful, n_redundant=cfg.n_redundant,
                     n_test_bulk=cfg.n_test_bulk, seed=cfg.seed, n_eval=n_eval)
    return TaskData(
        train=Split(demo.train_texts, demo.train_labels), test=Split(demo.test_texts, demo.test_labels),
        task="classification", label_names=demo.label_names, planted=demo.planted,
        eval=Split(demo.eval_texts, demo.eval_labels) if n_eval else None,
    )


def _load_with_datasets(cfg, task: str) -> TaskData:
    import datasets  # heavy (about 1 s): only file and hub data need it

    datasets.disable_progress_bars()
    if cfg.source == "files":
        encoding = cfg.get("encoding") or "utf-8"
        train_ds = _read_file(datasets, cfg.train_file, "train", encoding)
        test_ds = _read_file(datasets, cfg.test_file, "test", encoding)
        eval_ds = _read_file(datasets, cfg.eval_file, "eval", encoding) if cfg.get("eval_file") else None
    else:
        what = f"could not load data set {cfg.path!r} (splits {cfg.train_split!r}/{cfg.test_split!r})"
        offline = hub_offline(for_datasets=True)
        unreachable = None if offline or os.path.isdir(os.path.expanduser(str(cfg.path))) else hub_unreachable()
        if unreachable:
            raise DataspexError(f"{what}: the Hugging Face hub is needed and {unreachable}. If the data set is in "
                                "your local cache, set HF_HUB_OFFLINE=1 to use it; else download it where the "
                                "network is on and use data=files with local paths")
        try:
            train_ds = datasets.load_dataset(cfg.path, cfg.get("name"), split=cfg.train_split)
            test_ds = datasets.load_dataset(cfg.path, cfg.get("name"), split=cfg.test_split)
            eval_ds = (datasets.load_dataset(cfg.path, cfg.get("name"), split=cfg.eval_split)
                       if cfg.get("eval_split") else None)
        except Exception as exc:
            where = (f"; {offline} is set, so only the local cache is used and it has no copy" if offline else "")
            raise DataspexError(
                f"{what}: {exc}{where}. Check the name, or download it first (with the network on) and use "
                "data=files with local paths") from exc
    if task not in ("classification", "causal_lm"):
        raise DataspexError(f"model.task={task!r} is not one of: classification, causal_lm")
    columns = ([(cfg.text_column, "data.text_column"), (cfg.label_column, "data.label_column")]
               if task == "classification" else
               [(cfg.prompt_column, "data.prompt_column"), (cfg.completion_column, "data.completion_column")])
    train_ds = _complete_rows(train_ds, columns, cfg, "train", cfg.get("max_train"))
    test_ds = _complete_rows(test_ds, columns, cfg, "test", cfg.get("max_test"))
    if eval_ds is not None:
        eval_ds = _complete_rows(eval_ds, columns, cfg, "eval", cfg.get("max_eval"))

    if task == "classification":
        labels_by = _label_names(cfg, train_ds)
        data = TaskData(train=_classification_split(train_ds, cfg, labels_by, "train"),
                        test=_classification_split(test_ds, cfg, labels_by, "test"),
                        task=task, label_names=labels_by[0],
                        eval=None if eval_ds is None else _classification_split(eval_ds, cfg, labels_by, "eval"))
    else:
        data = TaskData(train=_lm_split(train_ds, cfg, "train"), test=_lm_split(test_ds, cfg, "test"), task=task,
                        eval=None if eval_ds is None else _lm_split(eval_ds, cfg, "eval"))
    data.train.columns = {str(c): list(train_ds[c]) for c in train_ds.column_names}
    return data


def _where(cfg, split: str) -> str:
    """The split's origin, as messages name it."""
    if cfg.source == "files":
        return f"{split} file {os.path.expanduser(str(cfg.get(f'{split}_file')))}"
    return f"{split} split {cfg.get(f'{split}_split')!r} of data set {cfg.get('path')!r}"


def _missing(value) -> bool:
    """None (an empty csv field, a JSON null), NaN, or a string of nothing but white space."""
    if value is None:
        return True
    if isinstance(value, float):
        return math.isnan(value)
    return isinstance(value, str) and not value.strip()


def _complete_rows(ds, columns, cfg, split: str, limit):
    """The split's first ``limit`` rows (all when unset), none missing a text or label.

    A missing value would otherwise train as the text "None" or become a label "None" of its own; it is an
    error naming the row, unless ``data.drop_missing=true``, which drops such rows (counted in a warning) and
    still takes ``limit`` complete rows."""
    drop = bool(cfg.get("drop_missing"))
    n = len(ds) if drop or not limit else min(int(limit), len(ds))
    missing = {}  # row -> the first of its columns that is missing
    for column, key in columns:
        for row, value in enumerate(_column(ds, column, key, split)[:n]):
            if _missing(value):
                missing.setdefault(row, column)
    if missing and not drop:
        row = min(missing)
        raise DataspexError(f"{_where(cfg, split)}, row {row}, column {missing[row]!r}: the value is missing or "
                            f"empty ({len(missing)} of its {n} rows miss a value; rows count from 0). Fill them "
                            "in, or set data.drop_missing=true to drop such rows")
    if missing:
        rows = sorted(missing)
        shown = ", ".join(map(str, rows[:10])) + (", ..." if len(rows) > 10 else "")
        log.warning("data: dropped %d of %d rows of the %s with a missing or empty %s (data.drop_missing=true): "
                    "rows %s", len(rows), n, _where(cfg, split), " or ".join(c for c, _ in columns), shown)
        ds = ds.select([row for row in range(n) if row not in missing])
    if limit:
        ds = ds.select(range(min(int(limit), len(ds))))
    return ds


def _read_file(datasets, path, split: str, encoding: str):
    """One split from a local .csv/.tsv/.json/.jsonl/.parquet file (text files decoded as ``encoding``)."""
    path = _existing(path, f"data.{split}_file")
    builder = _FILE_BUILDERS.get(os.path.splitext(path)[1].lower())
    if builder is None:
        raise DataspexError(f"data.{split}_file={path!r}: use a .csv, .tsv, .json, .jsonl or .parquet file")
    kwargs = {"delimiter": "\t"} if path.lower().endswith(".tsv") else {}
    if os.path.getsize(path) == 0:
        raise DataspexError(f"the {split} split is empty: {path} has no rows")
    if builder != "parquet":
        _check_decodes(path, encoding, split)
        kwargs["encoding"] = encoding
    try:
        return datasets.load_dataset(builder, data_files={split: path}, split=split, **kwargs)
    except Exception as exc:  # datasets raises many types for unreadable files
        cause = _root_cause(exc)
        detail = f"{exc}" if cause is exc else f"{exc}: {type(cause).__name__}: {cause}"
        raise DataspexError(f"could not read the {split} split from {path} (is it empty or malformed?): "
                            f"{detail}") from exc


def _check_decodes(path: str, encoding: str, split: str) -> None:
    """Refuse a text file that is not in ``encoding``, naming the line and the setting (datasets would report
    only "An error occurred while generating the dataset", with the cause in a log line above)."""
    try:
        decoder = codecs.getincrementaldecoder(encoding)()
    except LookupError as exc:
        raise DataspexError(f"data.encoding={encoding!r} is not an encoding Python knows: use e.g. utf-8, "
                            "utf-8-sig, latin-1 or cp1252") from exc
    line, offset, newline = 1, 0, b"\n"
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            try:
                decoder.decode(chunk)
            except UnicodeDecodeError as exc:
                at = max(exc.start, 0)
                where = f"byte {offset + at} (line {line + chunk.count(newline, 0, at)}) is {chunk[at:at + 1]!r}"
                raise DataspexError(
                    f"the {split} file {path} is not {encoding} text: {where} ({exc.reason}). Set data.encoding "
                    "to the file's encoding (e.g. data.encoding=latin-1 or cp1252), or re-save it as UTF-8") from exc
            line += chunk.count(newline)
            offset += len(chunk)
    try:
        decoder.decode(b"", final=True)
    except UnicodeDecodeError as exc:
        raise DataspexError(f"the {split} file {path} is not {encoding} text: it ends inside a character "
                            f"({exc.reason}). Set data.encoding to the file's encoding, or re-save it as UTF-8") from exc


def _root_cause(exc: BaseException) -> BaseException:
    """The innermost exception of a chain (datasets wraps the real error in DatasetGenerationError)."""
    seen = {id(exc)}
    while (exc.__cause__ or exc.__context__) is not None and id(exc.__cause__ or exc.__context__) not in seen:
        exc = exc.__cause__ or exc.__context__
        seen.add(id(exc))
    return exc


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
        bom = any(str(c).startswith("\ufeff") for c in ds.column_names)
        raise DataspexError(f"the {split} split has no column {column!r} (set by {key}); "
                            f"its columns are {ds.column_names}"
                            + ("; the file starts with a byte-order mark: set data.encoding=utf-8-sig" if bom else ""))
    return list(ds[column])


def _plain_labels(values: list) -> list:
    """Labels as the file wrote them: pandas reads an integer column with a gap as floats, so whole-number
    floats (all of them) are the integers they were (1.0 -> 1, named "1", not "1.0")."""
    if values and all(isinstance(v, (float, np.floating)) and float(v).is_integer() for v in values):
        return [int(v) for v in values]
    return values


def _label_names(cfg, train_ds) -> tuple[list[str], bool]:
    """The label set, and whether integer labels are indices into it (a ClassLabel feature) rather than labels
    of their own (matched by their string form first)."""
    if cfg.get("label_names"):
        return [str(x) for x in cfg.label_names], False
    feature = train_ds.features.get(cfg.label_column)
    if feature is not None and hasattr(feature, "names"):
        return list(feature.names), True
    values = _plain_labels(_column(train_ds, cfg.label_column, "data.label_column", "train"))
    return [str(v) for v in sorted(set(values), key=str)], False


def _classification_split(ds, cfg, labels_by: tuple[list[str], bool], split: str) -> Split:
    label_names, class_label = labels_by
    texts = [str(t) for t in _column(ds, cfg.text_column, "data.text_column", split)]
    raw = _plain_labels(_column(ds, cfg.label_column, "data.label_column", split))
    index = {name: k for k, name in enumerate(label_names)}
    labels = []
    for row, value in enumerate(raw):
        # A ClassLabel's integers index its names. Otherwise a label is matched by its string form, and an
        # integer that matches no name indexes label_names (integer labels with data.label_names=[neg, pos]).
        is_int = isinstance(value, (int, np.integer)) and not isinstance(value, bool)
        if class_label and is_int and 0 <= value < len(label_names):
            labels.append(int(value))
        elif str(value) in index:
            labels.append(index[str(value)])
        elif is_int and 0 <= value < len(label_names):
            labels.append(int(value))
        else:
            raise DataspexError(f"{split} row {row}: label {value!r} is not in the label set {label_names}; "
                                "fix the row or set data.label_names")
    return Split(texts, np.asarray(labels, dtype=np.int64))


def _lm_split(ds, cfg, split: str) -> Split:
    prompts = [str(t) for t in _column(ds, cfg.prompt_column, "data.prompt_column", split)]
    completions = [str(t) for t in _column(ds, cfg.completion_column, "data.completion_column", split)]
    return Split(prompts, completions=completions)


def validate(data: TaskData) -> None:
    """Refuse data no run can use, with a message that names the fix; warn when the eval split shares texts with
    the train or test split (an eval row seen in training is not independent evidence)."""
    for name, split in data.splits():
        if len(split) == 0:
            raise DataspexError(f"the {name} split is empty: check data.{name}_split / data.{name}_file")
    if data.eval is not None:
        seen = set(data.train.texts) | set(data.test.texts)
        shared = sum(text in seen for text in data.eval.texts)
        if shared:
            log.warning("data: %d of the %d eval rows have a text that is also in the train or test split; "
                        "curation results on the eval split are then not independent of them", shared, data.n_eval)
    if data.task == "classification":
        n_labels = len(data.label_names or [])
        if n_labels < 2:
            raise DataspexError(f"classification needs at least 2 labels, found {data.label_names}")
        for name, split in data.splits():
            bad = np.flatnonzero((split.labels < 0) | (split.labels >= n_labels))
            if bad.size:
                raise DataspexError(f"{name} row {bad[0]}: label {split.labels[bad[0]]} is outside the label set "
                                    f"{data.label_names}")
