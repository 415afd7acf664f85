import logging
import socket
import time

import numpy as np
import pytest
from omegaconf import OmegaConf

from dataspex.core.data import load_data, summary_differences
from dataspex.core.demo import make_demo
from dataspex.core.errors import DataspexError

FILES = dict(source="files", train_file=None, test_file=None, text_column="text", label_column="label",
             prompt_column="prompt", completion_column="completion", label_names=None, max_train=None,
             max_test=None, encoding="utf-8", drop_missing=False)


def test_demo_is_deterministic_and_plants_what_it_says():
    a, b = make_demo(seed=3), make_demo(seed=3)
    assert a.train_texts == b.train_texts and np.array_equal(a.train_labels, b.train_labels)
    assert len(a.train_texts) == 64 and len(a.test_texts) == 16
    assert len(set(a.train_texts)) == 64  # no accidental duplicates
    kinds = [p["kind"] for p in a.planted]
    assert kinds.count("harmful") == 4 and kinds.count("redundant") == 4
    for p in a.planted:
        target_label = a.test_labels[p["test"]]
        pair_labels = a.train_labels[[p["i"], p["j"]]]
        # harmful copies carry the wrong label, redundant copies the right one
        expected = 1 - target_label if p["kind"] == "harmful" else target_label
        assert (pair_labels == expected).all() and p["i"] < p["j"]
        # the pair members are near-copies of their test sentence: they share its last word
        last = a.test_texts[p["test"]].split()[-1]
        assert a.train_texts[p["i"]].endswith(last) and a.train_texts[p["j"]].endswith(last)
    assert make_demo(seed=4).train_texts != a.train_texts


def test_demo_rejects_impossible_sizes():
    with pytest.raises(ValueError, match="no room"):
        make_demo(n_train=16, n_harmful=4, n_redundant=4)


def _write_csv(path, rows, header="text,label"):
    path.write_text(header + "\n" + "\n".join(rows) + "\n")
    return str(path)


def test_files_load_with_string_labels(tmp_path):
    cfg = OmegaConf.create(dict(FILES, train_file=_write_csv(tmp_path / "tr.csv", ["good film,pos", "bad film,neg"]),
                                test_file=_write_csv(tmp_path / "te.csv", ["fine film,pos"])))
    data = load_data(cfg, "classification")
    assert data.label_names == ["neg", "pos"]
    assert data.train.labels.tolist() == [1, 0] and data.test.labels.tolist() == [1]


@pytest.mark.parametrize("rows, header, message", [
    (["good film,pos"], "sentence,label", "no column 'text'"),
    ([], "text,label", "the train split"),
])
def test_files_bad_input(tmp_path, rows, header, message):
    cfg = OmegaConf.create(dict(FILES, train_file=_write_csv(tmp_path / "tr.csv", rows, header),
                                test_file=_write_csv(tmp_path / "te.csv", ["fine film,pos"], header)))
    with pytest.raises(DataspexError, match=message):
        load_data(cfg, "classification")


def test_label_outside_label_set(tmp_path):
    cfg = OmegaConf.create(dict(FILES, label_names=["neg", "pos"],
                                train_file=_write_csv(tmp_path / "tr.csv", ["good film,pos", "odd film,meh"]),
                                test_file=_write_csv(tmp_path / "te.csv", ["fine film,pos"])))
    with pytest.raises(DataspexError, match=r"train row 1: label 'meh' is not in the label set"):
        load_data(cfg, "classification")


def test_missing_file_names_the_key(tmp_path):
    cfg = OmegaConf.create(dict(FILES, train_file=str(tmp_path / "nope.csv"), test_file=str(tmp_path / "nope.csv")))
    with pytest.raises(DataspexError, match="data.train_file=.*does not exist"):
        load_data(cfg, "classification")


def test_causal_lm_columns(tmp_path):
    header = "prompt,completion"
    cfg = OmegaConf.create(dict(FILES, train_file=_write_csv(tmp_path / "tr.csv", ["2+2=,4", "3+3=,6"], header),
                                test_file=_write_csv(tmp_path / "te.csv", ["1+1=,2"], header)))
    data = load_data(cfg, "causal_lm")
    assert data.train.completions == ["4", "6"] and data.test.texts == ["1+1="]


# ------------------------------------------------------------------ missing values, labels as the file has them

GAPPY = ["good film,1", ",0", "bad film,", "ok film,1", "meh,0"]  # row 1 has no text, row 2 no label


def _files(tmp_path, train_rows, test_rows=("fine film,1", "poor film,0"), **settings):
    return OmegaConf.create(dict(FILES, train_file=_write_csv(tmp_path / "tr.csv", list(train_rows)),
                                 test_file=_write_csv(tmp_path / "te.csv", list(test_rows)), **settings))


@pytest.mark.parametrize("rows, row, column", [
    (GAPPY, 1, "text"),                                     # was trained on as the text "None"
    (["good film,1", "bad film,", "ok film,0"], 1, "label"),  # was a third class "None"
    (["good film,1", "   ,0", "ok film,0"], 1, "text"),      # white space only
])
def test_missing_text_or_label_names_file_row_and_column(tmp_path, rows, row, column):
    cfg = _files(tmp_path, rows)
    with pytest.raises(DataspexError) as err:
        load_data(cfg, "classification")
    message = str(err.value)
    assert f"train file {tmp_path / 'tr.csv'}, row {row}, column {column!r}" in message
    assert "data.drop_missing=true" in message


def test_missing_value_in_the_test_split_is_refused_too(tmp_path):
    cfg = _files(tmp_path, ["good film,1", "bad film,0"], test_rows=["fine film,1", ",0"])
    with pytest.raises(DataspexError, match=r"test file .*te\.csv, row 1, column 'text'"):
        load_data(cfg, "classification")


def test_drop_missing_drops_such_rows_with_a_count(tmp_path, caplog):
    cfg = _files(tmp_path, GAPPY, drop_missing=True)
    with caplog.at_level(logging.WARNING, logger="dataspex"):
        data = load_data(cfg, "classification")
    assert data.train.texts == ["good film", "ok film", "meh"]
    # the label column had a gap, so pandas read it as floats: the labels are still the file's "0" and "1"
    assert data.label_names == ["0", "1"] and data.train.labels.tolist() == [1, 1, 0]
    assert data.test.labels.tolist() == [1, 0]
    assert "dropped 2 of 5 rows of the train file" in caplog.text and "rows 1, 2" in caplog.text


def test_drop_missing_still_takes_max_train_complete_rows(tmp_path):
    data = load_data(_files(tmp_path, GAPPY, drop_missing=True, max_train=3), "classification")
    assert data.train.texts == ["good film", "ok film", "meh"]
    # without dropping, only the rows max_train keeps are checked
    assert load_data(_files(tmp_path, ["a,1", "b,0", ",1"], max_train=2), "classification").n_train == 2


def test_integer_labels_keep_their_own_values(tmp_path):
    data = load_data(_files(tmp_path, ["good film,1", "bad film,0"]), "classification")
    assert data.label_names == ["0", "1"] and data.train.labels.tolist() == [1, 0]
    # labels 1 and 2 (no 0) are two classes, "1" and "2" (they were both mapped to "2")
    data = load_data(_files(tmp_path, ["good film,2", "bad film,1"], test_rows=["fine film,2", "poor film,1"]),
                     "classification")
    assert data.label_names == ["1", "2"]
    assert data.train.labels.tolist() == [1, 0] and data.test.labels.tolist() == [1, 0]
    # integer labels still index label names that the user sets
    data = load_data(_files(tmp_path, ["good film,1", "bad film,0"], label_names=["neg", "pos"]), "classification")
    assert data.label_names == ["neg", "pos"] and data.train.labels.tolist() == [1, 0]


def test_real_float_labels_stay_floats(tmp_path):
    data = load_data(_files(tmp_path, ["a,0.5", "b,1.0"], test_rows=["c,0.5"]), "classification")
    assert data.label_names == ["0.5", "1.0"] and data.train.labels.tolist() == [0, 1]


# ------------------------------------------------------------------------------------------------ encodings

def _latin1(tmp_path):
    path = tmp_path / "tr.csv"
    path.write_bytes("text,label\ngood film,pos\ncaf\u00e9 film,neg\n".encode("latin-1"))
    return str(path)


def test_a_file_in_another_encoding_names_the_byte_and_the_setting(tmp_path):
    cfg = OmegaConf.create(dict(FILES, train_file=_latin1(tmp_path),
                                test_file=_write_csv(tmp_path / "te.csv", ["fine film,pos"])))
    with pytest.raises(DataspexError) as err:
        load_data(cfg, "classification")
    message = str(err.value)
    assert "is not utf-8 text" in message and "(line 3)" in message and "b'\\xe9'" in message
    assert "data.encoding" in message
    cfg.encoding = "latin-1"
    assert load_data(cfg, "classification").train.texts == ["good film", "caf\u00e9 film"]


def test_unknown_encoding(tmp_path):
    cfg = _files(tmp_path, ["good film,1", "bad film,0"], encoding="no-such-codec")
    with pytest.raises(DataspexError, match="data.encoding='no-such-codec' is not an encoding"):
        load_data(cfg, "classification")


# --------------------------------------------------------------------------------------------- data summaries

def test_summary_differences_name_what_differs(tmp_path):
    (tmp_path / "a").mkdir()
    a = load_data(_files(tmp_path / "a", ["good film,1", "bad film,0"]), "classification")
    config = dict(FILES, train_file="tr.csv")
    before = a.summary(config)
    assert summary_differences(before, a.summary(config)) == []
    b = load_data(_files(tmp_path, ["good film,1", "bad film,0", "odd film,1"]), "classification")
    said = summary_differences(before, b.summary(dict(config, train_file="other.csv")))
    assert said == ["data.train_file: stored 'tr.csv', now 'other.csv'", "train rows: stored 2, now 3",
                    "train labels, train texts differ"]


# ------------------------------------------------------------------------------------------------ the hub

def _closed_port() -> int:
    """A local port nothing listens on (connecting is refused at once)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_hub_data_set_with_the_hub_unreachable_fails_fast(monkeypatch, tmp_path):
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE", "HTTPS_PROXY", "https_proxy",
                "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{_closed_port()}")  # local: no real host is tried
    cfg = OmegaConf.create(dict(source="hub", path="madeup-org/no-such-data", name=None, train_split="train",
                                test_split="test", text_column="text", label_column="label", label_names=None,
                                max_train=None, max_test=None, drop_missing=False))
    start = time.monotonic()
    with pytest.raises(DataspexError, match="unreachable.*set HF_HUB_OFFLINE=1"):
        load_data(cfg, "classification")
    assert time.monotonic() - start < 10  # huggingface_hub alone retries for about 30 s


# ------------------------------------------------------------------------------------------- the eval split

def test_demo_eval_split_leaves_train_and_test_as_they_were():
    plain, with_eval = make_demo(seed=2), make_demo(seed=2, n_eval=20)
    assert with_eval.train_texts == plain.train_texts and with_eval.test_texts == plain.test_texts
    assert np.array_equal(with_eval.train_labels, plain.train_labels) and plain.eval_texts == []
    assert len(with_eval.eval_texts) == 20 == len(with_eval.eval_labels)
    assert not set(with_eval.eval_texts) & set(plain.train_texts + plain.test_texts)
    # the first eval rows restate the planted test sentences, with the test sentence's label
    for p in with_eval.planted:
        t = p["test"]
        assert with_eval.eval_texts[t] == f"i found that {plain.test_texts[t]}"
        assert with_eval.eval_labels[t] == plain.test_labels[t]


def test_eval_file_loads_and_stays_out_of_the_runs_content_hash(tmp_path):
    tr = _write_csv(tmp_path / "tr.csv", ["good film,pos", "bad film,neg"])
    te = _write_csv(tmp_path / "te.csv", ["fine film,pos"])
    ev = _write_csv(tmp_path / "ev.csv", ["awful film,neg", "lovely film,pos", "dull film,neg"])
    without = load_data(OmegaConf.create(dict(FILES, train_file=tr, test_file=te)), "classification")
    with_eval = load_data(OmegaConf.create(dict(FILES, train_file=tr, test_file=te, eval_file=ev)), "classification")
    assert without.eval is None and without.n_eval == 0
    assert with_eval.eval.texts == ["awful film", "lovely film", "dull film"]
    assert with_eval.eval.labels.tolist() == [0, 1, 0] and with_eval.n_eval == 3
    # no attribution result depends on the eval split: a finished study can gain one
    assert without.content_hash() == with_eval.content_hash() and without.eval_hash() is None
    assert "n_eval" not in without.summary() and with_eval.summary()["n_eval"] == 3
    assert summary_differences(without.summary(), with_eval.summary()) == ["eval rows: stored None, now 3",
                                                                          "eval labels, eval texts differ"]
    other = _write_csv(tmp_path / "ev2.csv", ["awful film,neg", "lovely film,pos", "dull film,pos"])
    changed = load_data(OmegaConf.create(dict(FILES, train_file=tr, test_file=te, eval_file=other)), "classification")
    assert changed.eval_hash() != with_eval.eval_hash() and changed.content_hash() == with_eval.content_hash()


def test_eval_file_refusals_name_the_eval_setting(tmp_path):
    tr = _write_csv(tmp_path / "tr.csv", ["good film,pos", "bad film,neg"])
    te = _write_csv(tmp_path / "te.csv", ["fine film,pos"])
    cfg = OmegaConf.create(dict(FILES, train_file=tr, test_file=te, eval_file=str(tmp_path / "nope.csv")))
    with pytest.raises(DataspexError, match=r"data.eval_file=.*nope.csv' does not exist"):
        load_data(cfg, "classification")
    cfg.eval_file = _write_csv(tmp_path / "ev.csv", ["odd film,meh"])
    with pytest.raises(DataspexError, match=r"eval row 0: label 'meh' is not in the label set \['neg', 'pos'\]"):
        load_data(cfg, "classification")


def test_eval_rows_seen_in_training_are_counted_in_a_warning(tmp_path, caplog):
    tr = _write_csv(tmp_path / "tr.csv", ["good film,pos", "bad film,neg"])
    te = _write_csv(tmp_path / "te.csv", ["fine film,pos"])
    ev = _write_csv(tmp_path / "ev.csv", ["good film,pos", "fine film,pos", "new film,neg"])
    with caplog.at_level(logging.WARNING, logger="dataspex"):
        load_data(OmegaConf.create(dict(FILES, train_file=tr, test_file=te, eval_file=ev)), "classification")
    assert "2 of the 3 eval rows have a text that is also in the train or test split" in caplog.text
