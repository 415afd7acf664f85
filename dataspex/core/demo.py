"""A built-in sentiment data set with planted pairwise interactions and their ground truth.

Generated deterministically from word lists (no download), so the default job and the tests can check
that dataspex finds what was planted:

* **harmful pairs**: two mislabelled near-paraphrases of one test sentence. Each alone nudges the model
  towards the wrong label; together they flip the prediction, so keeping both raises that test example's
  loss by more than the sum of keeping each (positive second difference, positive joint effect).
* **redundant pairs**: two correctly labelled near-copies of a test sentence whose made-up key word the
  model cannot know from pre-training. Either copy alone teaches it; removing both hurts (positive second
  difference, negative joint effect).

The remaining "bulk" examples are plain sentences whose sentiment the pre-trained model already reads well.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

LABEL_NAMES = ["negative", "positive"]

_SUBJECTS = [
    "movie", "plot", "acting", "music", "ending", "script", "camera work", "dialogue", "cast", "story",
    "hotel", "room", "breakfast", "staff", "view", "pool", "service", "menu", "dessert", "pasta",
    "coffee", "price", "location", "concert", "show", "album", "game", "book", "lecture", "trip",
]
_POSITIVE = ["wonderful", "excellent", "delightful", "superb", "fantastic", "lovely", "brilliant", "great"]
_NEGATIVE = ["terrible", "awful", "dreadful", "horrible", "boring", "disappointing", "poor", "bad"]

# Harmful-pair targets: a clear sentence (the pre-trained model gets it right) and two wrong-label paraphrases.
_HARMFUL = [
    ("the waiter was friendly", 1, ["the waiter was very friendly", "honestly the waiter was friendly"]),
    ("the soup was cold", 0, ["the soup was really cold", "sadly the soup was cold"]),
    ("the pianist was magnificent", 1, ["the pianist was truly magnificent", "i thought the pianist was magnificent"]),
    ("the bus was filthy", 0, ["the bus was completely filthy", "sadly the bus was filthy"]),
    ("the garden was beautiful", 1, ["the garden was so beautiful", "honestly the garden was beautiful"]),
    ("the seats were uncomfortable", 0, ["the seats were very uncomfortable", "sadly the seats were uncomfortable"]),
]
# Redundant-pair targets: a made-up word whose sentiment only the two copies teach.
_REDUNDANT = [
    ("the zorblat was glimmy", 1, ["the zorblat was so glimmy", "our zorblat was glimmy"]),
    ("the quenfit was drabbish", 0, ["the quenfit was quite drabbish", "our quenfit was drabbish"]),
    ("the mirdle was splendorous", 1, ["the mirdle was very splendorous", "our mirdle was splendorous"]),
    ("the vostrum was gloopy", 0, ["the vostrum was rather gloopy", "our vostrum was gloopy"]),
    ("the plinket was shimmersome", 1, ["the plinket was so shimmersome", "our plinket was shimmersome"]),
    ("the traxel was murkish", 0, ["the traxel was rather murkish", "our traxel was murkish"]),
]


@dataclass
class DemoData:
    """The demo splits and what was planted in them.

    ``planted`` has one row per planted pair: kind ("harmful" or "redundant"), train indices i < j, and the
    index of the test example they act on.
    """

    train_texts: list[str]
    train_labels: np.ndarray  # (n_train,) int64, index into LABEL_NAMES
    test_texts: list[str]
    test_labels: np.ndarray  # (n_test,) int64
    planted: list[dict]
    label_names: list[str]
    eval_texts: list[str] = field(default_factory=list)  # the eval split (empty unless n_eval > 0)
    eval_labels: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))


def make_demo(n_train: int = 64, n_harmful: int = 4, n_redundant: int = 4, n_test_bulk: int = 8,
              seed: int = 0, n_eval: int = 0) -> DemoData:
    """Build the demo set: ``n_train`` training sentences (2 per planted pair, the rest bulk),
    ``n_harmful + n_redundant + n_test_bulk`` test sentences and ``n_eval`` eval sentences. Same arguments, same
    data, on any machine; ``n_eval`` changes nothing else.

    The eval split restates each planted pair's test sentence in other words ("i found that ...": the planted
    copies act on it as on the test sentence, without the test set's own text) and fills the rest with bulk
    sentences used nowhere else; with fewer than that many eval rows, the restated ones come first."""
    if not 0 <= n_harmful <= len(_HARMFUL) or not 0 <= n_redundant <= len(_REDUNDANT):
        raise ValueError(f"at most {len(_HARMFUL)} harmful and {len(_REDUNDANT)} redundant pairs can be planted")
    n_bulk = n_train - 2 * (n_harmful + n_redundant)
    if n_bulk < 2:
        raise ValueError(f"n_train={n_train} leaves no room for bulk examples beside the planted pairs")
    rng = np.random.default_rng(seed)
    bulk_train, bulk_test, bulk_eval = _bulk_sentences(n_bulk, n_test_bulk, rng, n_eval)

    train: list[tuple[str, int]] = list(bulk_train)
    test: list[tuple[str, int]] = []
    planted_rows = []
    for kind, specs, count in (("harmful", _HARMFUL, n_harmful), ("redundant", _REDUNDANT, n_redundant)):
        for target, label, (first, second) in specs[:count]:
            # harmful copies carry the wrong label; redundant copies the right one
            copy_label = 1 - label if kind == "harmful" else label
            planted_rows.append({"kind": kind, "pair": (len(train), len(train) + 1), "test": len(test)})
            train += [(first, copy_label), (second, copy_label)]
            test.append((target, label))
    restated = [(f"i found that {text}", label) for text, label in test]
    evals = (restated + bulk_eval)[:n_eval]
    test += bulk_test

    # Shuffle the training set so planted pairs are not adjacent; remap the planted indices.
    order = rng.permutation(len(train))
    new_index = np.empty_like(order)
    new_index[order] = np.arange(len(order))
    train = [train[k] for k in order]
    planted = []
    for row in planted_rows:
        i, j = sorted(int(new_index[k]) for k in row["pair"])
        planted.append({"kind": row["kind"], "i": i, "j": j, "test": row["test"]})
    return DemoData(
        train_texts=[t for t, _ in train], train_labels=np.array([y for _, y in train], dtype=np.int64),
        test_texts=[t for t, _ in test], test_labels=np.array([y for _, y in test], dtype=np.int64),
        planted=planted, label_names=list(LABEL_NAMES),
        eval_texts=[t for t, _ in evals], eval_labels=np.array([y for _, y in evals], dtype=np.int64),
    )


def _bulk_sentences(n_train: int, n_test: int, rng: np.random.Generator, n_eval: int = 0):
    """Distinct "the <subject> was <adjective>" sentences, balanced across labels, split train/test, and up to
    ``n_eval`` more for the eval split. Those come from the same permutation after the train and test picks, so
    asking for them changes neither the other splits nor the random stream that later shuffles the train set."""
    combos = [(s, a, 1) for s in _SUBJECTS for a in _POSITIVE] + [(s, a, 0) for s in _SUBJECTS for a in _NEGATIVE]
    order = rng.permutation(len(combos))
    picks = order[: n_train + n_test]
    extra = [combos[k] for k in order[n_train + n_test: n_train + n_test + n_eval]]
    # Alternate labels so both classes are represented whatever the sizes.
    pos = [combos[k] for k in picks if combos[k][2] == 1]
    neg = [combos[k] for k in picks if combos[k][2] == 0]
    interleaved = [x for pair in zip(pos, neg) for x in pair] + pos[len(neg):] + neg[len(pos):]
    sentences = [(f"the {s} was {a}", y) for s, a, y in interleaved]
    return (sentences[:n_train], sentences[n_train:n_train + n_test],
            [(f"the {s} was {a}", y) for s, a, y in extra])
