"""What dataspex refuses about data, models and a run's fingerprint, through the real command: each case gets
one clear line that names the fix and exit code 2, never a traceback or a silent change of meaning, and no
stored result changes.

* data: a missing or empty text or label (or, with data.drop_missing=true, such rows dropped and counted), a
  file in another encoding than data.encoding;
* models: a hub name while the hub is out of reach fails in seconds (not after a minute of retries);
* the fingerprint: a run directory that lost its fingerprint.json gets it back only when the settings provably
  are the run's; a damaged one is named; a data mismatch says which data setting differs.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from dataspex.core.errors import DataspexError
from dataspex.core.files import load_npz, save_npz, write_json
from dataspex.design import Design
from dataspex.store import RunStore
from tests.conftest import TINY, run_cli
from tests.test_sweeps import JOB, fresh_copy, reference_run

GAPPY = ["good film,1", ",0", "bad film,", "ok film,1", "meh,0"]  # row 1 has no text, row 2 no label


def refused(*args, phrase: str) -> subprocess.CompletedProcess:
    proc = run_cli(*args, check=False)
    assert proc.returncode == 2, (args, proc.stderr[-2000:])
    assert phrase in proc.stderr, (args, proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr
    return proc


def snapshot(run_dir: str) -> dict:
    """Every stored file under the run directory with its size and modification time (without the invocation
    records: dataspex.log and Hydra's .hydra/)."""
    out = {}
    for root, _, files in os.walk(run_dir):
        for name in files:
            path = os.path.join(root, name)
            rel = os.path.relpath(path, run_dir)
            if not (rel == "dataspex.log" or rel.startswith(".hydra")):
                out[rel] = (os.path.getsize(path), os.stat(path).st_mtime_ns)
    return out


def _csv(path, rows, header="text,label") -> str:
    path.write_text(header + "\n" + "\n".join(rows) + "\n")
    return str(path)


def _files_args(tmp_path, train_rows, test_rows=("fine film,1", "poor film,0")) -> list[str]:
    return ["data=files", f"data.train_file={_csv(tmp_path / 'train.csv', train_rows)}",
            f"data.test_file={_csv(tmp_path / 'test.csv', list(test_rows))}", "design.m=6", "design.heldout=2",
            "progress=false"]


# ------------------------------------------------------------------------------------------ missing values

def test_a_missing_text_is_refused_naming_file_row_and_column(tmp_path):
    run_dir = str(tmp_path / "run")
    proc = refused("design", f"run_dir={run_dir}", *_files_args(tmp_path, GAPPY),
                   phrase=f"train file {tmp_path / 'train.csv'}, row 1, column 'text': the value is missing")
    assert "set data.drop_missing=true" in proc.stderr
    assert not os.path.exists(os.path.join(run_dir, "fingerprint.json"))
    assert not os.path.exists(os.path.join(run_dir, "design.npz"))


def test_a_missing_label_is_refused(tmp_path):
    refused("design", f"run_dir={tmp_path / 'run'}",
            *_files_args(tmp_path, ["good film,1", "bad film,", "ok film,0", "meh,1"]),
            phrase="row 1, column 'label': the value is missing or empty")


def test_drop_missing_drops_such_rows_and_counts_them(tmp_path):
    run_dir = str(tmp_path / "run")
    proc = run_cli("design", f"run_dir={run_dir}", *_files_args(tmp_path, GAPPY), "data.drop_missing=true")
    assert "dropped 2 of 5 rows of the train file" in proc.stderr and "rows 1, 2" in proc.stderr
    with open(os.path.join(run_dir, "fingerprint.json")) as fh:
        summary = json.load(fh)["data_summary"]
    # 3 rows left, and the labels are the file's own "0"/"1" (not "0.0"/"1.0", no class "None")
    assert summary["n_train"] == 3 and summary["label_names"] == ["0", "1"]


# ------------------------------------------------------------------------------------------------ encodings

def test_a_file_in_another_encoding_names_the_cause_and_the_setting(tmp_path):
    args = _files_args(tmp_path, ["good film,1", "bad film,0"])
    latin = tmp_path / "latin.csv"
    latin.write_bytes("text,label\ngood film,1\ncaf\u00e9 film,0\n".encode("latin-1"))
    args[1] = f"data.train_file={latin}"
    proc = refused("design", f"run_dir={tmp_path / 'run'}", *args,
                   phrase=f"the train file {latin} is not utf-8 text: byte 26 (line 3)")
    assert "Set data.encoding to the file's encoding" in proc.stderr
    assert "An error occurred while generating the dataset" not in proc.stderr
    run_cli("design", f"run_dir={tmp_path / 'run'}", *args, "data.encoding=latin-1")


# ------------------------------------------------------------------------------------------------- the hub

def _closed_port() -> int:
    """A local port nothing listens on: connecting is refused at once (no real host is ever tried)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _stage_seconds(stderr: str) -> int:
    """Seconds from the train stage's first log line to the error line (their [HH:MM:SS] stamps)."""
    def seconds(pattern):
        h, m, s = map(int, re.search(r"\[(\d\d):(\d\d):(\d\d)\] " + pattern, stderr).groups())
        return h * 3600 + m * 60 + s
    return (seconds("error:") - seconds("train:")) % 86400


HUB_MODEL = ["model=hub", "model.name_or_path=madeup-org/no-such-model", *TINY]


def test_a_hub_model_while_offline_fails_fast_and_names_the_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty cache (run_cli sets HF_HUB_OFFLINE=1)
    start = time.monotonic()
    proc = refused("run", f"run_dir={tmp_path / 'run'}", *HUB_MODEL,
                   phrase="could not load the tokenizer 'madeup-org/no-such-model': not a local folder, and not "
                          "in the local Hugging Face cache, the only place looked in while HF_HUB_OFFLINE=1 is set")
    assert "hf download madeup-org/no-such-model" in proc.stderr and "model.name_or_path" in proc.stderr
    assert time.monotonic() - start < 60 and _stage_seconds(proc.stderr) <= 5


def test_a_hub_model_with_the_hub_unreachable_fails_fast(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in (
        "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE", "HTTPS_PROXY", "https_proxy",
        "ALL_PROXY", "all_proxy")}
    env.update(HF_ENDPOINT=f"http://127.0.0.1:{_closed_port()}", HF_HOME=str(tmp_path / "hf"), HYDRA_FULL_ERROR="0")
    exe = os.path.join(os.path.dirname(sys.executable), "dataspex")
    start = time.monotonic()
    proc = subprocess.run([exe, "run", f"run_dir={tmp_path / 'run'}", *HUB_MODEL], env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert "the hub is out of reach" in proc.stderr and "is unreachable" in proc.stderr, proc.stderr[-2000:]
    assert "hf download madeup-org/no-such-model" in proc.stderr
    # huggingface_hub alone retries for about 50 s before it gives up
    assert time.monotonic() - start < 60 and _stage_seconds(proc.stderr) <= 5, proc.stderr[-2000:]


# ---------------------------------------------------------------------------------------------- fingerprint

def _make_older_run(run_dir: str) -> dict:
    """Turn a run into one made before data summaries and the fingerprint copy in design.npz existed: its
    fingerprint.json has only the data hash, and its result files carry that fingerprint's id."""
    store = RunStore(run_dir)
    with open(store.path("fingerprint.json")) as fh:
        older = json.load(fh)
    older.pop("data_summary")
    write_json(store.path("fingerprint.json"), older)
    stamp = store.fingerprint_id()
    for path in store.result_files():
        arrays, meta = load_npz(path)
        save_npz(path, arrays, dict(meta, fingerprint=stamp))
    arrays, meta = load_npz(store.path("design.npz"))
    meta.pop("fingerprint")
    save_npz(store.path("design.npz"), arrays, meta)
    return older


@pytest.mark.slow
def test_a_lost_fingerprint_is_not_replaced_by_other_settings(tmp_path_factory, tmp_path):
    run_dir = fresh_copy(reference_run(tmp_path_factory), tmp_path / "run", results=True)
    original = open(os.path.join(run_dir, "fingerprint.json")).read()
    os.unlink(os.path.join(run_dir, "fingerprint.json"))
    before = snapshot(run_dir)

    # once, `design lora.r=4` wrote a new fingerprint here and every result was then quarantined as foreign
    proc = refused("design", f"run_dir={run_dir}", "lora.r=4", *JOB,
                   phrase=f"{run_dir} has no fingerprint.json (deleted?), and these settings are not the run's")
    assert "lora.r: stored 8, now 4" in proc.stderr and f"`dataspex design run_dir={run_dir}` without" in proc.stderr
    refused("train", f"run_dir={run_dir}", *JOB,
            phrase="has no fingerprint.json (deleted?) but holds a design (design.npz) and ")
    assert snapshot(run_dir) == before  # nothing written, nothing quarantined

    # the recovery the message names: the run's own settings, checked against design.npz's copy
    proc = run_cli("design", f"run_dir={run_dir}", *JOB)
    assert "restored it from the copy in design.npz" in proc.stderr
    assert open(os.path.join(run_dir, "fingerprint.json")).read() == original
    status = run_cli("status", f"run_dir={run_dir}").stdout
    assert "REJECTED" not in status and "10      10" in status


@pytest.mark.slow
def test_a_lost_fingerprint_of_an_older_run_is_checked_against_its_results(tmp_path_factory, tmp_path):
    run_dir = fresh_copy(reference_run(tmp_path_factory), tmp_path / "run", results=True)
    older = _make_older_run(run_dir)
    os.unlink(os.path.join(run_dir, "fingerprint.json"))
    before = snapshot(run_dir)
    proc = refused("design", f"run_dir={run_dir}", "lora.r=4", *JOB, phrase="trained under fingerprint")
    assert "a new fingerprint would disown every result there" in proc.stderr
    assert snapshot(run_dir) == before

    proc = run_cli("design", f"run_dir={run_dir}", *JOB)
    assert "they reproduce the fingerprint the results were trained under" in proc.stderr
    with open(os.path.join(run_dir, "fingerprint.json")) as fh:
        assert json.load(fh) == older  # exactly the lost file: no data summary added
    status = run_cli("status", f"run_dir={run_dir}").stdout
    assert "REJECTED" not in status and "10      10" in status


@pytest.mark.slow
def test_an_older_run_still_opens_and_a_data_change_is_explained(tmp_path_factory, tmp_path):
    run_dir = fresh_copy(reference_run(tmp_path_factory), tmp_path / "run", results=True)
    _make_older_run(run_dir)
    assert "0 to train" in run_cli("train", f"run_dir={run_dir}", *JOB).stderr
    before = snapshot(run_dir)
    proc = refused("train", f"run_dir={run_dir}", "data.seed=3", *JOB, phrase="holds results for a different data")
    assert "data.seed=3" in proc.stderr and "the run predates data summaries" in proc.stderr
    assert snapshot(run_dir) == before


@pytest.mark.slow
def test_a_data_mismatch_says_which_data_setting_differs(tmp_path_factory, tmp_path):
    run_dir = fresh_copy(reference_run(tmp_path_factory), tmp_path / "run", results=True)
    before = snapshot(run_dir)
    proc = refused("train", f"run_dir={run_dir}", "data.seed=3", *JOB, phrase="holds results for a different data")
    assert "data.seed: stored 0, now 3" in proc.stderr and "train labels, train texts" in proc.stderr
    refused("fit", f"run_dir={run_dir}", "data.n_train=12", *JOB,
            phrase="data.n_train: stored 10, now 12; train rows: stored 10, now 12")
    assert snapshot(run_dir) == before


@pytest.mark.slow
@pytest.mark.parametrize("damage", [b'{"data": "99', b"\xff\xfe not json", b"[1, 2]"])
def test_a_damaged_fingerprint_is_named(tmp_path_factory, tmp_path, damage):
    run_dir = fresh_copy(reference_run(tmp_path_factory), tmp_path / "run", results=True)
    with open(os.path.join(run_dir, "fingerprint.json"), "wb") as fh:
        fh.write(damage)
    before = snapshot(run_dir)
    for stage in ("train", "design", "status", "collect"):
        proc = refused(stage, f"run_dir={run_dir}", *JOB, phrase=f"{run_dir}/fingerprint.json is ")
        assert "restore it from a backup" in proc.stderr
    assert snapshot(run_dir) == before


def test_the_store_restores_only_a_fingerprint_its_results_prove(tmp_path):
    """The same rule on the store itself, for a run whose design.npz keeps no copy (made before it did)."""
    store = RunStore(str(tmp_path / "run"))
    masks = np.eye(4, dtype=np.uint8)
    store.save_design(Design(masks, np.arange(4), ["fit"] * 4, {"kind": "random"}))  # no fingerprint yet: no copy
    with pytest.warns(UserWarning, match="design.npz keeps no copy of the old one, and nothing was trained"):
        store.check_fingerprint({"model": "a", "data": "x"}, create=True)  # nothing trained: written afresh
    store.write_results([0, 1], masks[:2], np.zeros((2, 3)), np.zeros((2, 3)))
    stamp = store.fingerprint_id()
    os.unlink(store.path("fingerprint.json"))

    with pytest.raises(DataspexError, match="trained under fingerprint"):
        store.check_fingerprint({"model": "b", "data": "x"}, create=True)
    with pytest.raises(DataspexError, match="has no fingerprint.json .* but holds a design"):
        store.check_fingerprint({"model": "a", "data": "x"}, create=False)
    assert not os.path.exists(store.path("fingerprint.json"))
    # the run's settings, now with a data summary: the older fingerprint (without one) is what comes back
    with pytest.warns(UserWarning, match="they reproduce the fingerprint"):
        store.check_fingerprint({"model": "a", "data": "x", "data_summary": {"n_train": 4}}, create=True)
    assert store.fingerprint_id() == stamp and len(store.load_results()) == 2
