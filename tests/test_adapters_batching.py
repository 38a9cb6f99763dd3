"""``visprune.apply`` on batches: a left-padded batch equals each row alone.

Rows without images too, and eager attention as well as SDPA.
"""

from __future__ import annotations

import pytest
import torch

import visprune
from adapter_cases import (
    CASE_PARAMS,
    _no_grad,  # noqa: F401 (autouse)
    method_params,
)
from pruned_reference import (
    assert_logits_close,
    generate,
    reference_decode,
    reference_for,
)
from tiny_vlms import (
    collate,
    ragged_samples,
    sample,
    tiny,
)

BATCH_METHODS = method_params(
    ["divprune", "random", "trimtokenator", "rediprune", "cdpruner"], random_seed=1
)


@pytest.mark.parametrize(("method", "params"), BATCH_METHODS)
@pytest.mark.parametrize(("family", "video"), CASE_PARAMS)
def test_left_padded_batch_equals_each_row_alone(family, video, method, params):
    """Rows of different lengths that keep different counts are re-padded on the left."""
    model = tiny(family)
    samples = ragged_samples(family, model, video)
    data = collate(samples)
    handle = visprune.apply(model, method, 0.5, **params)
    tokens, step_logits = generate(model, data)
    batch_selections = handle.selections
    dropped = [0, 0]
    for record in batch_selections:
        dropped[record.sample] += record.n - len(record.kept)
    lengths = [len(s["input_ids"]) - d for s, d in zip(samples, dropped, strict=True)]
    assert lengths[0] != lengths[1], "the rows should keep different counts"
    for row, one in enumerate(samples):
        alone_tokens, alone_logits = generate(model, collate([one]))
        assert torch.equal(tokens[row], alone_tokens[0]), row
        assert_logits_close([x[row] for x in step_logits], [x[0] for x in alone_logits])
        alone = [r for r in batch_selections if r.sample == row]
        offset = data["input_ids"].shape[1] - len(one["input_ids"])
        for got, want in zip(alone, handle.selections, strict=True):
            assert torch.equal(got.kept, want.kept)
            assert torch.equal(got.positions, want.positions + offset)


@pytest.mark.parametrize("family", ["llava", "qwen2_5_vl"])
def test_batch_with_a_row_without_images(family):
    """A row with no image runs unpruned next to a pruned row."""
    model = tiny(family)
    samples = [
        sample(family, model, images=2, prefix=2, seed=1),
        sample(family, model, images=0, prefix=4, suffix=6, seed=2),
    ]
    handle = visprune.apply(model, "divprune", 0.5)
    tokens, _ = generate(model, collate(samples))
    assert {r.sample for r in handle.selections} == {0}
    for row, one in enumerate(samples):
        assert torch.equal(tokens[row], generate(model, collate([one]))[0][0])
    handle.remove()
    assert torch.equal(tokens[1], generate(model, collate(samples[1:]))[0][0])


@pytest.mark.parametrize("family", ["llava", "llava_onevision", "qwen2_5_vl", "gemma3"])
def test_eager_attention_batch_and_reference(family):
    """The same with the eager attention backend: batch == rows alone == reference."""
    model, twin = tiny(family, attn="eager"), tiny(family, attn="eager")
    samples = ragged_samples(family, model)
    handle = visprune.apply(model, "divprune", 0.5)
    tokens, _ = generate(model, collate(samples))
    for row, one in enumerate(samples):
        data = collate([one])
        alone, step_logits = generate(model, data)
        assert torch.equal(tokens[row], alone[0])
        embeds, positions, _ = reference_for(family, twin, data, handle)
        want_tokens, want_logits = reference_decode(twin, embeds, positions)
        assert torch.equal(alone, want_tokens)
        assert_logits_close(step_logits, want_logits)
