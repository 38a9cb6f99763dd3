"""Vision tower and projector FLOPs of Gemma 3 (pure math): SigLIP per image, then the pooling
projector."""

from __future__ import annotations

from typing import Any

from .blocks import vit_tower
from .visual import VisualInputs, check_without_grids


def vision_flops(config: Any, visual: VisualInputs) -> tuple[float, float]:
    """Gemma 3's SigLIP tower and projector on every image of one prompt (pan-and-scan crops
    count as images): the projector average-pools (no matmul) to ``mm_tokens_per_image`` tokens,
    then projects each from the vision width to the text width. Gemma 3 has no video input."""
    check_without_grids(config.model_type, visual)
    tower, _ = vit_tower(config.vision_config)
    width, text_hidden = config.vision_config.hidden_size, config.text_config.hidden_size
    projector = 2.0 * config.mm_tokens_per_image * width * text_hidden
    return visual.images * tower, visual.images * projector
