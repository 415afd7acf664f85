"""Units (``design.units``): masks over groups of training examples, from a data column or from K-means on the base
model's embeddings; a mask keeps or drops every member of a unit, and every stage reads pairs as unit pairs."""

from __future__ import annotations

import json
import os

import numpy as np
import pandas as pd
import pytest
from omegaconf import OmegaConf

from dataspex.core.demo import make_demo
from dataspex.core.errors import DataspexError
from dataspex.design.base import Design
from dataspex.design.units import (
    ALWAYS_KEPT,
    Units,
    check_units,
    cluster_units,
    column_units,
    drill_units,
    example_units,
    parse_units,
)
from dataspex.store import RunStore
from tests.conftest import TINY, run_cli

# TINY without its demo-data settings: these runs read csv files
TINY_FILES = [a for a in TINY if not a.startswith("data.")]


# ------------------------------------------------------------------------------------------- the Units type

@pytest.mark.parametrize("spec, why", [
    ("examples", "is not one of: example, column:<name>"),
    ("column", "is not one of: example, column:<name>"),
    ("column:", "is not one of: example, column:<name>"),
    ("example:3", "is not one of: example, column:<name>"),
    ("cluster:1", "the number of clusters must be an integer >= 2"),
    ("cluster:many", "the number of clusters must be an integer >= 2"),
])
def test_parse_units_refuses_bad_settings(spec, why):
    with pytest.raises(DataspexError, match=why):
        parse_units(spec)


def test_parse_units_reads_the_three_forms():
    assert parse_units("example") == ("example", None)
    assert parse_units("column:source") == ("column", "source")
    assert parse_units("cluster:128") == ("cluster", "128")


def test_check_units_names_the_missing_column():
    with pytest.raises(DataspexError, match=r"has no column 'annotator'; its columns are \['label', 'source'"):
        check_units("column:annotator", {"source": [], "label": [], "text": []}, "files")
    with pytest.raises(DataspexError, match="the demo data set has none besides its texts and labels"):
        check_units("column:source", None, "demo")


def test_expand_keeps_exactly_the_members_of_kept_units():
    units = Units(np.array([2, 0, 1, 2, 0]), ["a", "b", "c"], "column:g")
    rng = np.random.default_rng(0)
    masks = rng.integers(0, 2, (16, 3)).astype(np.uint8)
    expanded = units.expand(masks)
    for row in range(len(masks)):  # brute force: example i is kept iff its unit is
        assert expanded[row].tolist() == [int(masks[row, units.unit_of[i]]) for i in range(5)]
    assert units.members(2).tolist() == [0, 3] and units.sizes().tolist() == [2, 1, 2]
    assert units.units_of([3, 4]) == [0, 2] and units.members_of([0, 1]) == [1, 2, 4]
    scores = rng.standard_normal((5, 4))
    summed = units.sum_rows(scores)
    for u in range(3):
        np.testing.assert_allclose(summed[u], scores[units.unit_of == u].sum(axis=0))
    with pytest.raises(ValueError, match="masks have 4 columns, the units are 3"):
        units.expand(np.ones((1, 4)))


def test_a_drill_down_keeps_every_example_outside_its_members():
    units = drill_units(6, [4, 1])
    assert units.unit_of.tolist() == [ALWAYS_KEPT, 1, ALWAYS_KEPT, ALWAYS_KEPT, 0, ALWAYS_KEPT]
    assert units.names == ["#4", "#1"] and units.spec == "drill" and not units.is_examples
    masks = np.array([[0, 0], [1, 0], [0, 1], [1, 1]], dtype=np.uint8)
    assert units.expand(masks).tolist() == [[1, 0, 1, 1, 0, 1], [1, 0, 1, 1, 1, 1], [1, 1, 1, 1, 0, 1],
                                            [1, 1, 1, 1, 1, 1]]
    assert units.sum_rows(np.arange(6.0)).tolist() == [4.0, 1.0] and units.sizes().tolist() == [1, 1]


def test_units_refuse_an_empty_unit_and_labels_out_of_range():
    with pytest.raises(ValueError, match=r"units \[1\] have no member"):
        Units(np.array([0, 2, 0]), ["a", "b", "c"])
    with pytest.raises(ValueError, match=r"unit_of must lie in \[0, 2\)"):
        Units(np.array([0, 2]), ["a", "b"])


def test_column_units_are_ordered_by_value_and_digest_tells_groupings_apart():
    units = column_units(["web", "books", "web", None, "books"], "source")
    assert units.names == ["", "books", "web"] and units.unit_of.tolist() == [2, 1, 2, 0, 1]
    assert units.spec == "column:source" and not units.is_examples
    other = column_units(["web", "books", "books", None, "books"], "source")
    assert units.digest() != other.digest() and units.digest() == column_units(
        ["web", "books", "web", None, "books"], "source").digest()
    assert example_units(4).is_examples


def test_cluster_units_recover_separated_groups():
    rng = np.random.default_rng(0)
    centres = np.eye(3) * 10
    truth = np.repeat(np.arange(3), 6)
    points = centres[truth] + 0.1 * rng.standard_normal((18, 3))
    units = cluster_units(points, 3, seed=0)
    assert units.n_units == 3 and units.spec == "cluster:3"
    # the same partition as the truth, whatever the cluster numbering
    assert len({(int(a), int(b)) for a, b in zip(truth, units.unit_of)}) == 3
    assert np.array_equal(cluster_units(points, 3, seed=0).unit_of, units.unit_of)  # seeded: reproducible
    with pytest.raises(DataspexError, match="needs 2 <= K <= n_train=18"):
        cluster_units(points, 19, seed=0)


def test_planted_recall_reads_planted_pairs_as_unit_pairs():
    from dataspex.report.context import planted_recall

    units = Units(np.array([0, 1, 0, 2, 2]), ["a", "b", "c"], "column:g")
    planted = [{"kind": "harmful", "i": 2, "j": 1}, {"kind": "harmful", "i": 3, "j": 4}]  # the second: one unit
    table = pd.DataFrame({"i": [0, 1], "j": [1, 2]})
    assert planted_recall(table, planted, "harmful", units) == {"found": 1, "planted": 1, "recall": 1.0,
                                                                "missed": []}
    assert planted_recall(table, planted, "harmful")["found"] == 0  # as example pairs: (1, 2) and (3, 4) missed


def test_design_over_units_round_trips_through_the_store(tmp_path):
    units = Units(np.array([1, 0, 1, 2, 0, 2]), ["x", "y", "z"], "column:g")
    design = Design(np.eye(3, dtype=np.uint8)[[0, 1, 2, 0]], np.arange(4), ["fit"] * 4).over_units(units)
    assert design.n_units == 3 and design.n_train == 6 and design.by_unit
    assert design.meta["units"]["digest"] == units.digest()
    store = RunStore(str(tmp_path))
    store.save_design(design)
    loaded = store.load_design()
    assert np.array_equal(loaded.masks, design.masks) and np.array_equal(loaded.units.unit_of, units.unit_of)
    assert loaded.units.names == units.names and loaded.meta == design.meta
    np.testing.assert_array_equal(loaded.example_masks([0, 3]), units.expand(design.masks[[0, 3]]))
    extended = loaded.extend(np.ones((1, 3), dtype=np.uint8), "validate")
    assert extended.units is loaded.units and extended.n_train == 6
    assert Design(design.masks, design.mask_ids, design.roles).over_units(example_units(3)).units is None


# ------------------------------------------------------------------------------------------- through the CLI

def _files(tmp_path, groups) -> list[str]:
    """The tiny demo set as csv files with a ``group`` column (``groups[i]`` for training row i)."""
    demo = make_demo(n_train=10, n_harmful=1, n_redundant=1, n_test_bulk=2, seed=0, n_eval=6)
    names = demo.label_names
    pd.DataFrame({"text": demo.train_texts, "label": [names[y] for y in demo.train_labels],
                  "group": groups}).to_csv(tmp_path / "train.csv", index=False)
    for split, texts, labels in (("test", demo.test_texts, demo.test_labels),
                                 ("eval", demo.eval_texts, demo.eval_labels)):
        pd.DataFrame({"text": texts, "label": [names[y] for y in labels]}).to_csv(tmp_path / f"{split}.csv",
                                                                                 index=False)
    return ["data=files", f"data.train_file={tmp_path / 'train.csv'}", f"data.test_file={tmp_path / 'test.csv'}",
            f"data.eval_file={tmp_path / 'eval.csv'}"]


@pytest.mark.slow
def test_training_expands_unit_masks_to_their_members(tmp_path):
    """A grouping that permutes the examples (one unit each, out of order): the stored results of each mask over
    units must be the fine-tunes of its expansion, not of the unit mask read as an example mask (which has the
    same width here, so forgetting to expand would run and give other losses)."""
    import torch

    from dataspex.core.data import load_data
    from dataspex.core.models import load_base_model, load_tokenizer
    from dataspex.train import get_engine
    from dataspex.train.common import encode

    groups = [f"g{(3 * i) % 10}" for i in range(10)]  # unit_of = order of "g0".."g9" as text: a permutation
    data_args = _files(tmp_path, groups)
    run_dir = str(tmp_path / "run")
    run_cli("design", f"run_dir={run_dir}", *TINY_FILES, *data_args, "design.units=column:group")
    run_cli("train", f"run_dir={run_dir}")
    store = RunStore(run_dir)
    design = store.load_design()
    assert design.by_unit and design.n_units == design.n_train == 10
    assert sorted(design.units.unit_of.tolist()) == list(range(10)) and not design.units.is_examples
    results = store.load_results(design)
    assert np.array_equal(results.masks, design.masks[np.searchsorted(design.mask_ids, results.mask_ids)])

    cfg = OmegaConf.load(os.path.join(run_dir, "config.yaml"))
    torch.set_num_threads(1)
    data = load_data(cfg.data, cfg.model.task)
    tokenizer = load_tokenizer(cfg.model)
    train = encode(data.train, tokenizer, data.task, cfg.model.max_length)
    test = encode(data.test, tokenizer, data.task, cfg.model.max_length)
    rows = np.arange(3)

    def losses(masks):
        base = load_base_model(cfg.model, len(data.label_names), cfg.train.seed)
        out = {int(i): loss for i, loss, _, _ in get_engine(cfg.train.engine)(
            base, cfg.lora, cfg.train, train, test, masks, design.mask_ids[rows])}
        return np.array([out[int(i)] for i in design.mask_ids[rows]])

    stored = results.losses[np.searchsorted(results.mask_ids, design.mask_ids[rows])]
    np.testing.assert_allclose(losses(design.example_masks(rows)), stored, rtol=1e-5, atol=1e-6)
    assert not np.allclose(losses(design.masks[rows]), stored, rtol=1e-3, atol=1e-4)


@pytest.mark.slow
def test_a_unit_run_reports_validates_and_curates_unit_pairs(tmp_path):
    """Synthetic results over the members (the report tests' known set function) on a run grouped into 5 units,
    each planted pair's two examples in two different units: the unit pair of the planted harmful pair is the top
    harmful pair; the report, validate and curate name units and their members."""
    from tests.test_report import REPORT_ARGS, synthetic_losses

    demo = make_demo(n_train=10, n_harmful=1, n_redundant=1, n_test_bulk=2, seed=0)
    harmful = next(p for p in demo.planted if p["kind"] == "harmful")
    # units of two examples each, the planted harmful pair's examples in units 0 and 1
    order = [harmful["i"], harmful["j"]] + [k for k in range(10) if k not in (harmful["i"], harmful["j"])]
    groups = [""] * 10
    for position, example in enumerate(order):
        groups[example] = f"src{position % 5}"
    args = [a for a in TINY_FILES if not a.startswith("design.")] + _files(tmp_path, groups) + [
        "design.units=column:group", "design.m=48", "design.heldout=16", "design.replicates=0"]
    run_dir = str(tmp_path / "run")
    run_cli("design", f"run_dir={run_dir}", *args)
    store = RunStore(run_dir)
    design = store.load_design()
    assert design.n_units == 5 and design.units.spec == "column:group"
    unit_i, unit_j = sorted(int(design.units.unit_of[x]) for x in (harmful["i"], harmful["j"]))
    Y = synthetic_losses(design.example_masks(np.arange(len(design))), demo.planted, len(demo.test_texts))
    store.write_results(design.mask_ids, design.masks, Y, -Y)
    run_cli("fit", f"run_dir={run_dir}")  # the quadratic model is one of the default estimators
    report_args = [*REPORT_ARGS, "report.estimator=quadratic"]
    run_cli("report", f"run_dir={run_dir}", *report_args)

    summary = json.load(open(os.path.join(run_dir, "report", "summary.json")))
    assert summary["units"] == {"spec": "column:group", "n_units": 5}
    pairs = pd.read_csv(os.path.join(run_dir, "report", "pairs.csv"))
    harmful_table = pairs[pairs["kind"] == "harmful"].reset_index(drop=True)
    assert (int(harmful_table["i"][0]), int(harmful_table["j"][0])) == (unit_i, unit_j)
    assert harmful_table["text_i"][0].startswith(f"src{unit_i}, 2 examples: ")
    units_listed = summary["units_to_review_predicted"]
    assert {unit_i, unit_j} <= set(units_listed)
    assert summary["examples_to_review_predicted"] == design.units.members_of(units_listed)
    md = open(os.path.join(run_dir, "report", "report.md")).read()
    assert "masks over 5 units (column:group)" in md and "| unit i | unit j |" in md
    assert f"Units to drop (every member), predicted (top harmful pairs): #{units_listed[0]} (src" in md
    assert "Units to drop (every member), validated: none yet (not validated)." in md
    from tests.test_report import write_validation  # validation files as `dataspex validate` writes them

    first = write_validation(run_dir, {("harmful", 1): "lowered"}, confirmed={("harmful", 1)}).iloc[0]
    run_cli("report", f"run_dir={run_dir}", *report_args)
    md = open(os.path.join(run_dir, "report", "report.md")).read()
    assert ("Units to drop (every member), validated (harmful pairs whose interaction the retrains confirmed and "
            "whose removal lowered both its test example's loss and the mean test loss): "
            f"#{min(first['i'], first['j'])} (src") in md

    run_cli("curate", f"run_dir={run_dir}", *report_args, "curate.actions=predicted", "curate.seeds=2",
            "curate.random_draws=2", "curate.baselines=[linear]")
    manifest = json.load(open(os.path.join(run_dir, "curate", "manifest.json")))
    dropped = sorted(entry["row"] for entry in manifest["changes"])
    assert dropped == summary["examples_to_review_predicted"]
    first = manifest["changes"][0]
    assert first["unit"] == f"src{design.units.unit_of[first['row']]}" and len(first["evidence"]["pair_units"]) == 2
    curated = pd.read_csv(os.path.join(run_dir, "curate", "train_curated.csv"))
    assert len(curated) == 10 - len(dropped) and set(curated["group"]) <= set(groups)

    # drill-down: real fine-tunes of random subsets of the top unit pairs' members, the rest kept
    drill_args = [*report_args, "drill.top_k=1", "drill.kinds=[harmful]", "drill.m=8", "drill.heldout=4",
                  "drill.replicates=0"]
    run_cli("drill", f"run_dir={run_dir}", *drill_args)
    child = RunStore(os.path.join(run_dir, "drill"))
    child_design = child.load_design()
    members = design.units.members_of([unit_i, unit_j])
    assert child_design.units.spec == "drill" and child_design.n_units == len(members) == 4
    assert child_design.meta["drill"]["pairs"] == [[unit_i, unit_j]]
    expanded = child_design.example_masks(np.arange(len(child_design)))
    others = [x for x in range(10) if x not in members]
    assert expanded[:, others].all() and not expanded[:, members].all()
    assert len(child.load_results(child_design)) == len(child_design) == 12
    summary = json.load(open(os.path.join(run_dir, "report", "summary.json")))
    assert summary["drill"]["pairs"] == [[unit_i, unit_j]]
    assert all(set(p) <= set(members) for p in summary["drill"]["example_pairs"])
    md = open(os.path.join(run_dir, "report", "report.md")).read()
    assert "## Inside the top unit pairs (drill-down)" in md and f"`{child.run_dir}` retrained" in md
    again = run_cli("drill", f"run_dir={run_dir}", *drill_args)  # resumable: nothing left to train
    assert "train: shard 0/1 has 12 masks, 12 already done, 0 to train" in again.stderr + again.stdout
    refused = run_cli("drill", f"run_dir={child.run_dir}", check=False)
    assert refused.returncode == 2 and "is itself a drill-down: drill from the run it is inside" in refused.stderr


@pytest.mark.slow
def test_drill_before_a_fit_and_hand_made_drill_units_are_refused_with_their_reasons(tmp_path):
    run_dir = str(tmp_path / "run")
    run_cli("design", f"run_dir={run_dir}", *TINY)
    refused = run_cli("drill", f"run_dir={run_dir}", check=False)  # over examples it drills too, but needs a fit
    assert refused.returncode == 2 and "dataspex fit" in refused.stderr, refused.stderr
    by_hand = run_cli("design", f"run_dir={tmp_path / 'other'}", *TINY, "design.units=drill", check=False)
    assert by_hand.returncode == 2 and "design.units=drill is a drill-down's grouping" in by_hand.stderr
    bad = run_cli("design", f"run_dir={tmp_path / 'bad'}", *TINY, "design.units=column:source", check=False)
    assert bad.returncode == 2 and "the demo data set has none besides its texts and labels" in bad.stderr
    assert not os.path.exists(tmp_path / "bad" / "fingerprint.json")  # refused before the run was created
