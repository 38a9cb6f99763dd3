"""Vision tower and projector FLOPs of InternVL (pure math): InternViT on every tile, then the
pixel-shuffle MLP projector."""

from __future__ import annotations

from typing import Any

from .blocks import vit_layers
from .visual import VisualInputs, check_without_grids, tower_inputs


def _pair(value: Any) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else (int(value[0]), int(value[1]))


def tiles_flops(config: Any, crops: int) -> tuple[float, float]:
    """InternViT and the pixel-shuffle projector of InternVL for ``crops`` tiles.

    Per tile: the patch embedding, the ViT layers on the patches plus CLS (q/k/v/o all
    ``d x d``, a two-matrix MLP), then the 2-layer MLP projector on the ``patches * r²`` tokens
    of width ``d / r²`` that the pixel shuffle (``downsample_ratio`` r) makes of the patches.
    """
    vision = config.vision_config
    d, ffn = vision.hidden_size, vision.intermediate_size
    (height, width), (ph, pw) = _pair(vision.image_size), _pair(vision.patch_size)
    patches = (height // ph) * (width // pw)
    channels = getattr(vision, "num_channels", 3)
    embed = 2.0 * patches * channels * ph * pw * d
    tower = embed + vit_layers(patches + 1, d, ffn, vision.num_hidden_layers)
    factor = round(1 / config.downsample_ratio) ** 2  # tokens merged by the pixel shuffle
    tokens, wide = patches // factor, d * factor
    text_hidden = config.text_config.hidden_size
    projector = 2.0 * tokens * (wide * text_hidden + text_hidden * text_hidden)
    return crops * tower, crops * projector


def vision_flops(config: Any, visual: VisualInputs) -> tuple[float, float]:
    """``(vision, projector)`` FLOPs of every image of one prompt (InternVL has no video input)."""
    check_without_grids(config.model_type, visual)
    return tiles_flops(config, tower_inputs(visual.tiles_per_image, visual.images))
