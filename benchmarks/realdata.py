"""Real text data that installs offline from Debian's packages, as fixed-seed splits for benchmarks and tests.

Two sources (``apt-get install fortunes wordnet-base``; ``.ci/run`` installs both):

* ``fortunes``: the category files of Debian's ``fortunes`` package (``/usr/share/games/fortunes``, one
  ``%``-separated file per category). Task: which category a fortune comes from (default: computers, politics,
  science, art).
* ``wordnet``: WordNet 3.0 noun glosses from ``wordnet-base`` (``/usr/share/wordnet/data.noun``). Task: the
  synset's lexicographer class (default: noun.animal, noun.artifact, noun.food, noun.person).

Each build writes ``train.csv``, ``test.csv`` (the attribution targets) and ``eval.csv`` (independent, never
used for attribution) with columns ``text,label``, and ``manifest.json`` (source, seed, sizes, label counts, the
planted pairs and the exact ``dataspex`` command for the split). Same arguments, same files, on any machine with
the same package versions (the manifest records the source files' SHA-256).

Planted cases inside the real data (optional), in the demo's vocabulary (``dataspex/core/demo.py``):

* ``harmful`` (masking) pairs: two near-copies of a real text, both with one wrong label; the original, with
  its true label, goes to the test split. Either copy alone still teaches the wrong label, so removing one
  changes little and removing both helps.
* ``redundant`` pairs: two correctly labelled near-copies of a text of a rare class that no other training
  example carries; the original goes to the test split. Either copy teaches it; removing both hurts.

* ``halves`` pairs (listed as harmful, ``"plant": "halves"``): a real text of 8+ words cut into its first and
  second half, both halves with one wrong label; the whole text, with its true label, goes to the test split.
  Each half matches the test text only in part, so each alone should move its loss less than a near-copy does
  and both together more than the sum (synergy): the plant meant for what first-order scores miss.

* ``--anchored``: each harmful pair also gets a third near-copy with the *true* label (``"anchor"``). The anchor
  has the largest single effect at the test example, so first-order rankings (the two largest single effects)
  should pair it with one wrong copy and miss the wrong pair; what the wrong pair does depends on the anchor.

``manifest.json`` lists them as ``{"kind", "i", "j", "test"}`` (training indices i < j, test index), like the
demo's ground truth.

    python benchmarks/realdata.py fortunes --n-train 256 --out /tmp/real/fortunes256
    python benchmarks/realdata.py wordnet --n-train 1024 --harmful 4 --redundant 4 --out /tmp/real/wordnet1024
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import re
import sys

import numpy as np

FORTUNES_DIR = "/usr/share/games/fortunes"
WORDNET_NOUNS = "/usr/share/wordnet/data.noun"
SOURCES = ("fortunes", "wordnet")
DEFAULT_CLASSES = {
    "fortunes": ("computers", "politics", "science", "art"),
    "wordnet": ("noun.animal", "noun.artifact", "noun.food", "noun.person"),
}
# The class whose only training examples are the redundant copies (absent from the bulk of every split).
DEFAULT_RARE = {"fortunes": "food", "wordnet": "noun.plant"}
PACKAGE = {"fortunes": "fortunes", "wordnet": "wordnet-base"}

# WordNet's lexicographer files for nouns (lexnames(5WN)): lex_filenum -> name.
NOUN_LEXNAMES = {
    3: "noun.Tops", 4: "noun.act", 5: "noun.animal", 6: "noun.artifact", 7: "noun.attribute", 8: "noun.body",
    9: "noun.cognition", 10: "noun.communication", 11: "noun.event", 12: "noun.feeling", 13: "noun.food",
    14: "noun.group", 15: "noun.location", 16: "noun.motive", 17: "noun.object", 18: "noun.person",
    19: "noun.phenomenon", 20: "noun.plant", 21: "noun.possession", 22: "noun.process", 23: "noun.quantity",
    24: "noun.relation", 25: "noun.shape", 26: "noun.state", 27: "noun.substance", 28: "noun.time",
}
# Words inserted to make a near-copy: they leave the meaning and the class of a text alone.
_FILLERS = ("really", "indeed", "truly", "quite", "simply", "certainly")


class MissingSource(RuntimeError):
    """A Debian package the requested source needs is not installed."""


def _require(path: str, source: str) -> None:
    if not os.path.exists(path):
        raise MissingSource(f"{path} not found: install Debian's {PACKAGE[source]} package "
                            f"(apt-get install {PACKAGE[source]})")


def _clean(text: str) -> str:
    """One line: runs of whitespace (fortunes align with tabs and break lines) become one space."""
    return re.sub(r"\s+", " ", text).strip()


def read_fortunes(categories, root: str = FORTUNES_DIR) -> list[tuple[str, str]]:
    """(text, category) for every fortune of ``categories``, in file order; texts in more than one category
    are dropped (their label would be ambiguous), as are repeats within one."""
    rows: list[tuple[str, str]] = []
    for category in categories:
        path = os.path.join(root, category)
        _require(path, "fortunes")
        with open(path, encoding="utf-8", errors="replace") as fh:
            chunks = fh.read().split("\n%\n")
        rows += [(_clean(chunk.rstrip("%")), category) for chunk in chunks if _clean(chunk.rstrip("%"))]
    return _unambiguous(rows)


def read_wordnet(classes, path: str = WORDNET_NOUNS) -> list[tuple[str, str]]:
    """(gloss, lexicographer class) for every noun synset of ``classes``, in file order. A gloss is the
    definition and its examples as WordNet writes them after ``|``."""
    _require(path, "wordnet")
    wanted = set(classes)
    unknown = wanted - set(NOUN_LEXNAMES.values())
    if unknown:
        raise ValueError(f"unknown WordNet noun classes {sorted(unknown)}; known: {sorted(NOUN_LEXNAMES.values())}")
    rows = []
    with open(path, encoding="utf-8", errors="replace") as fh:
        for line in fh:
            if line.startswith("  ") or " | " not in line:  # the licence header is indented
                continue
            lexname = NOUN_LEXNAMES.get(int(line.split(" ", 2)[1]))
            if lexname in wanted:
                rows.append((_clean(line.split(" | ", 1)[1]), lexname))
    return _unambiguous(rows)


def _unambiguous(rows):
    labels_of: dict[str, set] = {}
    for text, label in rows:
        labels_of.setdefault(text, set()).add(label)
    seen, out = set(), []
    for text, label in rows:
        if len(labels_of[text]) == 1 and text not in seen:
            seen.add(text)
            out.append((text, label))
    return out


def near_copy(text: str, rng: np.random.Generator, variant: int) -> str:
    """A near-copy of ``text``: variant 0 drops one word (texts of 5+ words) or appends a filler; variant 1
    inserts a filler word. Always differs from ``text``."""
    words = text.split(" ")
    if variant == 0 and len(words) >= 5:
        k = int(rng.integers(1, len(words)))
        out = " ".join(words[:k] + words[k + 1:])
    else:
        k = int(rng.integers(0, len(words) + 1))
        out = " ".join(words[:k] + [_FILLERS[int(rng.integers(len(_FILLERS)))]] + words[k:])
    return out if out != text else text + " indeed"


def build(source: str, n_train: int, n_test: int = 64, n_eval: int = 256, seed: int = 0, classes=None,
          min_chars: int = 40, max_chars: int = 400, harmful: int = 0, redundant: int = 0, rare=None,
          flip: float = 0.0, halves: int = 0, anchored: bool = False, eval_planted: bool = False) -> dict:
    """The splits as ``{"train": [(text, label)], "test": [...], "eval": [...], "planted": [...], "flipped": [...],
    "info": {...}}``.

    Texts of ``min_chars`` to ``max_chars`` characters are drawn without replacement from the pool of
    ``classes`` with ``np.random.default_rng(seed)``; the three splits are disjoint. ``harmful`` and
    ``redundant`` (and ``halves``) planted pairs take 2 training and 1 test slot each (``n_train`` and ``n_test``
    include them); the halves' texts come from the end of the draw, after the harmful pairs' (8+ words each).
    ``flip``: the share of the other (bulk) training examples whose label is replaced by another class, drawn
    from a stream of their own (``default_rng([seed, 3])``), so every split and plant is the same with or
    without flips; ``flipped`` lists them (final train index, original and new label). ``anchored``: each
    harmful pair gets a third near-copy with the *true* label (one more training slot each, listed as the pair's
    ``anchor``). ``eval_planted``: the eval split holds the population the plants act on at the test split's rate,
    as the demo's eval split does: ``round(n_eval / n_test)`` near-copies of each planted test text with its true
    label (drawn from a stream of their own, ``default_rng([seed, 5])``), then the bulk eval rows, ``n_eval`` in
    all; train and test are the same with or without it. Without it the eval split holds no text like a planted
    target, so it measures only what a plant does to the rest of the data (``eval_planted`` in the result lists
    the copies' eval rows by planted pair).
    """
    if not 0.0 <= flip < 1.0:
        raise ValueError(f"flip={flip} must be in [0, 1)")
    if source not in SOURCES:
        raise ValueError(f"unknown source {source!r}; one of {SOURCES}")
    classes = tuple(classes or DEFAULT_CLASSES[source])
    rare = rare or DEFAULT_RARE[source]
    if redundant and rare in classes:
        raise ValueError(f"the rare class {rare!r} of the redundant pairs must not be one of the classes {classes}")
    read = read_fortunes if source == "fortunes" else read_wordnet
    pool = [row for row in read(classes) if min_chars <= len(row[0]) <= max_chars]
    rare_pool = [row for row in read((rare,)) if min_chars <= len(row[0]) <= max_chars] if redundant else []
    n_planted = harmful + redundant + halves
    n_bulk_train, n_bulk_test = n_train - 2 * n_planted - (harmful if anchored else 0), n_test - n_planted
    if n_bulk_train < 2 or n_bulk_test < 0:
        raise ValueError(f"n_train={n_train}, n_test={n_test} leave no room for {n_planted} planted pairs")
    need = n_bulk_train + n_bulk_test + n_eval + harmful
    long_pool = [row for row in pool if len(row[0].split()) >= 8] if halves else []
    if need + halves > len(pool) or redundant > len(rare_pool) or halves > len(long_pool) // 2:
        raise ValueError(f"{source} has {len(pool)} texts of {min_chars}-{max_chars} characters in {classes} "
                         f"({len(rare_pool)} of {rare!r}); the splits need {need} (+{redundant})")

    rng = np.random.default_rng(seed)
    order = rng.permutation(len(pool))
    picks = [pool[k] for k in order[:need]]
    train = picks[:n_bulk_train]
    test = picks[n_bulk_train:n_bulk_train + n_bulk_test]
    eval_rows = picks[n_bulk_train + n_bulk_test:n_bulk_train + n_bulk_test + n_eval]
    targets = [("harmful", row) for row in picks[len(picks) - harmful:]]
    targets += [("redundant", rare_pool[k]) for k in rng.permutation(len(rare_pool))[:redundant]]
    if halves:  # long texts not already in a split (picks is a prefix of the permutation)
        used = {row[0] for row in picks}
        rest = [pool[k] for k in order[need:] if len(pool[k][0].split()) >= 8 and pool[k][0] not in used]
        if len(rest) < halves:
            raise ValueError(f"{source} has only {len(rest)} unused texts of 8+ words for {halves} halves pairs")
        targets += [("halves", row) for row in rest[:halves]]

    planted_rows = []
    for kind, (text, label) in targets:
        if kind in ("harmful", "halves"):  # a wrong label, the same for both copies (or halves)
            others = [c for c in classes if c != label]
            copy_label = others[int(rng.integers(len(others)))]
        else:
            copy_label = label
        planted_rows.append({"kind": "harmful" if kind == "halves" else kind, "pair": (len(train), len(train) + 1),
                             "test": len(test), **({"plant": "halves"} if kind == "halves" else {})})
        if kind == "halves":
            words = text.split()
            train += [(" ".join(words[:len(words) // 2]), copy_label), (" ".join(words[len(words) // 2:]), copy_label)]
        else:
            train += [(near_copy(text, rng, 0), copy_label), (near_copy(text, rng, 1), copy_label)]
            if anchored and kind == "harmful":  # a correctly labelled near-copy beside the two wrong ones
                planted_rows[-1]["anchor"] = len(train)
                anchor = near_copy(text, rng, 1)
                train.append((anchor if anchor not in (train[-1][0], train[-2][0]) else anchor + " indeed", label))
        test.append((text, label))
    restated, eval_of = _eval_copies(test[n_bulk_test:], round(n_eval / max(n_test, 1)), seed) if eval_planted \
        else ([], [])
    eval_rows = (restated + eval_rows)[:n_eval]

    # Shuffle the training and test sets so planted examples are not adjacent; remap the planted indices.
    train_order, test_order = rng.permutation(len(train)), rng.permutation(len(test))
    new_train, new_test = np.argsort(train_order), np.argsort(test_order)
    planted = []
    for row in planted_rows:
        i, j = sorted(int(new_train[k]) for k in row["pair"])
        planted.append({"kind": row["kind"], "i": i, "j": j, "test": int(new_test[row["test"]]),
                        **({"plant": row["plant"]} if "plant" in row else {}),
                        **({"anchor": int(new_train[row["anchor"]])} if "anchor" in row else {})})
    train = [train[k] for k in train_order]
    test = [test[k] for k in test_order]
    flipped = []
    if flip:
        planted_rows_train = {x for p in planted for x in (p["i"], p["j"], p.get("anchor", p["i"]))}
        bulk = [k for k in range(len(train)) if k not in planted_rows_train]
        flip_rng = np.random.default_rng([seed, 3])
        for k in sorted(int(x) for x in flip_rng.choice(bulk, int(round(flip * len(bulk))), replace=False)):
            text, label = train[k]
            others = [c for c in classes if c != label]
            new_label = others[int(flip_rng.integers(len(others)))]
            train[k] = (text, new_label)
            flipped.append({"i": k, "label": label, "new_label": new_label})
    info = {"source": source, "package": PACKAGE[source], "seed": seed, "classes": list(classes),
            "rare_class": rare if redundant else None, "min_chars": min_chars, "max_chars": max_chars,
            "pool": len(pool), "sizes": {"train": len(train), "test": len(test), "eval": len(eval_rows)},
            "label_counts": {name: _counts(rows) for name, rows in
                             (("train", train), ("test", test), ("eval", eval_rows))},
            "source_sha256": _source_digest(source, classes + ((rare,) if redundant else ())), "flip": flip}
    info["eval_planted"] = bool(eval_planted)
    for row, rows in zip(planted, eval_of):  # the planted rows are in plant order, as the copies are
        row["eval"] = [k for k in rows if k < len(eval_rows)]
    return {"train": train, "test": test, "eval": eval_rows, "planted": planted, "flipped": flipped, "info": info}


def _eval_copies(targets, per_target: int, seed: int) -> tuple[list, list]:
    """``per_target`` (at least 1) distinct near-copies of each planted test text with its true label, different
    from the text itself; and, per target, their rows in the returned list."""
    rng = np.random.default_rng([seed, 5])
    per_target = max(per_target, 1)
    rows, where = [], []
    for text, label in targets:
        made = []
        for attempt in range(50 * per_target):
            copy = near_copy(text, rng, attempt % 2)
            if copy != text and copy not in made:
                made.append(copy)
            if len(made) == per_target:
                break
        where.append(list(range(len(rows), len(rows) + len(made))))
        rows += [(copy, label) for copy in made]
    return rows, where


def _counts(rows) -> dict:
    labels, counts = np.unique([label for _, label in rows], return_counts=True)
    return {str(k): int(v) for k, v in zip(labels, counts)}


def _source_digest(source: str, classes) -> dict:
    paths = [os.path.join(FORTUNES_DIR, c) for c in classes] if source == "fortunes" else [WORDNET_NOUNS]
    out = {}
    for path in paths:
        with open(path, "rb") as fh:
            out[os.path.basename(path)] = hashlib.sha256(fh.read()).hexdigest()
    return out


def write(splits: dict, out_dir: str) -> dict:
    """Write train.csv, test.csv, eval.csv and manifest.json into ``out_dir`` (each atomically); returns the
    manifest, whose ``command`` runs the default dataspex job on these files."""
    os.makedirs(out_dir, exist_ok=True)
    for name in ("train", "test", "eval"):
        path = os.path.join(out_dir, f"{name}.csv")
        tmp = path + ".tmp"
        with open(tmp, "w", encoding="utf-8", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["text", "label"])
            writer.writerows(splits[name])
        os.replace(tmp, path)
    train, test = (os.path.abspath(os.path.join(out_dir, f"{s}.csv")) for s in ("train", "test"))
    manifest = {**splits["info"], "planted": splits["planted"], "flipped": splits.get("flipped", []),
                "command": f"dataspex run data=files data.train_file={train} data.test_file={test}"}
    path = os.path.join(out_dir, "manifest.json")
    with open(path + ".tmp", "w") as fh:
        json.dump(manifest, fh, indent=1)
    os.replace(path + ".tmp", path)
    return manifest


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source", choices=SOURCES)
    parser.add_argument("--out", required=True, help="folder for train.csv, test.csv, eval.csv, manifest.json")
    parser.add_argument("--n-train", type=int, default=256)
    parser.add_argument("--n-test", type=int, default=64)
    parser.add_argument("--n-eval", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--classes", default=None, help="comma-separated (default: %s)" % DEFAULT_CLASSES)
    parser.add_argument("--min-chars", type=int, default=40)
    parser.add_argument("--max-chars", type=int, default=400)
    parser.add_argument("--harmful", type=int, default=0, help="planted harmful (masking) pairs")
    parser.add_argument("--redundant", type=int, default=0, help="planted redundant pairs")
    parser.add_argument("--halves", type=int, default=0, help="planted halves pairs (a text cut in two, mislabelled)")
    parser.add_argument("--anchored", action="store_true",
                        help="each harmful pair also gets a correctly labelled near-copy (its anchor)")
    parser.add_argument("--flip", type=float, default=0.0, help="share of bulk training labels to flip (e.g. 0.1)")
    parser.add_argument("--rare", default=None, help="class of the redundant pairs (default: %s)" % DEFAULT_RARE)
    parser.add_argument("--eval-planted", action="store_true",
                        help="the eval split holds near-copies of the planted test texts at the test split's rate")
    args = parser.parse_args(argv)
    try:
        splits = build(args.source, args.n_train, args.n_test, args.n_eval, args.seed,
                       args.classes.split(",") if args.classes else None, args.min_chars, args.max_chars,
                       args.harmful, args.redundant, args.rare, args.flip, args.halves, args.anchored,
                       args.eval_planted)
    except (MissingSource, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    manifest = write(splits, args.out)
    print(json.dumps({k: manifest[k] for k in ("sizes", "label_counts", "planted")}))
    print(manifest["command"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
