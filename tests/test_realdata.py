"""benchmarks/realdata.py: real text splits from Debian's fortunes and wordnet-base packages (installed by
.ci/run), and a tiny slice of them through the loader and the batched engine."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from tests.benchmark_scripts import load_benchmark

realdata = load_benchmark("realdata")

pytestmark = pytest.mark.skipif(
    not (os.path.isdir(realdata.FORTUNES_DIR) and os.path.exists(realdata.WORDNET_NOUNS)),
    reason="Debian's fortunes and wordnet-base are not installed (apt-get install fortunes wordnet-base); "
           "runs in CI")


def word_edits(a: str, b: str) -> int:
    """Words to insert or delete to turn ``a`` into ``b`` (no substitutions), by dynamic programming."""
    x, y = a.split(" "), b.split(" ")
    prev = list(range(len(y) + 1))
    for i in range(1, len(x) + 1):
        cur = [i] + [0] * len(y)
        for j in range(1, len(y) + 1):
            cur[j] = prev[j - 1] if x[i - 1] == y[j - 1] else 1 + min(prev[j], cur[j - 1])
        prev = cur
    return prev[-1]


def test_fortunes_are_the_files_own_texts():
    rows = realdata.read_fortunes(["science"])
    with open(os.path.join(realdata.FORTUNES_DIR, "science"), encoding="utf-8", errors="replace") as fh:
        raw = fh.read()
    chunks = {" ".join(c.split()) for c in raw.split("\n%\n")}
    assert 500 < len(rows) <= raw.count("\n%\n") + 1
    assert all(text in chunks and label == "science" for text, label in rows)
    assert len({t for t, _ in rows}) == len(rows)  # no repeats


def test_wordnet_glosses_carry_their_lexicographer_class():
    animals = dict(realdata.read_wordnet(["noun.animal", "noun.food"]))
    dog = [t for t in animals if t.startswith("a member of the genus Canis (probably descended from the common wolf)")]
    assert len(dog) == 1 and animals[dog[0]] == "noun.animal"
    assert set(animals.values()) == {"noun.animal", "noun.food"}
    with pytest.raises(ValueError, match="unknown WordNet noun classes"):
        realdata.read_wordnet(["noun.dinosaur"])


@pytest.mark.parametrize("source", realdata.SOURCES)
def test_splits_are_fixed_disjoint_and_planted_as_stated(source):
    splits = realdata.build(source, n_train=40, n_test=12, n_eval=20, seed=3, harmful=2, redundant=2)
    again = realdata.build(source, n_train=40, n_test=12, n_eval=20, seed=3, harmful=2, redundant=2)
    other = realdata.build(source, n_train=40, n_test=12, n_eval=20, seed=4, harmful=2, redundant=2)
    assert splits["train"] == again["train"] and splits["test"] == again["test"] and splits["eval"] == again["eval"]
    assert splits["train"] != other["train"]
    assert [len(splits[s]) for s in ("train", "test", "eval")] == [40, 12, 20]
    texts = {s: {t for t, _ in splits[s]} for s in ("train", "test", "eval")}
    assert not texts["train"] & texts["eval"] and not texts["test"] & texts["eval"]
    assert not texts["train"] & texts["test"]

    rare = realdata.DEFAULT_RARE[source]
    planted = splits["planted"]
    assert sorted(p["kind"] for p in planted) == ["harmful"] * 2 + ["redundant"] * 2
    for p in planted:
        (first, label_i), (second, label_j) = splits["train"][p["i"]], splits["train"][p["j"]]
        target, true_label = splits["test"][p["test"]]
        assert p["i"] < p["j"] and label_i == label_j
        assert word_edits(first, target) <= 1 and word_edits(second, target) == 1 and first != second
        if p["kind"] == "harmful":
            assert label_i != true_label and label_i in realdata.DEFAULT_CLASSES[source]
        else:
            assert label_i == true_label == rare
    # the rare class is taught by the redundant copies alone
    rare_rows = sorted(i for i, (_, label) in enumerate(splits["train"]) if label == rare)
    assert rare_rows == sorted(i for p in planted if p["kind"] == "redundant" for i in (p["i"], p["j"]))
    assert rare not in {label for _, label in splits["eval"]}


def test_flipped_labels_change_only_the_flipped_bulk_rows():
    plain = realdata.build("fortunes", n_train=40, n_test=12, n_eval=20, seed=3, harmful=2)
    flipped = realdata.build("fortunes", n_train=40, n_test=12, n_eval=20, seed=3, harmful=2, flip=0.25)
    assert plain["flipped"] == [] and flipped["test"] == plain["test"] and flipped["eval"] == plain["eval"]
    assert flipped["planted"] == plain["planted"]
    rows = [f["i"] for f in flipped["flipped"]]
    assert len(rows) == round(0.25 * 36) == 9 and rows == sorted(set(rows))
    assert not set(rows) & {x for p in plain["planted"] for x in (p["i"], p["j"])}
    for k, ((text, label), (text0, label0)) in enumerate(zip(flipped["train"], plain["train"])):
        assert text == text0 and (label != label0) == (k in rows)
    for f in flipped["flipped"]:
        assert plain["train"][f["i"]][1] == f["label"] and flipped["train"][f["i"]][1] == f["new_label"]
    with pytest.raises(ValueError, match=r"flip=1.0 must be in \[0, 1\)"):
        realdata.build("fortunes", n_train=40, flip=1.0)


def test_halves_pairs_cut_an_unused_test_text_in_two_with_one_wrong_label():
    splits = realdata.build("fortunes", n_train=40, n_test=12, n_eval=20, seed=3, harmful=1, halves=2)
    halves = [p for p in splits["planted"] if p.get("plant") == "halves"]
    assert len(halves) == 2 and all(p["kind"] == "harmful" for p in halves)
    assert [p for p in splits["planted"] if "plant" not in p][0]["kind"] == "harmful"
    for p in halves:
        (first, label_i), (second, label_j) = splits["train"][p["i"]], splits["train"][p["j"]]
        whole, true_label = splits["test"][p["test"]]
        assert len(whole.split()) >= 8 and {first + " " + second, second + " " + first} & {whole}
        assert label_i == label_j != true_label
    texts = {t for s in ("train", "test", "eval") for t, _ in splits[s]}
    assert len(texts) == 40 + 12 + 20  # nothing drawn twice


def test_anchored_harmful_pairs_get_a_correct_near_copy_beside_the_wrong_two():
    plain = realdata.build("fortunes", n_train=40, n_test=12, n_eval=20, seed=3, harmful=2, flip=0.1)
    splits = realdata.build("fortunes", n_train=40, n_test=12, n_eval=20, seed=3, harmful=2, flip=0.1,
                            anchored=True)
    assert len(splits["train"]) == 40 and len(splits["planted"]) == 2
    flipped = {f["i"] for f in splits["flipped"]}
    for p in splits["planted"]:
        whole, true_label = splits["test"][p["test"]]
        (copy_i, label_i), (copy_j, label_j) = splits["train"][p["i"]], splits["train"][p["j"]]
        anchor, anchor_label = splits["train"][p["anchor"]]
        assert label_i == label_j != true_label and anchor_label == true_label
        assert len({whole, copy_i, copy_j, anchor}) == 4  # three different near-copies of the test text
        assert p["anchor"] not in flipped  # flips never touch a plant
    assert len(plain["train"]) == 40 and all("anchor" not in p for p in plain["planted"])


def test_eval_planted_holds_near_copies_of_the_planted_test_texts_at_the_test_rate():
    kw = dict(n_train=40, n_test=12, n_eval=30, seed=3, harmful=2, redundant=1, flip=0.1)
    plain = realdata.build("fortunes", **kw)
    splits = realdata.build("fortunes", eval_planted=True, **kw)
    assert splits["train"] == plain["train"] and splits["test"] == plain["test"]  # only eval changes
    assert splits["flipped"] == plain["flipped"] and all("eval" not in p for p in plain["planted"])
    per_target = round(30 / 12)  # n_eval / n_test = 2.5 -> 2 copies per planted test text
    copies = []
    for p in splits["planted"]:
        whole, true_label = splits["test"][p["test"]]
        assert len(p["eval"]) == per_target
        rows = [splits["eval"][k] for k in p["eval"]]
        assert all(label == true_label for _, label in rows)
        assert all(text != whole and word_edits(text, whole) == 1 for text, _ in rows)  # one word dropped or added
        assert len({text for text, _ in rows}) == per_target
        copies += p["eval"]
    assert sorted(copies) == list(range(3 * per_target))  # the copies come first, then the plain eval's bulk rows
    assert len(splits["eval"]) == 30 and splits["eval"][len(copies):] == plain["eval"][:30 - len(copies)]
    assert splits["info"]["eval_planted"] and not plain["info"]["eval_planted"]


def test_too_large_a_split_is_refused_with_the_pool_size():
    with pytest.raises(ValueError, match=r"fortunes has \d+ texts of 40-400 characters"):
        realdata.build("fortunes", n_train=100_000)
    with pytest.raises(ValueError, match="must not be one of the classes"):
        realdata.build("fortunes", n_train=20, redundant=1, rare="science")


def test_written_files_load_back_through_dataspex(tmp_path):
    from dataspex.core.data import load_data

    splits = realdata.build("wordnet", n_train=24, n_test=6, n_eval=6, seed=0, harmful=1)
    manifest = realdata.write(splits, str(tmp_path))
    with open(tmp_path / "eval.csv", newline="", encoding="utf-8") as fh:
        assert [(r["text"], r["label"]) for r in csv.DictReader(fh)] == splits["eval"]
    assert manifest["command"].startswith("dataspex run data=files")
    assert manifest["planted"] == splits["planted"] and manifest["sizes"] == {"train": 24, "test": 6, "eval": 6}
    cfg = OmegaConf.load(Path(__file__).resolve().parents[1] / "conf" / "data" / "files.yaml")
    cfg.train_file, cfg.test_file = str(tmp_path / "train.csv"), str(tmp_path / "test.csv")
    data = load_data(cfg, "classification")
    assert data.train.texts == [t for t, _ in splits["train"]]
    assert [data.label_names[k] for k in data.train.labels] == [label for _, label in splits["train"]]


def test_batched_engine_matches_naive_on_real_texts():
    """Ragged real texts (up to 64 tokens) through the default engine path (top layer, cached q/k/v): the
    same test losses as the naive loop."""
    from dataspex.core.data import Split
    from dataspex.core.models import load_base_model, load_tokenizer
    from dataspex.train import engine, naive
    from dataspex.train.common import encode

    splits = realdata.build("fortunes", n_train=14, n_test=4, n_eval=0, seed=1, max_chars=300)
    names = sorted({label for _, label in splits["train"] + splits["test"]})

    def split(rows):
        return Split([t for t, _ in rows], np.array([names.index(label) for _, label in rows]))

    model_cfg = OmegaConf.create({"name_or_path": "bundled:all-minilm-l6-v2", "task": "classification"})
    tokenizer = load_tokenizer(model_cfg)
    train = encode(split(splits["train"]), tokenizer, "classification", 64)
    test = encode(split(splits["test"]), tokenizer, "classification", 64)
    assert max(len(s) for s in train.input_ids) > 2 * min(len(s) for s in train.input_ids)  # ragged
    base = load_base_model(model_cfg, len(names), 0)
    lora = OmegaConf.create({"r": 8, "alpha": 16, "dropout": 0.0, "target_modules": ["query", "value"],
                             "layers": "top:1", "train_head": True})
    cfg = OmegaConf.create({"epochs": 2, "batch_size": 4, "lr": 5e-3, "weight_decay": 0.0, "seed": 0,
                            "seed_policy": "per_mask", "adapters_per_pass": "auto", "prefix_cache": "auto",
                            "device": "cpu", "precision": "fp32"})
    masks = (np.random.default_rng(0).random((3, 14)) < 0.6).astype(np.uint8)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        engine._ENGINE_CACHE.clear()
        batched = {m: loss for m, loss, *_ in engine.train_masks(base, lora, cfg, train, test, masks, [0, 1, 2])}
        reference = {m: loss for m, loss, *_ in naive.train_masks(base, lora, cfg, train, test, masks, [0, 1, 2])}
    finally:
        torch.set_num_threads(before)
    for m, loss in reference.items():
        np.testing.assert_allclose(batched[m], loss, rtol=0, atol=1e-4)
    assert not np.allclose(reference[0], reference[1])
