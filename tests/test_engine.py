"""The batched engine against the naive loop (independent peft fine-tunes): same seeds, same data order, same
per-test losses and margins."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from dataspex.core.data import Split
from dataspex.core.demo import make_demo
from dataspex.core.errors import DataspexError
from dataspex.core.models import load_base_model, load_tokenizer
from dataspex.train import engine, get_engine, modules, naive, optimizer, packing
from dataspex.train.common import encode

TOL = 1e-4
MINILM = {"name_or_path": "bundled:all-minilm-l6-v2", "task": "classification"}
# Kept counts 10, 6 and 1 at batch size 4: 3, 2 and 1 steps per epoch, ragged last batches, so adapters in
# one pass differ in batch size and step count.
MASKS = np.zeros((3, 12), dtype=np.uint8)
MASKS[0, :10] = 1
MASKS[1, [0, 2, 3, 5, 8, 11]] = 1
MASKS[2, 7] = 1
IDS = [11, 3, 7]


def train_cfg(**overrides):
    cfg = {"epochs": 2, "batch_size": 4, "lr": 5e-3, "weight_decay": 0.01, "seed": 0, "seed_policy": "per_mask",
           "adapters_per_pass": "auto", "prefix_cache": "auto", "device": "cpu", "precision": "fp32"}
    return OmegaConf.create({**cfg, **overrides})


def lora_cfg(layers=None, targets=("query", "value"), train_head=True, r=8):
    return OmegaConf.create({"r": r, "alpha": 2 * r, "dropout": 0.0, "target_modules": list(targets),
                             "layers": layers, "train_head": train_head})


@pytest.fixture(scope="module", autouse=True)
def threads():
    """One thread: these small fine-tunes gain little from two, and lose a lot when the cores are shared."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def minilm():
    demo = make_demo(n_train=12, n_harmful=1, n_redundant=1, n_test_bulk=4)
    tokenizer = load_tokenizer(OmegaConf.create(MINILM))
    train = encode(Split(demo.train_texts, demo.train_labels), tokenizer, "classification", 64)
    test = encode(Split(demo.test_texts, demo.test_labels), tokenizer, "classification", 64)
    return load_base_model(OmegaConf.create(MINILM), 2, 0), train, test


def causal(arch: str):
    cfg = OmegaConf.create({"name_or_path": f"tiny:{arch}", "task": "causal_lm"})
    tokenizer = load_tokenizer(cfg)
    words = ["soup", "room", "film", "train", "walk", "book"]
    texts = [f"the {words[i % 6]} today was" for i in range(12)]
    train = encode(Split(texts, None, [" good" if i % 3 else " bad" for i in range(12)]), tokenizer, "causal_lm", 64)
    test = encode(Split(["the soup was", "my long walk today was"], None, [" bad", " good"]), tokenizer,
                  "causal_lm", 64)
    return load_base_model(cfg, None, 0), train, test


def run(module, base, lora, cfg, train, test, masks=MASKS, ids=IDS):
    engine._ENGINE_CACHE.clear()
    return list(module.train_masks(base, lora, cfg, train, test, masks, ids))


def assert_same(reference, batched):
    """Every mask once (the batched engine yields in pass order, naive in input order), same losses, margins
    and training losses."""
    assert sorted(m for m, *_ in batched) == sorted(m for m, *_ in reference)
    assert len({m for m, *_ in batched}) == len(batched)
    by_id = {m: rest for m, *rest in batched}
    for mask_id, *expected in reference:
        for a, b in zip(expected, by_id[mask_id]):  # losses, margins, training losses per epoch
            assert b.dtype == np.float64 and b.shape == a.shape
            np.testing.assert_allclose(b, a, rtol=0, atol=TOL)


@pytest.mark.parametrize("layers, targets, per_pass, cache", [
    (None, ("query", "value"), "auto", "auto"),  # every layer adapted, one pass
    ("top:2", ("query", "value"), 2, True),  # prefix cache; passes of 2 and 1 adapters
    ("top:2", ("key", "value", "dense"), "auto", True),  # every linear but the query, [CLS] keys not folded
    ("top:1", ("query", "value"), "auto", False),  # frozen layers recomputed per batch
    ("top:1", ("query", "value"), "auto", True),  # the default: cached q/k/v, [CLS] attention token by token
    ("top:1", ("query",), 2, True),  # the value frozen: its cached output used as it is
    ("top:1", ("key", "value", "dense"), "auto", True),  # an adapted key on the cached base keys
])
def test_classification_matches_naive(minilm, layers, targets, per_pass, cache):
    base, train, test = minilm
    lora = lora_cfg(layers, targets)
    reference = run(naive, base, lora, train_cfg(), train, test)
    batched = run(engine, base, lora, train_cfg(adapters_per_pass=per_pass, prefix_cache=cache), train, test)
    assert_same(reference, batched)
    trained = {m: loss for m, loss, *_ in batched}
    assert not np.allclose(trained[IDS[0]], trained[IDS[2]])  # the masks did train differently


def test_each_pass_is_yielded_as_soon_as_it_is_done(minilm, monkeypatch):
    """Passes run in order of kept count (one mask per pass here: 7, then 3, then 11, the reverse of the input
    order): each pass's result comes out before the next pass trains, so the caller writes it and moves its
    progress bar at once, instead of holding it until every mask before it in the input is done."""
    base, train, test = minilm
    passes = []
    train_group = engine.Engine.train_group

    def counting(self, *args, **kwargs):
        passes.append(len(args[1]))  # the pass's adapters
        return train_group(self, *args, **kwargs)

    monkeypatch.setattr(engine.Engine, "train_group", counting)
    engine._ENGINE_CACHE.clear()
    cfg = train_cfg(epochs=1, adapters_per_pass=1)
    yielded = [(mask_id, len(passes)) for mask_id, *_ in engine.train_masks(base, lora_cfg(), cfg, train, test,
                                                                            MASKS, IDS)]
    assert yielded == [(7, 1), (3, 2), (11, 3)] and passes == [1, 1, 1]


def test_whole_model_runner_matches_naive(minilm, monkeypatch):
    """A model without a layer-by-layer runner goes through transformers whole, with the batched modules;
    here MiniLM with the runners hidden, LoRA on the attention output too."""
    base, train, test = minilm
    monkeypatch.setattr(engine, "RUNNERS", ())  # Engine looks its runners up in the engine module
    lora = lora_cfg("top:2", targets=("query", "value", "dense"))
    cfg = train_cfg(epochs=1, adapters_per_pass=2)
    assert_same(run(naive, base, lora, cfg, train, test), run(engine, base, lora, cfg, train, test))


@pytest.mark.parametrize("arch, targets, layers", [
    ("gpt2", ("c_attn", "c_proj"), None),  # Conv1D targets, every block
    ("gpt2", ("c_attn",), "top:1"),  # prefix cache
    ("llama", ("q_proj", "v_proj", "down_proj"), "top:1"),
])
def test_causal_lm_matches_naive(arch, targets, layers):
    base, train, test = causal(arch)
    lora = lora_cfg(layers, targets, train_head=False, r=4)
    cfg = train_cfg(lr=2e-2)
    reference = run(naive, base, lora, cfg, train, test)
    assert_same(reference, run(engine, base, lora, cfg, train, test))


def test_unsupported_setup_falls_back_to_naive(minilm, monkeypatch, caplog):
    """A LoRA setup the batched modules cannot reproduce (say DoRA) runs the naive loop, with a warning."""
    base, train, test = minilm

    def refuse(*args):
        raise modules.Unsupported("DoRA")

    monkeypatch.setattr(engine, "find_targets", refuse)  # as Engine looks it up
    cfg = train_cfg(epochs=1)
    with caplog.at_level("WARNING", logger="dataspex"):
        batched = run(engine, base, lora_cfg(), cfg, train, test, MASKS[1:], IDS[1:])
    assert "naive loop" in caplog.text
    assert_same(run(naive, base, lora_cfg(), cfg, train, test, MASKS[1:], IDS[1:]), batched)


def test_batched_adamw_matches_torch_with_skipped_steps():
    """Adapters missing a step keep their state and step count; the others follow torch's AdamW exactly."""
    torch.manual_seed(0)
    start = torch.randn(3, 5)
    grads = [torch.randn(3, 5) for _ in range(4)]
    active = [None, [0, 2], [2], None]
    flat = start.clone().requires_grad_(True)
    opt = optimizer.BatchedAdamW(flat, lr=0.1, weight_decay=0.05)
    for g, a in zip(grads, active):
        opt.step(flat, g, a)
    for k in range(3):
        p = torch.nn.Parameter(start[k].clone())
        ref = torch.optim.AdamW([p], lr=0.1, weight_decay=0.05)
        for g, a in zip(grads, active):
            if a is None or k in a:
                p.grad = g[k].clone()
                ref.step()
        torch.testing.assert_close(flat[k].detach(), p.detach(), rtol=0, atol=1e-6)


def test_pass_groups_keep_similar_kept_counts_together():
    groups = engine.pass_groups([5, 30, 6, 31, 7, 29, 4], per_pass=3)
    assert sorted(np.concatenate(groups).tolist()) == list(range(7))
    assert max(len(g) for g in groups) <= 3
    assert [sorted(g.tolist()) for g in groups] == [[0, 2, 6], [4, 5], [1, 3]]


def test_bad_masks_and_settings_are_refused(minilm):
    base, train, test = minilm
    with pytest.raises(DataspexError, match="keeps no training example"):
        run(engine, base, lora_cfg(), train_cfg(), train, test, np.zeros((1, 12), np.uint8), [0])
    with pytest.raises(DataspexError, match="adapters_per_pass"):
        engine.settings(train_cfg(adapters_per_pass=0))
    with pytest.raises(DataspexError, match="precision"):
        engine.settings(train_cfg(precision="fp8"))
    assert engine.settings(train_cfg(precision="bf16")).autocast is None  # CPU trains in fp32


def test_get_engine_names_the_two_engines():
    assert get_engine("naive") is naive.train_masks
    assert get_engine("batched") is engine.train_masks
    with pytest.raises(DataspexError, match="train.engine='fast' is not one of: naive, batched"):
        get_engine("fast")


@pytest.mark.parametrize("per_row", [[3, 1, 4, 2, 2, 5], [2, 2, 3, 3, 2, 2]])  # adapters' blocks ragged, uniform
def test_attend_first_packed_matches_padded_attention(per_row):
    """The [CLS] attention of the last layer, token by token with the value's LoRA applied after the weighted
    sum, against SDPA on right-padded rows with the LoRA applied to every token: same outputs, same gradients."""
    torch.manual_seed(0)
    heads, size, d, r, groups = 2, 3, 5, 2, 2
    lengths = torch.tensor(per_row)
    pk = packing.Packing(lengths, groups)
    t, n = int(lengths.sum()), len(per_row)
    q, k, v_base, x = (torch.randn(rows, heads * size, dtype=torch.float64) for rows in (n, t, t, t))
    x = x[:, :d]
    lora = modules.BatchedLoRA(torch.nn.Linear(d, heads * size))
    a = torch.randn(groups, r, d, dtype=torch.float64, requires_grad=True)
    b = torch.randn(groups, heads * size, r, dtype=torch.float64, requires_grad=True)
    q.requires_grad_(True)

    def reference():
        owner = torch.repeat_interleave(torch.arange(groups), lengths.view(groups, -1).sum(1))
        v = v_base + torch.einsum("tor,tr->to", b[owner], torch.einsum("trd,td->tr", a[owner], x))
        kp, vp = (pk.padded(z).view(n, -1, heads, size).transpose(1, 2) for z in (k, v))
        ctx = torch.nn.functional.scaled_dot_product_attention(q.view(n, 1, heads, size).transpose(1, 2), kp, vp,
                                                               attn_mask=pk.key_mask, scale=0.7)
        return ctx.transpose(1, 2).reshape(n, heads * size)

    lora.A, lora.B = a, b
    mine = pk.attend_first_packed(q, k, v_base, heads, 0.7, lora, x)
    expected = reference()
    torch.testing.assert_close(mine, expected, rtol=0, atol=1e-12)
    weights = torch.randn_like(mine)
    got = torch.autograd.grad((mine * weights).sum(), (q, a, b))
    want = torch.autograd.grad((expected * weights).sum(), (q, a, b))
    for g1, g2 in zip(got, want):
        torch.testing.assert_close(g1, g2, rtol=0, atol=1e-12)


def test_plateau_stop_matches_naive_and_stops_where_the_full_record_says(minilm):
    """train.plateau_tol: a mask trains exactly as without the stop up to the first epoch (from the second) whose
    mean training loss fell by less than the tolerance, then stops; its record is NaN after. The batched engine
    stops the same adapters after the same epochs as the naive loop, within one pass."""
    base, train, test = minilm
    lora = lora_cfg("top:1")
    full = {m: rest for m, *rest in run(naive, base, lora, train_cfg(epochs=6), train, test)}
    tol = 0.065  # on these masks: drops of 0.049-0.199 nats an epoch, none within 0.01 of the tolerance
    expected = {}
    for m, (_, _, record) in full.items():
        drops = record[1:-1] - record[2:]  # epoch k's drop, k = 2..6
        stop = [k for k, drop in zip(range(2, 7), drops) if drop < tol]
        expected[m] = stop[0] if stop else None
    assert len(set(expected.values())) == 3 and None in expected.values()  # a test that can tell engines apart

    cfg = train_cfg(epochs=6, plateau_tol=tol)
    reference = run(naive, base, lora, cfg, train, test)
    for m, losses, _, record in reference:
        stop = expected[m]
        if stop is None:
            np.testing.assert_array_equal(record, full[m][2])
            np.testing.assert_array_equal(losses, full[m][0])
        else:
            np.testing.assert_array_equal(record[: stop + 1], full[m][2][: stop + 1])
            assert np.isnan(record[stop + 1:]).all()
            assert not np.allclose(losses, full[m][0], atol=1e-3)  # it did stop early
    assert_same(reference, run(engine, base, lora, train_cfg(epochs=6, plateau_tol=tol, adapters_per_pass=3),
                               train, test))


def test_shared_seed_policy_orders_every_mask_by_one_permutation():
    """Common random numbers: under seed_policy=shared a mask's epoch order is the same permutation of all
    examples restricted to it, so a mask without example 5 trains on the others in exactly the same order."""
    from dataspex.train.common import epoch_batches, mask_schedule

    cfg = train_cfg(seed_policy="shared", epochs=3, batch_size=4)
    full = np.arange(12)
    seed, steps = mask_schedule(full, cfg, mask_id=1, n_train=12)
    _, without = mask_schedule(np.delete(full, 5), cfg, mask_id=2, n_train=12)
    gen = torch.Generator().manual_seed(0)
    perms = [torch.randperm(12, generator=gen).numpy() for _ in range(3)]
    assert seed == 0
    assert np.array_equal(np.concatenate(steps), np.concatenate(perms))
    assert np.array_equal(np.concatenate(without), np.concatenate([p[p != 5] for p in perms]))
    # per_mask keeps its own shuffles of the kept examples
    per_mask = train_cfg(seed_policy="per_mask", epochs=1, batch_size=4)
    s, steps = mask_schedule(full[:6], per_mask, mask_id=1, n_train=12)
    assert np.array_equal(np.concatenate(steps), np.concatenate(epoch_batches(full[:6], 1, 4, s)))


def test_shared_seed_policy_matches_naive(minilm):
    base, train, test = minilm
    cfg = train_cfg(seed_policy="shared")
    assert_same(run(naive, base, lora_cfg("top:1"), cfg, train, test),
                run(engine, base, lora_cfg("top:1"), cfg, train, test))


@pytest.mark.parametrize("lora_on, cached", [(True, True), (False, True), (True, False), (False, False)])
def test_fused_kernel_matches_the_torch_ops(lora_on, cached):
    """The fused [CLS] attention (train/kernels.py) against ``attend_first_packed`` in float64: same outputs,
    same gradients, with keys and values read in place from a larger cache (in shuffled order, no gradient) or
    given as packed tokens that need a gradient, with and without the value's LoRA."""
    from dataspex.train.kernels import HAVE_NUMBA

    if not HAVE_NUMBA:
        pytest.skip("numba does not import here")
    torch.manual_seed(1)
    heads, size, d, r, groups = 3, 4, 6, 2, 2
    lengths = torch.tensor([3, 1, 5, 2, 4, 2])
    pk = packing.Packing(lengths, groups)
    t, n = int(lengths.sum()), len(lengths)
    q = torch.randn(n, heads * size, dtype=torch.float64, requires_grad=True)
    x = torch.randn(t, d, dtype=torch.float64)
    lora = modules.BatchedLoRA(torch.nn.Linear(d, heads * size)) if lora_on else None
    params = [q]
    if lora_on:
        lora.A = torch.randn(groups, r, d, dtype=torch.float64, requires_grad=True)
        lora.B = torch.randn(groups, heads * size, r, dtype=torch.float64, requires_grad=True)
        params += [lora.A, lora.B]
    if cached:
        cache_k, cache_v = (torch.randn(t + 7, heads * size, dtype=torch.float64) for _ in range(2))
        tokens = torch.randperm(t + 7)[:t]
        k_in = v_in = None
        k_fused, v_fused = packing.CachedTokens(cache_k, tokens), packing.CachedTokens(cache_v, tokens)
        k_ref, v_ref = cache_k[tokens], cache_v[tokens]
    else:
        k_in, v_in = (torch.randn(t, heads * size, dtype=torch.float64, requires_grad=True) for _ in range(2))
        k_fused, v_fused, k_ref, v_ref = k_in, v_in, k_in, v_in
        params += [k_in, v_in]
    mine = pk.attend_first_fused(q, k_fused, v_fused, heads, 0.6, lora, x)
    expected = pk.attend_first_packed(q, k_ref, v_ref, heads, 0.6, lora, x)
    torch.testing.assert_close(mine, expected, rtol=0, atol=1e-12)
    weights = torch.randn_like(mine)
    got = torch.autograd.grad((mine * weights).sum(), params)
    want = torch.autograd.grad((expected * weights).sum(), params)
    for g1, g2 in zip(got, want):
        torch.testing.assert_close(g1, g2, rtol=0, atol=1e-12)


def test_the_attention_kernels_train_alike(minilm):
    """The default setup (top:1, cached keys and values) with the fused kernel and with the torch ops: the same
    losses to float32 rounding, and each engine's plan says which attention it ran."""
    from dataspex.train.kernels import HAVE_NUMBA

    if not HAVE_NUMBA:
        pytest.skip("numba does not import here")
    base, train, test = minilm
    lora = lora_cfg("top:1")
    fused = run(engine, base, lora, train_cfg(attention_kernel="fused"), train, test)
    plan_fused = engine._engine(base, lora, "classification", engine.settings(train_cfg(attention_kernel="fused")))
    ops = run(engine, base, lora, train_cfg(attention_kernel="torch"), train, test)
    plan_ops = engine._engine(base, lora, "classification", engine.settings(train_cfg(attention_kernel="torch")))
    assert "its attention by the fused kernel" in plan_fused.runner.describe()
    assert "its attention by torch ops" in plan_ops.runner.describe()
    by_id = {m: rest for m, *rest in ops}
    for mask_id, *values in fused:
        for a, b in zip(values, by_id[mask_id]):
            np.testing.assert_allclose(a, b, rtol=0, atol=1e-5)


def test_attention_kernel_settings(monkeypatch):
    with pytest.raises(DataspexError, match="train.attention_kernel='numba' is not one of: auto, fused, torch"):
        engine.settings(train_cfg(attention_kernel="numba"))
    assert engine.settings(train_cfg(attention_kernel="torch")).attention_kernel == "torch"
    # numba missing is mocked (it is installed here): auto falls back to the torch ops, fused refuses
    from dataspex.train import kernels

    monkeypatch.setattr(kernels, "HAVE_NUMBA", False)
    assert engine.settings(train_cfg()).attention_kernel == "torch"
    with pytest.raises(DataspexError, match="train.attention_kernel=fused needs numba"):
        engine.settings(train_cfg(attention_kernel="fused"))
