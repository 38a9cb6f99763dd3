"""``describe_rows`` plus ``model_flops`` equal FlopCounterMode on a whole forward of a batch.

The batch is left-padded, two rows of different visual content (several images of different
sizes, grids and tile counts, videos of different lengths); the language model computes the
padding too, so each row is counted on the padded length. Eager attention, ``logits_to_keep=1``
as in ``generate``: vision tower, projector, language model and ``lm_head`` of every family,
images and videos.
"""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from tiny_vlms import CASES, collate, ragged_samples, tiny, visual_mask
from visprune.flops import describe_rows, model_flops


def _grouped_mm_flops(input_shape, weight_shape, *args, out_shape=None, **kwargs) -> int:
    rows, inner = input_shape  # Qwen3-VL-MoE's default experts kernel: one group per row
    return 2 * rows * inner * weight_shape[-1]


@pytest.mark.parametrize("family,video", CASES)
def test_whole_forward_of_a_padded_batch_matches_counter(family, video):
    model = tiny(family, attn="eager")
    data = collate(ragged_samples(family, model, video=video))
    mapping = {torch.ops.aten._grouped_mm: _grouped_mm_flops}
    with FlopCounterMode(display=False, custom_mapping=mapping) as counter, torch.no_grad():
        model(**data, logits_to_keep=1)
    length = data["input_ids"].shape[1]
    exact = 0.0
    for row, described in enumerate(describe_rows(model.config, data)):
        visual = int(visual_mask(data["input_ids"][row]).sum())
        counts = model_flops(model.config, visual, length - visual, **described)["prefill"]
        assert counts.vision > 0 and counts.projector > 0
        exact += counts.total
    assert exact == pytest.approx(counter.get_total_flops(), rel=1e-9)


def test_padding_tiles_are_not_counted():
    """LLaVA-NeXT pads every image to the batch's most tiles; the model encodes only the real
    ones, and so do the rows' tile counts (5, then 3 and 3)."""
    model = tiny("llava_next")
    data = collate(ragged_samples("llava_next", model))
    assert data["pixel_values"].shape[1] == 5
    tiles = [row["tiles_per_image"] for row in describe_rows(model.config, data)]
    assert tiles == [[5], [3, 3]]


def test_grids_that_do_not_match_the_placeholders_are_refused():
    model = tiny("qwen2_5_vl")
    data = collate(ragged_samples("qwen2_5_vl", model)[1:])
    data["image_grid_thw"] = data["image_grid_thw"][:1]
    with pytest.raises(ValueError, match="image_grid_thw does not match"):
        describe_rows(model.config, data)
