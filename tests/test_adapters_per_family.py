"""What single families do their own way under ``visprune.apply``, against the hand-built reference.

LLaVA-NeXT's kept newlines, LLaVA-NeXT-Video's pooled frames for ReDiPrune, Qwen3-VL's deepstack
levels, and Gemma 3's bidirectional image blocks.
"""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

import visprune
from adapter_cases import _no_grad  # noqa: F401 (autouse)
from pruned_reference import (
    assert_logits_close,
    generate,
    keep_mask,
    lm_inputs,
    newline_mask,
    prompt_text,
    reference_decode,
    reference_for,
    reference_prefill,
)
from tiny_vlms import (
    GEMMA3_WINDOW,
    IMG,
    collate,
    inputs,
    ragged_samples,
    tiny,
    visual_mask,
)
from visprune.adapters import Selection


@pytest.mark.parametrize("family", ["llava_next", "llava_onevision"])
def test_newlines_keep_keeps_every_newline_outside_the_budget(family):
    model, twin = tiny(family), tiny(family)
    data = inputs(family, model, batch=2)
    captured = lm_inputs(twin, data)
    newlines = newline_mask(twin, data, captured["embeds"], kinds=("image",))
    per_row = int(newlines[0].sum())
    images = int((data["input_ids"][0] == IMG).sum())
    assert per_row > 0

    handle = visprune.apply(model, "divprune", 0.25)  # default: newlines compete
    model(**data)
    assert [r.n for r in handle.selections] == [images, images]

    handle = visprune.apply(model, "divprune", 0.25, newlines="keep")
    tokens, step_logits = generate(model, data)
    records = handle.selections
    assert [r.n for r in records] == [images - per_row] * 2
    for record in records:
        assert len(record.kept) == handle.method.num_keep(images - per_row)
        assert not bool(newlines[record.sample, record.positions].any())
    embeds, positions, keep = reference_for(family, twin, data, handle, newlines="keep")
    assert bool(keep[newlines].all())
    assert embeds.shape[1] == data["input_ids"].shape[1] - images + per_row + len(records[0].kept)
    want_tokens, want_logits = reference_decode(twin, embeds, positions)
    assert torch.equal(tokens, want_tokens)
    assert_logits_close(step_logits, want_logits)


def test_rediprune_reads_pooled_pre_projector_frames_of_llava_next_video():
    """ReDiPrune's own setting: per frame, the pooled vision features before the projector."""
    model = tiny("llava_next_video")
    data = collate(ragged_samples("llava_next_video", model, video=True))
    captured = lm_inputs(model, data)
    pooled: list[Tensor] = []
    hook = model.model.multi_modal_projector.register_forward_pre_hook(
        lambda module, inputs: pooled.append(inputs[0])
    )
    handle = visprune.apply(model, "rediprune", 0.5)
    model(**data)
    hook.remove()
    frames = pooled[0].reshape(-1, 4, pooled[0].shape[-1])  # (videos * frames, 2x2, c)
    assert len(handle.selections) == len(frames)
    for record, tokens in zip(handle.selections, frames, strict=True):
        text = prompt_text(captured["embeds"], data, record.sample)
        assert torch.equal(record.kept, visprune.select("rediprune", tokens, 0.5, text=text))


@pytest.mark.parametrize("video", [False, True], ids=["image", "video"])
def test_qwen3_deepstack_reaches_the_language_model_pruned(video):
    """Every deepstack level keeps exactly the rows of the kept visual tokens, in order."""
    model = tiny("qwen3_vl")
    data = collate(ragged_samples("qwen3_vl", model, video))
    full = lm_inputs(model, data)
    handle = visprune.apply(model, "divprune", 0.5)
    seen = lm_inputs(model, data)  # hook added after visprune's: sees the shortened inputs
    keep = keep_mask(data["input_ids"], handle.selections, torch.zeros_like(data["input_ids"]) > 0)
    kept_rows = keep[full["visual"]]
    assert int(seen["visual"].sum()) == int(kept_rows.sum()) < int(full["visual"].sum())
    assert len(seen["deepstack"]) == len(full["deepstack"]) == 2
    for pruned, whole in zip(seen["deepstack"], full["deepstack"], strict=True):
        assert torch.equal(pruned, whole[kept_rows])


def masks_received(model, data: dict) -> dict:
    """The attention masks the language model receives at ``model(**data)`` (after visprune's
    hook), as bool ``(B, 1, q, kv)`` per layer type (eager's float masks: 0 where attended)."""
    seen: list = []
    hook = model.model.language_model.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(kwargs["attention_mask"]), with_kwargs=True
    )
    try:
        model(**data)
    finally:
        hook.remove()
    return {kind: mask if mask.dtype == torch.bool else mask == 0 for kind, mask in seen[0].items()}


def expected_gemma3_masks(data: dict, selections: list[Selection]) -> tuple[dict, Tensor]:
    """The masks of the pruned sequence, derived from the selections alone, and which of its
    slots hold a token (not re-padding nor padding), both ``(B, L')``-based.

    Kept image tokens of one image attend to each other both ways, everything else causally;
    sliding-window layers also only to the last ``GEMMA3_WINDOW`` slots; nothing to padding.
    """
    ids = data["input_ids"]
    batch = ids.shape[0]
    block = torch.full_like(ids, -1)
    for number, record in enumerate(selections):
        block[record.sample, record.positions] = number
    keep = (~visual_mask(ids) | (block >= 0)) & data["attention_mask"].bool()
    width = int(keep.sum(-1).max())
    slots = torch.full((batch, width), -1)
    for row in range(batch):
        kept = keep[row].nonzero().squeeze(-1)
        slots[row, width - len(kept) :] = kept
    real = (slots >= 0) & data["attention_mask"].gather(1, slots.clamp_min(0)).bool()
    blocks = block.gather(1, slots.clamp_min(0)).masked_fill(slots < 0, -1)
    q = torch.arange(width)[:, None]
    k = torch.arange(width)[None, :]
    same = (blocks[:, :, None] == blocks[:, None, :]) & (blocks[:, :, None] >= 0)
    full = ((k <= q) | same) & real[:, None, :]
    sliding = full & (k > q - GEMMA3_WINDOW)
    return {"full_attention": full, "sliding_attention": sliding}, real


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_gemma3_pruned_masks_keep_each_images_block_bidirectional(attn):
    """Left-padded rows keeping different counts: every real query row of the masks the language
    model gets is the expected pattern over the shortened (re-padded) sequence."""
    model = tiny("gemma3", attn=attn)
    data = collate(ragged_samples("gemma3", model))
    handle = visprune.apply(model, "divprune", 0.5)
    got = masks_received(model, data)
    want, real = expected_gemma3_masks(data, handle.selections)
    assert set(got) == set(want)
    for kind, mask in want.items():
        assert got[kind].shape == (2, 1, *mask.shape[1:]), kind
        for row in range(2):
            rows = real[row]
            assert torch.equal(got[kind][row, 0][rows], mask[row][rows]), (kind, row)
    # the image blocks are really there: a kept image token sees a later one of its image
    first = handle.selections[0]
    assert len(first.kept) > 1 and bool(want["full_attention"][first.sample].triu(1).any())


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_gemma3_logits_follow_the_bidirectional_blocks(attn):
    """Pruned logits equal the reference built by transformers from the shortened token types,
    and differ from a run on the same shortened sequence with causal masks only."""
    model, twin = tiny("gemma3", attn=attn), tiny("gemma3", attn=attn)
    data = inputs("gemma3", model, batch=2, images=2)
    handle = visprune.apply(model, "divprune", 0.5)
    logits = model(**data).logits
    embeds, positions, _ = reference_for("gemma3", twin, data, handle)
    want = reference_prefill(twin, embeds, positions)
    torch.testing.assert_close(logits, want, atol=2e-5, rtol=1e-4)
    types, twin._reference_types = twin._reference_types, None
    causal = reference_prefill(twin, embeds, positions)  # the same sequence, causal masks only
    first_image = int(handle.selections[0].positions[0])
    assert (logits - causal)[:, first_image:].abs().amax() > 1e-3
    twin._reference_types = types
    tokens, step_logits = generate(model, data)
    want_tokens, want_logits = reference_decode(twin, embeds, positions)
    assert torch.equal(tokens, want_tokens)
    assert_logits_close(step_logits, want_logits)


def test_gemma3_without_token_types_is_causal_as_the_unpatched_model():
    """No ``token_type_ids``: the unpatched model builds causal masks, and so does the pruned."""
    model, twin = tiny("gemma3"), tiny("gemma3")
    data = inputs("gemma3", model, batch=2)
    del data["token_type_ids"]
    logits = model(**data).logits
    with visprune.apply(model, "keepall"):
        assert torch.equal(model(**data).logits, logits)
    handle = visprune.apply(model, "divprune", 0.5)
    tokens, step_logits = generate(model, data)
    embeds, positions, _ = reference_for("gemma3", twin, data, handle)
    assert twin._reference_types is None  # the reference runs causal masks too
    want_tokens, want_logits = reference_decode(twin, embeds, positions)
    assert torch.equal(tokens, want_tokens)
    assert_logits_close(step_logits, want_logits)


def test_gemma3_original_positions_match_the_reference():
    model, twin = tiny("gemma3"), tiny("gemma3")
    data = inputs("gemma3", model, batch=2)
    handle = visprune.apply(model, "divprune", 0.5, positions="original")
    assert handle.positions == "original"
    tokens, step_logits = generate(model, data)
    embeds, positions, keep = reference_for("gemma3", twin, data, handle)
    length = data["input_ids"].shape[1]
    assert torch.equal(positions, torch.arange(length).expand(2, -1)[keep].view(2, -1))
    want_tokens, want_logits = reference_decode(twin, embeds, positions)
    assert torch.equal(tokens, want_tokens)
    assert_logits_close(step_logits, want_logits)
