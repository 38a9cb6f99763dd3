"""Methods that prune inside the language model (FastV, PyramidDrop, DART) on tiny VLMs.

The reference never goes through visprune: a twin with the same weights runs its own decoder
layers by hand, the layers before each pruning layer on the full sequence (the inputs its own
``generate`` hands layer 0), then only the rows that ``handle.selections`` say were kept, with
the KV cache of the earlier layers cut to those rows, and decodes greedily from that cache.
"""

from __future__ import annotations

import functools

import pytest
import torch
from torch import Tensor

import visprune
from layer_stage_models import METHODS, deep
from tiny_vlms import GENERATE, SPECIAL, collate, ragged_samples, tiny
from visprune import compat
from visprune.adapters import layer_signals
from visprune.compat import PruningNotApplied

STEPS = GENERATE["max_new_tokens"]
FAMILIES = ["llava", "qwen2_vl", "internvl"]


@pytest.fixture(autouse=True)
def _no_grad():
    with torch.no_grad():
        yield


def pair(family: str):
    model = deep(family)
    twin = deep(family)
    return model, twin


def greedy(logits: Tensor) -> Tensor:
    logits = logits.clone()
    logits[:, list(SPECIAL)] = -torch.inf
    return logits.argmax(-1)


# ------------------------------------------------------------------------------ the reference
def layer_inputs(twin, run) -> list[dict]:
    """What the twin's decoder layer 0 receives in each forward of ``run()``."""
    seen: list[dict] = []

    def record(module, args, kwargs):
        seen.append(
            {
                "hidden": args[0] if args else kwargs["hidden_states"],
                "mask": kwargs.get("attention_mask"),
                "rotary": kwargs["position_embeddings"],
            }
        )

    def deepstack(module, args, kwargs):  # Qwen3-VL: added to the first layers' outputs
        if kwargs.get("visual_pos_masks") is not None:
            seen.append({"visual": kwargs["visual_pos_masks"]})
            seen.append({"levels": kwargs["deepstack_visual_embeds"]})

    language_model = twin.model.language_model
    hooks = [
        language_model.layers[0].register_forward_pre_hook(record, with_kwargs=True),
        language_model.register_forward_pre_hook(deepstack, with_kwargs=True),
    ]
    try:
        run()
    finally:
        for hook in hooks:
            hook.remove()
    extra = [call for call in seen if "hidden" not in call]
    calls = [call for call in seen if "hidden" in call]
    if extra:
        calls[0]["deepstack"] = (extra[0]["visual"], extra[1]["levels"])
    return calls


def lm_mask(twin, data: dict) -> Tensor:
    """The 2-D padding mask the language model sees (all ones when the data has none)."""
    mask = data.get("attention_mask")
    return torch.ones_like(data["input_ids"]) if mask is None else mask


def packed(keep: Tensor) -> Tensor:
    """``(B, L)`` bool -> ``(B, L')`` kept positions per row, left-padded with -1."""
    rows = [row.nonzero().squeeze(-1) for row in keep]
    longest = max(len(row) for row in rows)
    return torch.stack([torch.cat([row.new_full((longest - len(row),), -1), row]) for row in rows])


def stage_indices(data: dict, selections) -> list[tuple[int, Tensor]]:
    """Per pruning: its layer and the ``(B, L')`` positions kept from then on (padding is
    left out, so the longest row of real kept tokens sets the length)."""
    stages = []
    for number in range(len(selections[0].stages)):
        keep = lm_mask(None, data).bool()
        for record in selections:
            layer, kept = record.stages[number]
            keep[record.sample, record.candidates] = False
            keep[record.sample, record.candidates[kept]] = True
        stages.append((layer, packed(keep)))
    return stages


def causal(valid: Tensor) -> Tensor:
    """``(B, L)`` valid keys -> ``(B, 1, L, L)`` bool SDPA mask; padding rows see themselves."""
    length = valid.shape[1]
    lower = torch.ones(length, length, dtype=torch.bool).tril()
    mask = lower[None] & valid[:, None, :]
    mask |= torch.eye(length, dtype=torch.bool)[None] & ~valid[:, :, None]
    return mask[:, None]


def run_layers(twin, layers, hidden, mask, rotary, cache, deepstack=None, first=0):
    for number, layer in enumerate(layers, start=first):
        hidden = layer(
            hidden,
            attention_mask=mask,
            position_embeddings=rotary,
            use_cache=True,
            **compat.cache_argument(layer, cache),
        )
        hidden = hidden[0] if isinstance(hidden, tuple) else hidden
        if deepstack is not None and number < len(deepstack[1]):
            visual, levels = deepstack
            hidden = hidden.clone()
            hidden[visual] = hidden[visual] + levels[number]
    return hidden


def two_part(twin, first: dict, padding: Tensor, stages, cache):
    """Logits ``(B, L', V)`` of the hand-built pruned prefill; ``cache`` ends cut to the kept
    rows in every layer."""
    layers = list(twin.model.language_model.layers)
    batch, length, _ = first["hidden"].shape
    hidden, mask, rotary = first["hidden"], first["mask"], first["rotary"]
    current = torch.arange(length).expand(batch, -1)
    start = 0
    for layer, index in stages:
        deepstack = first.get("deepstack") if start == 0 else None
        hidden = run_layers(twin, layers[start:layer], hidden, mask, rotary, cache, deepstack)
        column = torch.full((batch, length), -1, dtype=torch.long)
        for row in range(batch):
            present = current[row] >= 0
            column[row, current[row][present]] = torch.arange(current.shape[1])[present]
        local = column.gather(1, index.clamp_min(0)).clamp_min(0)
        hidden = hidden.gather(1, local[..., None].expand(-1, -1, hidden.shape[-1]))
        for number in range(layer):
            entry = cache.layers[number]
            rows = local[:, None, :, None].expand(-1, entry.keys.shape[1], -1, entry.keys.shape[-1])
            entry.keys, entry.values = entry.keys.gather(2, rows), entry.values.gather(2, rows)
        safe = index.clamp_min(0)
        rotary = tuple(
            part.expand(batch, -1, -1).gather(1, safe[..., None].expand(-1, -1, part.shape[-1]))
            for part in first["rotary"]
        )
        valid = (index >= 0) & padding.bool().gather(1, safe)
        mask = causal(valid)
        current, start = index, layer
    hidden = run_layers(twin, layers[start:], hidden, mask, rotary, cache)
    return twin.lm_head(twin.model.language_model.norm(hidden)), valid


def reference_generate(twin, data: dict, selections) -> tuple[Tensor, list[Tensor]]:
    """Greedy tokens and per-step logits of the hand-built pruned model, with a cache."""
    calls = layer_inputs(twin, lambda: twin.generate(**data, **GENERATE))
    cache = compat_cache(twin)
    logits, valid = two_part(
        twin, calls[0], lm_mask(twin, data), stage_indices(data, selections), cache
    )
    steps, tokens = [logits[:, -1]], [greedy(logits[:, -1])]
    layers = list(twin.model.language_model.layers)
    embed = twin.get_input_embeddings()
    for step in range(1, STEPS):
        keys = torch.cat([valid, torch.ones(valid.shape[0], step, dtype=torch.bool)], dim=1)
        hidden = run_layers(
            twin,
            layers,
            embed(tokens[-1][:, None]),
            keys[:, None, None, :],
            calls[step]["rotary"],
            cache,
        )
        steps.append(twin.lm_head(twin.model.language_model.norm(hidden))[:, -1])
        tokens.append(greedy(steps[-1]))
    return torch.stack(tokens, dim=1), steps


def compat_cache(twin):
    from transformers import DynamicCache

    return DynamicCache(config=twin.model.language_model.config)


def generate(model, data, **options):
    out = model.generate(
        **data, **GENERATE, output_logits=True, return_dict_in_generate=True, **options
    )
    return out.sequences[:, data["input_ids"].shape[1] :], list(out.logits)


def close(actual, expected) -> None:
    for got, want in zip(actual, expected, strict=True):
        torch.testing.assert_close(got, want, atol=2e-5, rtol=1e-4)


# ------------------------------------------------------------------------------------ tests
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


def test_layer_methods_refuse_what_they_cannot_do():
    model = deep("llava")
    with pytest.raises(ValueError, match="decoder layers"):
        visprune.apply(model, "fastv", layer=4, budget=2)
    with pytest.raises(ValueError, match="original positions"):
        visprune.apply(model, "fastv", layer=2, budget=2, positions="compact")
    with pytest.raises(PruningNotApplied, match="sliding_attention"):
        visprune.apply(tiny("gemma3"), "dart", layer=1, budget=2)
    assert "_visprune_handles" not in model.__dict__ or not model._visprune_handles


def test_a_prefill_that_skips_the_pruning_layer_raises():
    """If the decoder layers stop going through the hooked modules, the call raises."""
    model = deep("llava")
    data = collate(ragged_samples("llava", model))
    with visprune.apply(model, "fastv", layer=2, budget=2):
        layers = model.model.language_model.layers
        original = layers[2]
        fresh = type(original)(model.model.language_model.config, 2)  # without the hook
        fresh.load_state_dict(original.state_dict())
        layers[2] = fresh.eval()
        try:
            with pytest.raises(PruningNotApplied, match="decoder layer 2"):
                model(**data)
        finally:
            layers[2] = original


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


def test_a_static_cache_raises_instead_of_running_unpruned():
    model = deep("llava")
    data = collate(ragged_samples("llava", model))
    with visprune.apply(model, "fastv", layer=2, budget=2):
        with pytest.raises(PruningNotApplied, match="DynamicCache") as raised:
            model.generate(**data, **GENERATE, cache_implementation="static")
    # A usage error: it says what to change in the call, not which transformers to install.
    assert raised.value.usage
    assert "cache_implementation" in str(raised.value) and "install" not in str(raised.value)


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


def test_a_decoder_layer_without_the_expected_attention_is_refused_at_apply():
    model = deep("llava")
    attention = model.model.language_model.layers[1].self_attn
    data = collate(ragged_samples("llava", model))
    with visprune.apply(model, "random", budget=2) as below:
        keys = attention.k_proj
        del attention.k_proj
        with pytest.raises(PruningNotApplied, match="lacks k_proj"):
            visprune.apply(model, "dart", layer=2, budget=2)
        attention.k_proj = keys
        assert not any(layer._forward_pre_hooks for layer in model.model.language_model.layers)
        assert below.active  # the handle below runs again
        model(**data)
        assert all(len(s.kept) == 2 for s in below.selections)
    assert "get_image_features" not in model.model.__dict__


def test_changing_the_layer_after_apply_raises():
    model = deep("llava")
    data = collate(ragged_samples("llava", model))
    with visprune.apply(model, "fastv", layer=2, budget=2) as handle:
        handle.method.layer = 1
        with pytest.raises(ValueError, match=r"changed after visprune\.apply"):
            model(**data)
