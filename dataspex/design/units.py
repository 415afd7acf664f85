"""Units: what a mask keeps or drops. ``design.units`` groups the training examples, and every mask of the design
is over the groups; a mask keeps or drops every member of a unit together.

* ``example`` (the default): each training example is its own unit (masks are over examples, as always).
* ``column:<name>``: one unit per distinct value of a column of the training data (a source, an annotator, a
  file, any id), named by that value.
* ``cluster:<K>``: K-means (K clusters, seeded by ``design.seed``) on the frozen base model's mean-pooled
  embeddings of the training texts; the embeddings are computed once and kept in the run directory.
* ``drill`` (made by ``dataspex drill``, not set by hand): a drill-down inside a unit run, one unit per member of
  its top unit pairs and every other example always kept (unit -1).

Larger units carry larger effects than single examples (a source of 20 mislabelled texts moves the test loss more
than one does), so a study over units needs fewer retrains per unit of signal, and scales to thousands of
examples with a few hundred units. The assignment is stored with the design (``design.npz``) and its digest is in
the design's metadata, so a run's results are never matched to another grouping.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

import numpy as np
from sklearn.cluster import KMeans

from dataspex.core.errors import DataspexError

UNIT_KINDS = ("example", "column", "cluster", "drill")
ALWAYS_KEPT = -1  # the unit of examples that every mask keeps (a drill-down's examples outside its pairs)


def units_setting(cfg) -> str:
    """``design.units`` of a full config, as set (``example`` when the design config has no such key, as in runs
    made before it)."""
    design = cfg.get("design") or {}
    return str(design.get("units") or "example")


def parse_units(spec) -> tuple[str, str | None]:
    """``design.units`` as (kind, argument): ``"example"`` -> ("example", None), ``"column:source"`` ->
    ("column", "source"), ``"cluster:128"`` -> ("cluster", "128"); refuses anything else, saying the forms."""
    text = str(spec).strip()
    kind, _, arg = text.partition(":")
    forms = "example, column:<name> (a column of the training data) or cluster:<K> (K-means on embeddings)"
    if kind not in UNIT_KINDS or (kind in ("example", "drill")) != (arg == ""):
        raise DataspexError(f"design.units={text!r} is not one of: {forms}")
    if kind == "cluster" and not (arg.isdigit() and int(arg) >= 2):
        raise DataspexError(f"design.units={text!r}: the number of clusters must be an integer >= 2")
    return kind, arg or None


def check_units(spec, columns: dict | None, source: str) -> tuple[str, str | None]:
    """:func:`parse_units`, and for ``column:<name>`` that the training data (``columns``: its columns by name, of
    ``data.source`` ``source``) has that column; checked before a run is created, so a bad setting leaves nothing
    behind."""
    kind, arg = parse_units(spec)
    if kind == "column" and not columns:
        raise DataspexError(f"design.units=column:{arg} needs a column in the training data, and the {source} data "
                            "set has none besides its texts and labels: use data=files with a column that names "
                            "each row's group (a source, an annotator, a file)")
    if kind == "column" and arg not in columns:
        raise DataspexError(f"design.units=column:{arg}: the training data has no column {arg!r}; its columns are "
                            f"{sorted(columns)}")
    return kind, arg


@dataclass
class Units:
    """A grouping of the ``n_train`` training examples into ``n_units`` units.

    ``unit_of`` (n_train,) int64 in [0, n_units), or :data:`ALWAYS_KEPT` for an example every mask keeps: each
    example's unit; ``names`` (n_units,): what each unit is (a column value, ``cluster 3``); ``spec``: the
    ``design.units`` setting that made it. Every unit has at least one member."""

    unit_of: np.ndarray
    names: list[str]
    spec: str = "example"

    def __post_init__(self):
        self.unit_of = np.asarray(self.unit_of, dtype=np.int64)
        self.names = [str(x) for x in self.names]
        if self.unit_of.ndim != 1 or len(self.unit_of) == 0:
            raise ValueError("unit_of must be a non-empty (n_train,) array")
        if self.unit_of.min() < ALWAYS_KEPT or self.unit_of.max() >= len(self.names):
            raise ValueError(f"unit_of must lie in [0, {len(self.names)}) (one name per unit), or be {ALWAYS_KEPT} "
                             "(always kept)")
        empty = np.flatnonzero(self.sizes() == 0)
        if empty.size:
            raise ValueError(f"units {empty[:5].tolist()} have no member")

    @property
    def n_train(self) -> int:
        return len(self.unit_of)

    @property
    def n_units(self) -> int:
        return len(self.names)

    @property
    def is_examples(self) -> bool:
        """True when every example is its own unit, in order (masks over units are masks over examples)."""
        return self.n_units == self.n_train and bool(np.array_equal(self.unit_of, np.arange(self.n_train)))

    def members(self, unit: int) -> np.ndarray:
        """Indices (ascending) of the training examples in ``unit``."""
        return np.flatnonzero(self.unit_of == int(unit))

    def sizes(self) -> np.ndarray:
        """(n_units,) int64: members per unit."""
        return np.bincount(self.unit_of[self.unit_of >= 0], minlength=self.n_units)

    def expand(self, masks: np.ndarray) -> np.ndarray:
        """Masks over units (m, n_units) -> masks over the training examples (m, n_train) uint8: an example is kept
        exactly when its unit is (always, for :data:`ALWAYS_KEPT`)."""
        masks = np.asarray(masks, dtype=np.uint8)
        if masks.shape[-1] != self.n_units:
            raise ValueError(f"masks have {masks.shape[-1]} columns, the units are {self.n_units}")
        # one more column of ones, that ALWAYS_KEPT (-1) indexes
        padded = np.concatenate([masks, np.ones((*masks.shape[:-1], 1), dtype=np.uint8)], axis=-1)
        return np.ascontiguousarray(padded[..., self.unit_of])

    def units_of(self, examples) -> list[int]:
        """The distinct units (ascending) that the training examples ``examples`` belong to."""
        return sorted({int(self.unit_of[int(i)]) for i in examples})

    def members_of(self, units) -> list[int]:
        """Every member (ascending) of the units ``units``."""
        return sorted(int(i) for i in np.flatnonzero(np.isin(self.unit_of, [int(u) for u in units])))

    def sum_rows(self, scores: np.ndarray) -> np.ndarray:
        """Per-example scores (n_train, ...) -> per-unit sums (n_units, ...): a first-order model's effect of
        dropping a unit is the sum of its members' effects (TRAK scores, a linear datamodel's weights)."""
        scores = np.asarray(scores, dtype=np.float64)
        if scores.shape[0] != self.n_train:
            raise ValueError(f"scores have {scores.shape[0]} rows, the training set has {self.n_train} examples")
        out = np.zeros((self.n_units, *scores.shape[1:]))
        studied = self.unit_of >= 0
        np.add.at(out, self.unit_of[studied], scores[studied])
        return out

    def digest(self) -> str:
        """SHA-256 (16 hex digits) over the assignment and the names: what a run's design records and compares."""
        payload = json.dumps({"unit_of": self.unit_of.tolist(), "names": self.names}).encode()
        return hashlib.sha256(payload).hexdigest()[:16]

    def record(self) -> dict:
        """What the design's metadata keeps about the units (the assignment itself is an array of design.npz)."""
        return {"spec": self.spec, "n_units": self.n_units, "digest": self.digest(), "names": self.names}


def drill_units(n_train: int, members) -> Units:
    """A drill-down's units: one per example of ``members`` (in that order, named ``#<example>``), every other
    example of the ``n_train`` always kept."""
    unit_of = np.full(int(n_train), ALWAYS_KEPT, dtype=np.int64)
    members = [int(x) for x in members]
    unit_of[members] = np.arange(len(members))
    return Units(unit_of, [f"#{x}" for x in members], "drill")


def example_units(n_train: int) -> Units:
    return Units(np.arange(int(n_train)), [str(i) for i in range(int(n_train))], "example")


def column_units(values, column: str) -> Units:
    """One unit per distinct value of a training-data column (units ordered by the value's text)."""
    texts = ["" if v is None else str(v) for v in values]
    names = sorted(set(texts))
    index = {name: k for k, name in enumerate(names)}
    return Units(np.array([index[t] for t in texts]), names, f"column:{column}")


def cluster_units(embeddings: np.ndarray, k: int, seed: int) -> Units:
    """K-means on ``embeddings`` (n_train, d) into ``k`` units, seeded by ``seed``, rows L2-normalised first (the
    cosine geometry sentence embeddings are made for). Clusters that come out empty are dropped and the rest
    renumbered in order, so every unit has a member; a unit is named ``cluster <c>``."""
    embeddings = np.asarray(embeddings, dtype=np.float64)
    if not 2 <= int(k) <= len(embeddings):
        raise DataspexError(f"design.units=cluster:{k} needs 2 <= K <= n_train={len(embeddings)}")
    norms = np.linalg.norm(embeddings, axis=1, keepdims=True)
    points = embeddings / np.where(norms > 0, norms, 1.0)
    labels = KMeans(n_clusters=int(k), n_init=4, random_state=int(seed)).fit_predict(points)
    used, unit_of = np.unique(labels, return_inverse=True)
    return Units(unit_of, [f"cluster {c}" for c in range(len(used))], f"cluster:{int(k)}")
