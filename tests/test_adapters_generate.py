"""``visprune.apply`` generation on every tiny family equals a hand-built pruned reference.

The reference (:mod:`pruned_reference`) never goes through visprune: it takes the unpatched
model's language-model inputs, drops the visual positions that the handle's ``selections`` say
were removed, and runs the plain language model of a second model instance with the same weights
(``twin``) on the shortened sequence, decoding greedily step by step. ``keepall`` is
bit-identical, and each method gets each item's tokens, prompt and budget.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

import visprune
from adapter_cases import (
    CASE_PARAMS,
    _no_grad,  # noqa: F401 (autouse)
    expected_items,
    method_params,
)
from pruned_reference import (
    always_kept,
    assert_logits_close,
    assert_same_selections,
    assert_unpatched,
    generate,
    lm_inputs,
    prompt_text,
    reference_decode,
    reference_for,
    reference_prefill,
)
from tiny_vlms import (
    GENERATE,
    INTERNVL_TILE_TOKENS,
    QWEN,
    collate,
    inputs,
    ragged_samples,
    tiny,
)


@pytest.mark.parametrize("padded", [False, True], ids=["same-length", "left-padded"])
@pytest.mark.parametrize(("family", "video"), CASE_PARAMS)
def test_keepall_is_bit_identical(family, video, padded):
    model = tiny(family)
    if padded:
        data = collate(ragged_samples(family, model, video))
    else:
        data = inputs(family, model, video=video, batch=2)
    logits = model(**data).logits
    cached = model.generate(**data, **GENERATE)
    uncached = model.generate(**data, **GENERATE, use_cache=False)
    with visprune.apply(model, "keepall") as handle:
        assert torch.equal(model(**data).logits, logits)
        assert torch.equal(model.generate(**data, **GENERATE), cached)
        assert torch.equal(model.generate(**data, **GENERATE, use_cache=False), uncached)
        assert handle.selections
        for record in handle.selections:
            assert torch.equal(record.kept, torch.arange(record.n))
    assert_unpatched(model)


METHODS = method_params(
    ["divprune", "random", "trimtokenator", "resprune", "rediprune", "cdpruner"], random_seed=3
)


@pytest.mark.parametrize(("method", "params"), METHODS)
@pytest.mark.parametrize(("family", "video"), CASE_PARAMS)
def test_generate_matches_hand_built_reference(family, video, method, params):
    model, twin = tiny(family), tiny(family)
    data = inputs(family, model, video=video, batch=2)
    handle = visprune.apply(model, method, 0.5, **params)
    assert handle.positions == ("original" if family in QWEN else "compact")
    logits = model(**data).logits
    forward_selections = handle.selections
    tokens, step_logits = generate(model, data)
    assert_same_selections(handle.selections, forward_selections)
    embeds, positions, _ = reference_for(family, twin, data, handle)
    assert logits.shape[1] == embeds.shape[1] < data["input_ids"].shape[1]
    torch.testing.assert_close(
        logits, reference_prefill(twin, embeds, positions), atol=2e-5, rtol=1e-4
    )
    want_tokens, want_logits = reference_decode(twin, embeds, positions)
    assert torch.equal(tokens, want_tokens)
    assert_logits_close(step_logits, want_logits)


@pytest.mark.parametrize(("method", "params"), METHODS[:2])
@pytest.mark.parametrize(("family", "video"), CASE_PARAMS)
def test_generate_without_cache_matches_reference(family, video, method, params):
    """``use_cache=False`` re-runs the whole (re-pruned) prefix each step, like the reference."""
    model, twin = tiny(family), tiny(family)
    data = inputs(family, model, video=video, batch=2)
    handle = visprune.apply(model, method, 0.5, **params)
    tokens, step_logits = generate(model, data, use_cache=False)
    embeds, positions, _ = reference_for(family, twin, data, handle)
    want_tokens, want_logits = reference_decode(twin, embeds, positions, use_cache=False)
    assert torch.equal(tokens, want_tokens)
    assert_logits_close(step_logits, want_logits)
    assert torch.equal(
        model.generate(**data, **GENERATE), model.generate(**data, **GENERATE, use_cache=False)
    )


@pytest.mark.parametrize("method", ["divprune", "trimtokenator", "rediprune", "cdpruner"])
@pytest.mark.parametrize(("family", "video"), CASE_PARAMS)
def test_method_gets_each_items_tokens_and_prompt(family, video, method):
    """``kept`` is what ``visprune.select`` picks from that image's (frame's) own tokens.

    The tokens are the LLM input embeddings at the item's positions (for "vision"-stage methods on
    LLaVA: the projector input; on Gemma 3: the projector input average-pooled to the soft-token
    grid), the text is the row's unpadded prompt after its last visual
    token, and the budget resolves per item. Run on a left-padded batch with uneven rows.
    """
    model = tiny(family)
    data = collate(ragged_samples(family, model, video))
    projector_inputs: list[Tensor] = []
    projector = getattr(model.model, "multi_modal_projector", None)
    hook = None
    if projector is not None:
        hook = projector.register_forward_pre_hook(lambda m, a: projector_inputs.append(a[0]))
    captured = lm_inputs(model, data)
    if hook is not None:
        hook.remove()
    handle = visprune.apply(model, method, 0.5)
    model(**data)
    fixed = always_kept(family, model, data, captured["embeds"], "candidates", handle.method.stage)
    items = expected_items(family, data, fixed)
    assert [(r.sample, r.image, r.frame, r.kind) for r in handle.selections] == [
        (i["sample"], i["image"], i["frame"], i["kind"]) for i in items
    ]
    tile = 0  # InternVL: the projector input has one row per tile, in prompt order
    for number, (record, item) in enumerate(zip(handle.selections, items, strict=True)):
        candidates = item["candidates"]
        tokens = captured["embeds"][record.sample, candidates]
        if method == "rediprune" and family == "llava":
            tokens = projector_inputs[0][number]  # one image per item; CLS already dropped
        elif method == "rediprune" and family == "internvl":
            tiles = len(candidates) // INTERNVL_TILE_TOKENS
            tokens = projector_inputs[0][tile : tile + tiles].flatten(0, 1)  # all its tiles
            tile += tiles
        elif method == "rediprune" and family == "gemma3":
            patches = projector_inputs[0][number]  # (8 * 8, c) in raster order
            side = math.isqrt(patches.shape[0])
            grid = patches.T.reshape(1, -1, side, side)
            tokens = F.avg_pool2d(grid, 2).flatten(2)[0].T  # the 4 x 4 grid of soft tokens
        elif method == "rediprune" and family in (
            "llava_next",
            "llava_next_video",
            "llava_onevision",
        ):
            tokens = None  # re-packed tile features: covered by the reference tests
        text = prompt_text(captured["embeds"], data, record.sample)
        assert record.n == len(candidates)
        assert len(record.kept) == handle.method.num_keep(record.n)
        assert torch.equal(record.positions, candidates[record.kept])
        if tokens is not None:
            want = visprune.select(method, tokens, 0.5, text=text)
            assert torch.equal(record.kept, want), (number, record.kept, want)
