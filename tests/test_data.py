import numpy as np
import pytest
from omegaconf import OmegaConf

from dataspex.core.data import load_data
from dataspex.core.demo import make_demo
from dataspex.core.errors import DataspexError

FILES = dict(source="files", train_file=None, test_file=None, text_column="text", label_column="label",
             prompt_column="prompt", completion_column="completion", label_names=None, max_train=None,
             max_test=None)


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
