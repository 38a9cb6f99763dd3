"""Vision tower and projector FLOPs of the LLaVA families (pure math).

LLaVA, LLaVA-NeXT, LLaVA-NeXT-Video and LLaVA-OneVision: a CLIP / SigLIP tower on every crop
(anyres tile) of every image, then the two-layer MLP projector on every crop's selected tokens.
Videos (NeXT-Video, OneVision): the tower on every frame, then the projector on the pooled tokens
(NeXT-Video) or on every patch before the bilinear pooling (OneVision).
"""

from __future__ import annotations

import math
from typing import Any

from .blocks import vit_tower
from .visual import VisualInputs, check_without_grids, tower_inputs


def _projector_input(config: Any, tokens: int) -> tuple[int, int, str]:
    """Projector input width, the tokens it projects per tower input, and the select strategy."""
    d = config.vision_config.hidden_size
    layer = getattr(config, "vision_feature_layer", -1)
    width = d * (len(layer) if isinstance(layer, (list, tuple)) else 1)
    strategy = getattr(config, "vision_feature_select_strategy", "default")
    selected = tokens - 1 if strategy == "default" else tokens  # "default" drops the first token
    return width, selected, strategy


def image_flops(config: Any, crops: int) -> tuple[float, float]:
    """Vision tower and projector FLOPs of the LLaVA families for ``crops`` tower inputs."""
    tower, tokens = vit_tower(config.vision_config)
    width, selected, _ = _projector_input(config, tokens)
    text_hidden = config.text_config.hidden_size
    projector = 2.0 * selected * (width * text_hidden + text_hidden * text_hidden)
    return crops * tower, crops * projector


def video_flops(config: Any, frames: int) -> tuple[float, float]:
    """Vision tower and projector FLOPs of LLaVA-NeXT-Video / OneVision on ``frames`` frames.

    Every frame is one tower input (no anyres tiles). LLaVA-NeXT-Video pools each frame's patch
    grid by ``spatial_pool_stride`` (average or max pooling: no matmul; ``"conv"`` pooling is a
    convolution, counted in the projector) and projects the pooled tokens; OneVision projects
    every patch, then halves the grid by bilinear interpolation (no matmul).
    """
    vision = config.vision_config
    tower, tokens = vit_tower(vision)
    d = vision.hidden_size
    width, selected, strategy = _projector_input(config, tokens)
    text_hidden = config.text_config.hidden_size
    if config.model_type == "llava_onevision":
        return frames * tower, frames * 2.0 * selected * (width * text_hidden + text_hidden**2)
    side = math.isqrt(selected)
    if side * side != selected:
        raise ValueError(
            f"LLaVA-NeXT-Video pools a square grid of patches per frame, but the tower selects "
            f"{selected} tokens (vision_feature_select_strategy={strategy!r}): the model cannot "
            "run this config."
        )
    stride = config.spatial_pool_stride
    pooled = (side // stride) ** 2  # AvgPool2d / MaxPool2d / Conv2d with kernel = stride
    pool = 0.0
    if config.spatial_pool_mode == "conv":
        channels = getattr(config, "spatial_pool_out_channels", None) or d
        pool = 2.0 * pooled * d * stride * stride * channels
    projector = pool + 2.0 * pooled * (width * text_hidden + text_hidden**2)
    return frames * tower, frames * projector


def vision_flops(config: Any, visual: VisualInputs) -> tuple[float, float]:
    """``(vision, projector)`` FLOPs of every image and video of one prompt."""
    check_without_grids(config.model_type, visual)
    vis, proj = video_flops(config, visual.videos * visual.frames) if visual.videos else (0.0, 0.0)
    v, p = image_flops(config, tower_inputs(visual.tiles_per_image, visual.images))
    return vis + v, proj + p
