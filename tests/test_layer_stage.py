"""Methods that prune inside the language model (FastV, PyramidDrop, DART) on tiny VLMs.

Generation and logits equal the hand-run twin of :mod:`layer_stage_reference`; a budget of every
token is bit-identical, ``remove`` restores the model, and the scores are the attention rows.
"""

from __future__ import annotations

import functools

import pytest
import torch

import visprune
from layer_stage_models import METHODS, deep
from layer_stage_reference import (
    FAMILIES,
    STEPS,
    _no_grad,  # noqa: F401 (autouse)
    close,
    compat_cache,
    generate,
    greedy,
    layer_inputs,
    lm_mask,
    pair,
    reference_generate,
    stage_indices,
    two_part,
)
from tiny_vlms import GENERATE, collate, ragged_samples
from visprune.adapters import layer_signals


@pytest.mark.parametrize(("method", "params"), METHODS, ids=[m for m, _ in METHODS])
@pytest.mark.parametrize("family", FAMILIES)
def test_generate_matches_two_part_reference(family, method, params):
    """With a cache: a left-padded batch (rows of different lengths and image counts) gives the
    hand-built two-part forward's logits and greedy tokens at every step."""
    model, twin = pair(family)
    data = collate(ragged_samples(family, model))
    with visprune.apply(model, method, **params) as handle:
        tokens, logits = generate(model, data)
        selections = handle.selections
    assert all(len(s.kept) < s.n for s in selections)
    want_tokens, want_logits = reference_generate(twin, data, selections)
    close(logits, want_logits)
    assert torch.equal(tokens, want_tokens)


@pytest.mark.parametrize(("method", "params"), METHODS, ids=[m for m, _ in METHODS])
@pytest.mark.parametrize("family", ["llava", "qwen2_vl"])
def test_forward_logits_match_two_part_reference(family, method, params):
    """``model(**data)`` (no generate): the shortened logits of every kept row."""
    model, twin = pair(family)
    data = collate(ragged_samples(family, model))
    with visprune.apply(model, method, **params) as handle:
        logits = model(**data).logits
        selections = handle.selections
    calls = layer_inputs(twin, lambda: twin(**data))
    want, valid = two_part(
        twin, calls[0], lm_mask(twin, data), stage_indices(data, selections), compat_cache(twin)
    )
    assert logits.shape == want.shape
    torch.testing.assert_close(logits[valid], want[valid], atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize(("method", "params"), METHODS[:2], ids=[m for m, _ in METHODS[:2]])
def test_generate_without_cache_is_pruned_forward_per_step(method, params):
    """``use_cache=False`` re-runs the prefill every step (selecting again, as published): each
    step's token is the greedy token of a pruned forward over the prompt so far, whose logits
    equal the two-part reference."""
    family = "llava"
    model, twin = pair(family)
    data = collate(ragged_samples(family, model))
    with visprune.apply(model, method, **params) as handle:
        tokens, _ = generate(model, data, use_cache=False)
        step = {key: value for key, value in data.items()}
        for number in range(STEPS):
            mask = step["attention_mask"]
            positions = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 1)
            logits = model(**step, position_ids=positions).logits[:, -1]
            selections = handle.selections
            calls = layer_inputs(twin, functools.partial(twin, **step, position_ids=positions))
            want, _ = two_part(
                twin, calls[0], mask, stage_indices(step, selections), compat_cache(twin)
            )
            torch.testing.assert_close(logits, want[:, -1], atol=2e-5, rtol=1e-4)
            assert torch.equal(greedy(logits), tokens[:, number])
            step["input_ids"] = torch.cat([step["input_ids"], tokens[:, number : number + 1]], 1)
            step["attention_mask"] = torch.cat([mask, torch.ones_like(mask[:, :1])], 1)


KEEP_ALL = [
    ("fastv", {"layer": 2, "budget": 1.0}),
    ("pdrop", {"layers": (1, 2, 3), "budget": 1.0, "ratio": 1.0}),
    ("dart", {"layer": 2, "budget": 10**6}),
]


@pytest.mark.parametrize(("method", "params"), KEEP_ALL, ids=[m for m, _ in KEEP_ALL])
@pytest.mark.parametrize("family", ["llava", "qwen2_vl"])
def test_budget_of_all_tokens_is_bit_identical(family, method, params):
    model = deep(family)
    data = collate(ragged_samples(family, model))
    want = model(**data).logits
    want_tokens = model.generate(**data, **GENERATE)
    with visprune.apply(model, method, **params) as handle:
        assert torch.equal(model(**data).logits, want)
        assert torch.equal(model.generate(**data, **GENERATE), want_tokens)
        assert all(torch.equal(s.kept, torch.arange(s.n)) for s in handle.selections)


def test_remove_restores_and_selections_record_the_layers():
    model = deep("llava")
    data = collate(ragged_samples("llava", model))
    want = model(**data).logits
    handle = visprune.apply(model, "pdrop", layers=(1, 3), budget=0.75)
    model(**data)
    records = handle.selections
    assert records and all(
        s.layer == 3 and [layer for layer, _ in s.stages] == [1, 3] for s in records
    )
    for record in records:
        first, last = record.stages[0][1], record.stages[1][1]
        assert set(last.tolist()) <= set(first.tolist())
        assert torch.equal(last, record.kept)
        assert torch.equal(record.positions, record.candidates[record.kept])
    handle.remove()
    handle.remove()
    assert all(not layer._forward_pre_hooks for layer in model.model.language_model.layers)
    assert not model.model.language_model._forward_hooks
    assert torch.equal(model(**data).logits, want)


def test_recomputed_attention_row_equals_eager_attention():
    """The score row recomputed from q/k equals the eager attention weights of that layer."""
    model = deep("qwen2_vl", attn="eager")
    data = collate(ragged_samples("qwen2_vl", model))
    calls: dict = {}
    layer = model.model.language_model.layers[1]

    def record(module, args, kwargs):
        calls.update(hidden=args[0] if args else kwargs["hidden_states"], **kwargs)

    hook = layer.register_forward_pre_hook(record, with_kwargs=True)
    out = model(**data, output_attentions=True)
    hook.remove()
    hidden = calls["hidden"]
    cos, sin = (part.expand(hidden.shape[0], -1, -1) for part in calls["position_embeddings"])
    batch, length, _ = hidden.shape
    query = torch.full((batch,), length - 1)
    mask = data["attention_mask"].bool()
    got = layer_signals.last_token_attention(layer, hidden, cos, sin, query, mask)
    want = out.attentions[1][:, :, -1].float().mean(1)
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)


def test_fastv_keeps_the_most_attended_tokens():
    """FastV's picks are the top attention of the last token at layer K - 1 (eager weights)."""
    model = deep("llava", attn="eager")
    data = collate(ragged_samples("llava", model))
    attentions = model(**data, output_attentions=True).attentions
    with visprune.apply(model, "fastv", layer=2, budget=2) as handle:
        model(**data)
    scores = attentions[1][:, :, -1].float().mean(1)
    for record in handle.selections:
        row = scores[record.sample, record.candidates]
        want = torch.sort(row, descending=True, stable=True).indices[:2].sort().values
        assert torch.equal(record.kept, want)


def test_qwen3_vl_prunes_only_after_its_deepstack_layers():
    """Deepstack features land on the full sequence's outputs of layers 0 and 1 (tiny model):
    pruning before layer 2 is refused at apply, from layer 2 on it matches the reference."""
    model, twin = pair("qwen3_vl")
    with pytest.raises(ValueError, match="deepstack"):
        visprune.apply(model, "fastv", layer=1, budget=2)
    data = collate(ragged_samples("qwen3_vl", model))
    with visprune.apply(model, "fastv", layer=2, budget=0.5) as handle:
        tokens, logits = generate(model, data)
        selections = handle.selections
    want_tokens, want_logits = reference_generate(twin, data, selections)
    close(logits, want_logits)
    assert torch.equal(tokens, want_tokens)


def test_flops_count_the_layers_before_the_pruning_on_every_token():
    from visprune.flops import model_flops

    config = deep("llava").config
    kept = model_flops(config, 8, 10, kept_visual_tokens=4)["prefill"].total
    same = model_flops(config, 8, 10, kept_visual_tokens=4, layer_kept_visual_tokens=[4] * 4)
    full = model_flops(config, 8, 10)["prefill"].total
    half = model_flops(config, 8, 10, kept_visual_tokens=4, layer_kept_visual_tokens=[8, 8, 4, 4])
    assert same["prefill"].total == kept
    assert half["prefill"].total == pytest.approx((kept + full) / 2)
    with pytest.raises(ValueError, match="entries"):
        model_flops(config, 8, 10, kept_visual_tokens=4, layer_kept_visual_tokens=[8, 4])
