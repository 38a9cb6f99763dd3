"""The contract every registered method must satisfy, over shapes, budgets, dtypes and devices.

Parametrized over ``visprune.list_methods()``: a newly registered method is tested here without
any change to this file.
"""

from __future__ import annotations

import pytest
import torch

import visprune
from conftest import (
    DEVICES,
    INDEX_BASED,
    LAYER_STAGE,
    MERGING_NAMES,
    METHOD_NAMES,
    NO_BUDGET,
    STRUCTURED_TIES,
    assert_valid,
    cls_attention_of,
    expected_k,
    make_tokens,
    run,
    text_kwargs,
    uses_text,
)

#: (n, d) single images and (b, n, d) batches (video frames).
SHAPES = [(1, 8), (2, 3), (37, 16), (144, 64), (3, 37, 16), (5, 20, 8)]
BUDGETS = [1, 10, 0.25, 0.098, 1.0]
DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def _cases():
    for name in METHOD_NAMES:
        for budget in [None] if name in NO_BUDGET else BUDGETS:
            yield name, budget


CASES = list(_cases())
CASE_IDS = [f"{name}-{budget}" for name, budget in CASES]


def _split(shape: tuple[int, ...]) -> tuple[int | None, int, int]:
    return (None, *shape) if len(shape) == 2 else shape


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize(("name", "budget"), CASES, ids=CASE_IDS)
def test_output_contract(name, budget, shape, dtype, device):
    """Indices are int64, of length k, unique, ascending, in range, on device, deterministic.

    Low-precision input gives the same picks as its float32 upcast (selection runs in float32).
    """
    batch, n, d = _split(shape)
    tokens = make_tokens(shape, seed=n * 31 + d, dtype=dtype).to(device)
    extra = text_kwargs(name, d, batch, shared=False)
    extra = {
        key: [t.to(dtype).to(device) for t in value]
        if isinstance(value, list)
        else value.to(dtype).to(device)
        for key, value in extra.items()
    }
    k = expected_k(name, budget, n)

    kept = run(name, tokens, budget, **extra)

    assert_valid(kept, n, k, batch, tokens.device)
    assert torch.equal(kept, run(name, tokens, budget, **extra)), "not deterministic"
    if dtype != torch.float32:
        upcast = {
            key: [t.float() for t in value] if isinstance(value, list) else value.float()
            for key, value in extra.items()
        }
        assert torch.equal(kept, run(name, tokens.float(), budget, **upcast))


@pytest.mark.parametrize("shared_text", [True, False], ids=["shared-text", "text-list"])
@pytest.mark.parametrize("shape", [(4, 37, 16), (3, 60, 32), (2, 9, 5)], ids=str)
@pytest.mark.parametrize("budget", [3, 0.3])
@pytest.mark.parametrize("name", METHOD_NAMES)
def test_batched_equals_per_item(name, budget, shape, shared_text):
    """A ``(b, n, d)`` batch gives exactly the per-item results, stacked."""
    batch, _, d = shape
    tokens = make_tokens(shape, seed=7)
    if name in NO_BUDGET:
        budget = None
    extra = text_kwargs(name, d, batch, shared=shared_text)

    batched = run(name, tokens, budget, **extra)

    singles = []
    for item in range(batch):
        text = extra.get("text")
        if isinstance(text, list):
            text = text[item]
        single_extra = {} if text is None else {"text": text}
        singles.append(run(name, tokens[item], budget, **single_extra))
    assert torch.equal(batched, torch.stack(singles))


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_batched_items_are_independent(name):
    """Changing one item of a batch never changes the picks of another."""
    tokens = make_tokens((3, 40, 12), seed=3)
    budget = None if name in NO_BUDGET else 7
    extra = text_kwargs(name, 12, 3, shared=False)
    before = run(name, tokens, budget, **extra)
    other = tokens.clone()
    other[1] = make_tokens((40, 12), seed=99)
    after = run(name, other, budget, **extra)
    assert torch.equal(before[[0, 2]], after[[0, 2]])


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_budget_at_least_n_keeps_all(name):
    """A budget of ``n`` or more (or the fraction 1.0) keeps every token, in order."""
    n, d = 23, 6
    tokens = make_tokens((n, d), seed=5)
    extra = text_kwargs(name, d)
    budgets = [None] if name in NO_BUDGET else [n, n + 5, 10**9, 1.0]
    for budget in budgets:
        assert torch.equal(run(name, tokens, budget, **extra), torch.arange(n))
    batched = make_tokens((2, n, d), seed=6)
    for budget in budgets:
        expected = torch.arange(n).expand(2, n)
        assert torch.equal(run(name, batched, budget, **extra), expected)


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_power_of_two_scaling_changes_nothing(name):
    """Scaling all tokens by a power of two (exact in float) leaves the picks unchanged."""
    tokens = make_tokens((50, 24), seed=11)
    budget = None if name in NO_BUDGET else 9
    extra = text_kwargs(name, 24)
    reference = run(name, tokens, budget, **extra)
    for scale in (2.0**-6, 2.0**10):
        assert torch.equal(run(name, tokens * scale, budget, **extra), reference)


@pytest.mark.parametrize("name", [m for m in METHOD_NAMES if m not in INDEX_BASED])
def test_permuting_tokens_permutes_the_picks(name):
    """Content-based methods pick the same tokens whatever their order (no ties here)."""
    n, d = 45, 20
    tokens = make_tokens((n, d), seed=13)
    extra = text_kwargs(name, d)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(0))
    kept = run(name, tokens, 8, **extra)
    kept_permuted = run(name, tokens[perm], 8, **extra)
    assert torch.equal(perm[kept_permuted].sort().values, kept)


@pytest.mark.parametrize("name", [m for m in METHOD_NAMES if m not in NO_BUDGET])
def test_identical_tokens_tie_to_lowest_indices(name):
    """With every token identical (exact values), ties go to the lowest indices."""
    row = torch.tensor([1.0, -2.0, 0.5, 4.0, 0.0, -0.25])
    tokens = row.expand(12, 6).clone()
    extra = text_kwargs(name, 6)
    kept = run(name, tokens, 5, **extra)
    if name in INDEX_BASED:
        assert kept.numel() == 5
    elif name in STRUCTURED_TIES:  # the attention part ties to the lowest indices
        assert kept.numel() == 5 and torch.equal(kept[:2], torch.arange(2))
    else:
        assert torch.equal(kept, torch.arange(5))


@pytest.mark.parametrize("name", sorted(LAYER_STAGE))
def test_layer_methods_need_their_scores(name):
    """Without a model there is nothing to measure the layer's scores on: select says so."""
    tokens = make_tokens((12, 8), seed=4)
    with pytest.raises(ValueError, match="inside the language model"):
        visprune.select(name, tokens, 3)
    with pytest.raises(ValueError, match=r"shape \(12,\)"):
        visprune.select(name, tokens, 3, scores=torch.ones(11))


@pytest.mark.parametrize("name", [m for m in METHOD_NAMES if uses_text(m)])
def test_text_dtype_does_not_matter(name):
    """Low-precision text gives the same picks as its float32 upcast."""
    tokens = make_tokens((30, 16), seed=21)
    text = text_kwargs(name, 16)["text"]
    for dtype in (torch.float16, torch.bfloat16):
        low = text.to(dtype)
        assert torch.equal(run(name, tokens, 6, text=low), run(name, tokens, 6, text=low.float()))


# --------------------------------------------------------------- merging methods (reduce)
def merge_context(tokens: torch.Tensor, seed: int = 23) -> visprune.Context:
    """CLS attention, keys and a CLS state for ``tokens`` ``(n, d)`` or ``(b, n, d)``."""
    generator = torch.Generator().manual_seed(seed)
    keys = torch.randn(*tokens.shape[:-1], 5, generator=generator)
    cls = torch.randn(*tokens.shape[:-2], tokens.shape[-1], generator=generator)
    return visprune.Context(cls_attention=cls_attention_of(tokens), vision_keys=keys, cls_state=cls)


@pytest.mark.parametrize("with_cls", [True, False], ids=["cls", "no-cls"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("budget", BUDGETS)
@pytest.mark.parametrize("name", MERGING_NAMES)
def test_reduce_contract(name, budget, shape, dtype, with_cls):
    """Kept indices follow the selection contract; kept + merged is the budget; merged tokens
    come in the tokens' dtype and width; low precision keeps the float32 picks."""
    batch, n, d = _split(shape)
    tokens = make_tokens(shape, seed=n * 7 + d, dtype=dtype)
    ctx = merge_context(tokens.float())
    if not with_cls:
        ctx = visprune.Context(cls_attention=ctx.cls_attention, vision_keys=ctx.vision_keys)
    method = visprune.get_method(name, budget=budget)
    k = expected_k(name, budget, n)
    kept, merged = method.reduce(tokens, None, ctx)
    m = kept.shape[-1]
    if m:
        assert_valid(kept, n, m, batch, tokens.device)
    else:  # a budget of 1 with a CLS state: the CLS token alone
        assert kept.dtype == torch.int64 and with_cls and k == 1
    assert m + merged.shape[-2] == k
    assert merged.dtype == dtype and merged.shape[-1] == d
    assert merged.shape[:-2] == tokens.shape[:-2]
    again = method.reduce(tokens, None, ctx)
    assert torch.equal(kept, again.kept) and torch.equal(merged, again.merged)
    if dtype != torch.float32:
        assert torch.equal(kept, method.reduce(tokens.float(), None, ctx).kept)


@pytest.mark.parametrize("name", MERGING_NAMES)
def test_reduce_batched_equals_per_item(name):
    tokens = make_tokens((4, 37, 16), seed=7)
    ctx = merge_context(tokens)
    method = visprune.get_method(name, budget=9)
    batched = method.reduce(tokens, None, ctx)
    for item in range(4):
        one = visprune.Context(
            cls_attention=ctx.cls_attention[item],
            vision_keys=ctx.vision_keys[item],
            cls_state=ctx.cls_state[item],
        )
        alone = method.reduce(tokens[item], None, one)
        assert torch.equal(batched.kept[item], alone.kept)
        torch.testing.assert_close(batched.merged[item], alone.merged, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", MERGING_NAMES)
def test_merging_methods_refuse_select(name):
    """``select`` would drop the merged tokens silently: it raises and points to ``reduce``."""
    with pytest.raises(ValueError, match=rf"{name} merges tokens.*reduce"):
        visprune.select(name, make_tokens((10, 4)), 3)


@pytest.mark.parametrize("name", MERGING_NAMES)
def test_reduce_bad_input_raises(name):
    tokens = make_tokens((12, 6))
    ctx = merge_context(tokens)
    method = visprune.get_method(name, budget=4)
    with pytest.raises(ValueError, match="needs cls_attention"):
        method.reduce(tokens, None, visprune.Context(vision_keys=ctx.vision_keys))
    with pytest.raises(ValueError, match="needs vision_keys"):
        method.reduce(tokens, None, visprune.Context(cls_attention=ctx.cls_attention))
    with pytest.raises(ValueError, match="cls_attention covers 11 tokens"):
        bad = visprune.Context(cls_attention=ctx.cls_attention[:, :11], vision_keys=ctx.vision_keys)
        method.reduce(tokens, None, bad)
    with pytest.raises(ValueError, match="vision_keys has 3 tokens per image"):
        bad = visprune.Context(cls_attention=ctx.cls_attention, vision_keys=ctx.vision_keys[:3])
        method.reduce(tokens, None, bad)
    nan = tokens.clone()
    nan[2, 1] = float("nan")
    with pytest.raises(ValueError, match="non-finite"):
        method.reduce(nan, None, ctx)
    with pytest.raises(ValueError, match="budget must be positive"):
        method.reduce(tokens, 0, ctx)
    with pytest.raises(ValueError, match=r"tokens must be a tensor \(n, d\)"):
        method.reduce(tokens[0], None, ctx)
