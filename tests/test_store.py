import os
import warnings

import numpy as np
import pytest

from dataspex.design import Design, random_masks
from dataspex.core.errors import DataspexError
from dataspex.core.files import load_npz, save_npz
from dataspex.store import RunStore


@pytest.fixture
def store(tmp_path):
    s = RunStore(str(tmp_path / "run"))
    masks = random_masks(12, 10, 0.5, np.random.default_rng(0))
    s.save_design(Design(masks, np.arange(10), ["fit"] * 8 + ["heldout"] * 2, {"kind": "random"}))
    return s


def _write(store, ids, value=0.0):
    design = store.load_design()
    ids = np.asarray(ids)
    losses = value + np.arange(len(ids))[:, None] + np.zeros((len(ids), 3))
    return store.write_results(ids, design.masks[ids], losses, -losses)


def test_design_round_trip(store):
    design = store.load_design()
    assert design.masks.shape == (10, 12) and design.masks.dtype == np.uint8
    assert design.roles.tolist() == ["fit"] * 8 + ["heldout"] * 2
    assert np.array_equal(design.masks, random_masks(12, 10, 0.5, np.random.default_rng(0)))


def test_results_ordered_and_deduplicated(store):
    _write(store, [5, 1, 3], value=10.0)
    _write(store, [3, 0], value=20.0)  # mask 3 twice: the first file (by name) wins
    res = store.load_results()
    assert res.mask_ids.tolist() == [0, 1, 3, 5]
    assert res.losses.shape == (4, 3) and np.array_equal(res.margins, -res.losses)
    assert store.done_ids() == {0, 1, 3, 5}
    assert np.array_equal(res.masks, store.load_design().masks[[0, 1, 3, 5]])


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_damaged_file_is_quarantined_not_used(store, damage):
    good = _write(store, [0, 1])
    bad = _write(store, [2, 3])
    data = open(bad, "rb").read()
    # truncated: the zip no longer opens; flip: it opens but its checksum no longer matches the arrays
    data = data[: len(data) // 2] if damage == "truncate" else _with_wrong_checksum(data)
    with open(bad, "wb") as fh:
        fh.write(data)
    with pytest.warns(UserWarning, match="quarantined"):
        res = store.load_results()
    assert res.mask_ids.tolist() == [0, 1]
    assert not os.path.exists(bad)
    assert os.path.exists(os.path.join(store.run_dir, "results", "quarantine", os.path.basename(bad)))
    assert os.path.exists(good)


def _with_wrong_checksum(data):
    import io
    import json
    import zipfile

    src = zipfile.ZipFile(io.BytesIO(data))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as dst:
        for name in src.namelist():
            payload = src.read(name)
            if name == "__meta__.npy":
                arr = np.load(io.BytesIO(payload), allow_pickle=False)
                meta = json.loads(str(arr))
                meta["checksum"] = "0" * 64
                buf = io.BytesIO()
                np.save(buf, np.array(json.dumps(meta)))
                payload = buf.getvalue()
            dst.writestr(name, payload)
    return out.getvalue()


def test_results_for_other_masks_are_quarantined(store):
    design = store.load_design()
    store.write_results([0], 1 - design.masks[[0]], np.zeros((1, 3)), np.zeros((1, 3)))
    with pytest.warns(UserWarning, match="do not match this run's design"):
        assert len(store.load_results()) == 0


def test_fingerprint_mismatch_refuses(store):
    store.check_fingerprint({"model": "a", "data": "x"}, create=True)
    store.check_fingerprint({"model": "a", "data": "x"}, create=False)
    with pytest.raises(DataspexError, match="different model"):
        store.check_fingerprint({"model": "b", "data": "x"}, create=False)


def test_not_a_run_dir(tmp_path):
    with pytest.raises(DataspexError, match="not a dataspex run directory"):
        RunStore(str(tmp_path)).check_fingerprint({}, create=False)
    with pytest.raises(DataspexError, match="no design.npz"):
        RunStore(str(tmp_path)).load_design()


def test_no_stray_temp_files(store):
    _write(store, [0, 1, 2])
    leftovers = [f for f in os.listdir(os.path.join(store.run_dir, "results")) if f.startswith(".tmp")]
    assert leftovers == []
