"""The M-RoPE positions the vLLM plugin gives pruned Qwen-VL prompts, against transformers.

``prompt_positions`` (before encoding) plus each kept token's offset (after) must equal the
model's own rope index of the unpruned prompt at the kept columns, with the decode delta that
continues one past the unpruned prompt; and the offsets survive the embedding dtype.
No vLLM needed: the module is pure.
"""

from __future__ import annotations

import pytest
import torch

import tiny_vlms
from tiny_vlms import IMG, VE, VID, VS
from visprune.integrations.vllm.mrope import (
    Run,
    decode_offsets,
    encode_offsets,
    media_runs,
    prompt_positions,
)


def qwen_prompt(family: str, kind: str, grid: tuple[int, int, int]) -> dict:
    """Text, a vision block of ``grid`` (patches; Qwen3-VL video: one block per frame with a
    timestamp token before it), text."""
    t, h, w = grid
    per_frame = h * w // 4
    token = IMG if kind == "image" else VID
    if kind == "video" and family == "qwen3_vl":
        vision = [VS] + [tok for _ in range(t) for tok in (7, VS, *[token] * per_frame, VE)] + [VE]
    else:
        vision = [VS] + [token] * (t * per_frame) + [VE]
    ids = [5, 6, 9, *vision, 11, 12]
    types = [2 if i == VID else 1 if i == IMG else 0 for i in ids]
    return {
        "input_ids": torch.tensor([ids]),
        "mm_token_type_ids": torch.tensor([types]),
        f"{kind}_grid_thw": torch.tensor([list(grid)]),
    }


def runs_of(family: str, kind: str, grid, t_step: float) -> list[Run]:
    t, h, w = grid
    if family == "qwen3_vl":
        return [Run(1, h // 2, w // 2)] * (t if kind == "video" else 1)
    return [Run(t if kind == "video" else 1, h // 2, w // 2, t_step)]


CASES = [
    ("qwen2_5_vl", "image", (1, 6, 8)),
    ("qwen2_5_vl", "video", (3, 4, 6)),
    ("qwen3_vl", "image", (1, 8, 4)),
    ("qwen3_vl", "video", (3, 4, 6)),
]


@pytest.mark.parametrize(("family", "kind", "grid"), CASES)
def test_kept_positions_equal_the_models_rope_index(family, kind, grid):
    model = tiny_vlms.tiny(family)
    inputs = qwen_prompt(family, kind, grid)
    extra = {}
    t_step = 1.0
    if family == "qwen2_5_vl" and kind == "video":
        # Temporal offsets past the grid's sides: the text after the video starts at the larger
        # side (transformers' rule), decoding one past the largest temporal offset.
        extra["second_per_grid_ts"] = torch.tensor([1.5])
        t_step = 1.5 * model.config.vision_config.tokens_per_second
    full, delta = model.model.get_rope_index(**inputs, **extra)
    full = full[:, 0]
    ids = inputs["input_ids"][0].tolist()
    token = IMG if kind == "image" else VID
    runs = runs_of(family, kind, grid, t_step)
    # Keep every other candidate of each frame (and the last one): a pruned prompt.
    keep = torch.ones(len(ids), dtype=torch.bool)
    kept_offsets, located, pruned_at = [], [], 0
    for (start, count), run in zip(media_runs(ids, 0, len(ids), [token]), runs, strict=True):
        assert count == run.candidates
        chosen = [i for i in range(count) if i % run.per_frame % 2 == 0]
        keep[start : start + count] = False
        keep[[start + i for i in chosen]] = True
        kept_offsets.append(run.offsets()[chosen])
        located.append((start - pruned_at, len(chosen), run))
        pruned_at += count - len(chosen)
    pruned_ids = [i for i, k in zip(ids, keep.tolist(), strict=True) if k]
    positions, pruned_delta = prompt_positions(len(pruned_ids), located)
    for (start, kept, _), offsets in zip(located, kept_offsets, strict=True):
        positions[:, start : start + kept] += offsets.T
    assert torch.equal(positions, full[:, keep])
    # Decoding continues where the unpruned prompt would: position len + step + delta.
    assert len(pruned_ids) + pruned_delta == len(ids) + int(delta)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_offsets_survive_the_embedding_dtype(dtype):
    offsets = torch.tensor([[0, 0, 0], [255, 256, 257], [4000, 65535, 1]])
    assert torch.equal(decode_offsets(encode_offsets(offsets, dtype)), offsets)
    with pytest.raises(ValueError, match="too large"):
        encode_offsets(torch.tensor([[65536, 0, 0]]), dtype)


def test_runs_must_fit_the_prompt():
    with pytest.raises(ValueError, match="does not fit"):
        prompt_positions(4, [(2, 3, Run(1, 2, 2))])
