"""Labels, loss and decoding under ``visprune.apply``: kept positions' labels, manual decode loops.

The loss uses the labels of the kept positions (re-padded batches too), a manual decode loop
continues the positions, and the text methods generate the same with and without the cache.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import visprune
from adapter_cases import (
    CASE_PARAMS,
    _no_grad,  # noqa: F401 (autouse)
)
from pruned_reference import (
    STEPS,
    assert_same_selections,
    greedy,
    reference_decode,
    reference_for,
    reference_prefill,
)
from tiny_vlms import (
    GENERATE,
    collate,
    inputs,
    ragged_samples,
    tiny,
    visual_mask,
)


@pytest.mark.parametrize("use_cache", [True, False], ids=["cache", "no-cache"])
@pytest.mark.parametrize(("family", "video"), CASE_PARAMS)
def test_loss_uses_the_labels_of_kept_positions(family, video, use_cache):
    model, twin = tiny(family), tiny(family)
    data = inputs(family, model, video=video, batch=2)
    labels = data["input_ids"].masked_fill(visual_mask(data["input_ids"]), -100)
    handle = visprune.apply(model, "divprune", 0.5)
    out = model(**data, labels=labels, use_cache=use_cache)
    embeds, positions, keep = reference_for(family, twin, data, handle)
    batch, short = embeds.shape[:2]
    assert out.logits.shape == (batch, short, 128)
    torch.testing.assert_close(
        out.logits, reference_prefill(twin, embeds, positions), atol=2e-5, rtol=1e-4
    )
    kept_labels = labels[keep].view(batch, short)
    by_hand = F.cross_entropy(
        out.logits[:, :-1].flatten(0, 1), kept_labels[:, 1:].flatten(), ignore_index=-100
    )
    torch.testing.assert_close(out.loss, by_hand)
    # labels on visual tokens too: the kept visual labels count, the dropped ones do not
    full = model(**data, labels=data["input_ids"], use_cache=use_cache)
    all_kept = data["input_ids"][keep].view(batch, short)
    by_hand = F.cross_entropy(full.logits[:, :-1].flatten(0, 1), all_kept[:, 1:].flatten())
    torch.testing.assert_close(full.loss, by_hand)


def test_loss_of_a_re_padded_batch():
    """Re-padded slots get label -100; each row's labels follow its kept tokens."""
    model = tiny("llava")
    data = collate(ragged_samples("llava", model))
    ids = data["input_ids"]
    labels = ids.masked_fill(visual_mask(ids) | (data["attention_mask"] == 0), -100)
    handle = visprune.apply(model, "divprune", 0.5)
    out = model(**data, labels=labels)
    keep = ~visual_mask(ids) & data["attention_mask"].bool()  # padding is left out too
    for record in handle.selections:
        keep[record.sample, record.positions] = True
    width = int(keep.sum(-1).max())
    assert out.logits.shape[1] == width
    rows = [
        torch.cat([torch.full((width - int(k.sum()),), -100), label[k]])
        for k, label in zip(keep, labels, strict=True)
    ]
    kept_labels = torch.stack(rows)
    by_hand = F.cross_entropy(
        out.logits[:, :-1].flatten(0, 1), kept_labels[:, 1:].flatten(), ignore_index=-100
    )
    torch.testing.assert_close(out.loss, by_hand)


@pytest.mark.parametrize("extend_mask", [True, False], ids=["with-mask", "no-mask"])
@pytest.mark.parametrize(("family", "video"), CASE_PARAMS)
def test_manual_decode_loop_continues_positions(family, video, extend_mask):
    """``model(input_ids=next, past_key_values=...)`` without position_ids decodes correctly."""
    model, twin = tiny(family), tiny(family)
    data = inputs(family, model, video=video, batch=2)
    handle = visprune.apply(model, "divprune", 0.5)
    out = model(**data, use_cache=True)
    embeds, positions, _ = reference_for(family, twin, data, handle)
    want_tokens, want_logits = reference_decode(twin, embeds, positions)
    mask = data["attention_mask"]
    for step in range(STEPS):
        torch.testing.assert_close(out.logits[:, -1], want_logits[step], atol=2e-5, rtol=1e-4)
        token = greedy(out.logits[:, -1])
        assert torch.equal(token, want_tokens[:, step])
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
        out = model(
            input_ids=token[:, None],
            past_key_values=out.past_key_values,
            attention_mask=mask if extend_mask else None,
            use_cache=True,
        )


@pytest.mark.parametrize("method", ["trimtokenator", "resprune", "rediprune"])
@pytest.mark.parametrize("family", ["llava_onevision", "qwen2_vl"])
def test_text_methods_generate_the_same_with_and_without_cache(family, method):
    """``use_cache`` is an optimisation: the prompt (not the generated tokens) conditions the pick.

    Without a cache every step re-runs the whole sequence; the selection must still use the
    prompt's text, so both runs keep the same tokens and generate the same.
    """
    model = tiny(family)
    data = inputs(family, model, batch=2)
    handle = visprune.apply(model, method, 0.5)
    cached = model.generate(**data, **GENERATE)
    prefill = handle.selections
    uncached = model.generate(**data, **GENERATE, use_cache=False)
    assert torch.equal(uncached, cached)
    assert_same_selections(handle.selections, prefill)
