"""benchmarks/units.py: the planted unit pairs inside real WordNet glosses (needs Debian's wordnet-base, as
tests/test_realdata.py)."""

from __future__ import annotations

import csv
import os
from collections import Counter

import pytest

from tests.benchmark_scripts import load_benchmark

pytestmark = pytest.mark.skipif(not os.path.exists("/usr/share/wordnet/data.noun"),
                                reason="needs Debian's wordnet-base (apt-get install wordnet-base; .ci/run does)")


def test_planted_unit_pairs_hold_the_two_mislabelled_copies_of_each_gloss(tmp_path):
    units = load_benchmark("units")
    splits = units.plant(n_train=200, sources=16, unit_pairs=2, copies=3, n_test=20, n_eval=10, seed=0)
    source_of, train, test = splits["source_of"], splits["train"], splits["test"]
    assert len(splits["unit_pairs"]) == 2 and len(splits["example_pairs"]) == 6
    planted_rows = set()
    for pair in splits["example_pairs"]:
        a, b = splits["unit_pairs"][pair["unit_pair"]]
        i, j, t = pair["i"], pair["j"], pair["test"]
        assert {source_of[i], source_of[j]} == {a, b} and source_of[i] != source_of[j]
        assert train[i][1] == train[j][1] != test[t][1]  # one wrong class for both copies
        planted_rows |= {i, j}
    planted_sources = {s for pair in splits["unit_pairs"] for s in pair}
    # the planted sources hold the copies and nothing else; every source has members
    assert {k for k, s in enumerate(source_of) if s in planted_sources} == planted_rows
    counts = Counter(source_of)
    assert len(counts) == 16 and min(counts.values()) >= 3
    manifest = units.write_planted(splits, str(tmp_path))
    with open(tmp_path / "train.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["source"] for r in rows] == source_of and manifest["unit_pairs"] == splits["unit_pairs"]
    # same arguments, same splits
    again = units.plant(n_train=200, sources=16, unit_pairs=2, copies=3, n_test=20, n_eval=10, seed=0)
    assert again["source_of"] == source_of and again["train"] == train
