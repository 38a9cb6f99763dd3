"""Position modes under ``visprune.apply``: compact or original positions, Qwen's M-RoPE kept."""

from __future__ import annotations

import pytest
import torch

import visprune
from adapter_cases import (
    QWEN_CASES,
    _no_grad,  # noqa: F401 (autouse)
)
from pruned_reference import (
    assert_logits_close,
    assert_unpatched,
    generate,
    reference_decode,
    reference_for,
)
from tiny_vlms import (
    inputs,
    tiny,
)


def record_lm_positions(model) -> tuple[list, object]:
    """Position ids the language model receives (hook added after visprune's, so it sees them)."""
    calls: list = []
    hook = model.model.language_model.register_forward_pre_hook(
        lambda module, args, kwargs: calls.append(kwargs.get("position_ids")), with_kwargs=True
    )
    return calls, hook


@pytest.mark.parametrize("family", ["llava", "llava_next", "llava_onevision", "internvl"])
def test_compact_and_original_positions(family):
    model, twin = tiny(family), tiny(family)
    data = inputs(family, model, batch=2)
    length = data["input_ids"].shape[1]
    prefill = {}
    for mode in ("compact", "original"):
        handle = visprune.apply(model, "divprune", 0.5, positions=mode)
        assert handle.positions == mode
        calls, hook = record_lm_positions(model)
        tokens, step_logits = generate(model, data)
        hook.remove()
        embeds, positions, keep = reference_for(family, twin, data, handle)
        short = embeds.shape[1]
        if mode == "compact":
            assert torch.equal(positions, torch.arange(short).expand(2, -1))
        else:
            assert torch.equal(positions, torch.arange(length).expand(2, -1)[keep].view(2, -1))
        assert torch.equal(calls[0], positions)
        for step, decode in enumerate(calls[1:]):
            assert torch.equal(decode, positions[:, -1:] + 1 + step)
        want_tokens, want_logits = reference_decode(twin, embeds, positions)
        assert torch.equal(tokens, want_tokens)
        assert_logits_close(step_logits, want_logits)
        prefill[mode] = calls[0]
        handle.remove()
    assert not torch.equal(prefill["compact"], prefill["original"])


@pytest.mark.parametrize(("family", "video"), QWEN_CASES)
def test_qwen_keeps_original_m_rope_positions(family, video):
    model, twin = tiny(family), tiny(family)
    data = inputs(family, model, video=video, batch=2)
    with pytest.raises(ValueError, match="original") as error:
        visprune.apply(model, "divprune", 0.5, positions="compact")
    assert "compact" in str(error.value)
    assert_unpatched(model)
    handle = visprune.apply(model, "divprune", 0.5, positions="original")
    assert handle.positions == "original"
    calls, hook = record_lm_positions(model)
    tokens, step_logits = generate(model, data)
    hook.remove()
    embeds, positions, keep = reference_for(family, twin, data, handle)
    rope = {k: data.get(k) for k in ("image_grid_thw", "video_grid_thw", "second_per_grid_ts")}
    full, _ = twin.model.get_rope_index(
        data["input_ids"], mm_token_type_ids=data["mm_token_type_ids"], **rope
    )
    index = keep.nonzero()[:, 1].view(2, -1)
    assert torch.equal(positions, full.gather(-1, index.expand(3, -1, -1)))
    # generate hands the LM 4 rows: the text row, then the gathered M-RoPE rows
    assert calls[0].shape == (4, 2, index.shape[1])
    assert torch.equal(calls[0][1:], positions)
    assert torch.equal(calls[0][0], index)
    for step, decode in enumerate(calls[1:]):
        assert torch.equal(decode[1:], positions[..., -1:] + 1 + step)
    want_tokens, want_logits = reference_decode(twin, embeds, positions)
    assert torch.equal(tokens, want_tokens)
    assert_logits_close(step_logits, want_logits)
