"""Self-describing files written atomically: NumPy archives with a JSON header and a checksum.

Every write goes to a temporary file in the target's directory, is flushed and fsync'ed, then renamed over
the target, so a reader sees the old file or the new one, never half of one. Archives are read with
``allow_pickle=False``: no file dataspex reads can run code.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile

import numpy as np

from dataspex.core.errors import DataspexError

_META_KEY = "__meta__"
_UMASK = os.umask(0)
os.umask(_UMASK)


def atomic_write_bytes(path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temp file + fsync + rename, then fsync the directory)."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=directory)
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; give them the usual permissions
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def atomic_write_text(path: str, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def write_json(path: str, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")


def write_table(frame, directory: str, name: str) -> tuple[str, str]:
    """Write a pandas DataFrame as ``<directory>/<name>.csv`` and ``<name>.parquet``, each atomically; returns
    both paths."""
    csv, parquet = os.path.join(directory, f"{name}.csv"), os.path.join(directory, f"{name}.parquet")
    atomic_write_text(csv, frame.to_csv(index=False))
    atomic_write_bytes(parquet, frame.to_parquet(index=False))
    return csv, parquet


def read_json(path: str):
    with open(path) as fh:
        return json.load(fh)


def arrays_checksum(arrays: dict[str, np.ndarray]) -> str:
    """SHA-256 over the names, dtypes, shapes and bytes of ``arrays`` (in name order)."""
    h = hashlib.sha256()
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        h.update(f"{name}|{a.dtype.str}|{a.shape}|".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def save_npz(path: str, arrays: dict[str, np.ndarray], meta: dict) -> None:
    """Atomically save ``arrays`` with ``meta`` (a JSON-able dict) and a checksum of the arrays."""
    meta = dict(meta, checksum=arrays_checksum(arrays))
    payload = dict(arrays)
    payload[_META_KEY] = np.array(json.dumps(meta, sort_keys=True, default=_json_default))
    buffer = io.BytesIO()
    np.savez(buffer, **payload)
    atomic_write_bytes(path, buffer.getvalue())


def load_npz(path: str) -> tuple[dict[str, np.ndarray], dict]:
    """Load and verify a file written by :func:`save_npz`; raises DataspexError if it is damaged."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {k: archive[k] for k in archive.files if k != _META_KEY}
            meta = json.loads(str(archive[_META_KEY]))
    except FileNotFoundError:
        raise
    except Exception as exc:  # zipfile/json/numpy errors all mean the same thing here
        raise DataspexError(f"{path} is unreadable (truncated or corrupted): {exc}") from exc
    expected = meta.pop("checksum", None)
    if expected != arrays_checksum(arrays):
        raise DataspexError(f"{path} fails its checksum (corrupted)")
    return arrays, meta


def _json_default(obj):
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, tuple):
        return list(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")
