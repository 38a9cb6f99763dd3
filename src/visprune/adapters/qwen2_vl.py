"""Qwen2-VL and Qwen2.5-VL: merged 2x2 patch tokens, M-RoPE positions, images and video."""

from __future__ import annotations

from ..registry import ADAPTERS
from .base import Adapter, Layout, encoder_features


@ADAPTERS.register("qwen2_5_vl")
@ADAPTERS.register("qwen2_vl")
class QwenVLAdapter(Adapter):
    """Qwen2-VL / Qwen2.5-VL.

    Each image is ``(h/2) x (w/2)`` merged tokens; a video is ``t`` frames (temporal patch
    groups) of that grid. M-RoPE positions are computed by the model on the full sequence and
    the kept columns gathered, so only ``positions="original"`` exists. The patch merger leaves
    no per-token features before the projector: "vision"-stage methods run on its output (the
    LLM input embeddings) here.
    """

    model_classes = ("Qwen2VLForConditionalGeneration", "Qwen2_5_VLForConditionalGeneration")

    position_modes = ("original",)
    mrope = True

    def vision_capture_module(self):
        return None

    def describe(self, kind, output, args, kwargs):
        features = encoder_features(output, kind)
        grids = kwargs.get(f"{kind}_grid_thw")
        if grids is None and len(args) > 1:
            grids = args[1]
        if grids is None:
            raise ValueError(f"{kind}_grid_thw is required to place Qwen-VL {kind} tokens.")
        merge = self.base.visual.spatial_merge_size
        layouts = []
        for tokens, (frames, height, width) in zip(features, grids.tolist(), strict=True):
            grid = (height // merge, width // merge)
            per_frame = grid[0] * grid[1]
            count = tokens.shape[0]
            if kind == "video":
                spans = [(f * per_frame, (f + 1) * per_frame) for f in range(frames)]
            else:
                spans = [(0, count)]
            layouts.append(Layout(count=count, frames=spans, grid=grid, is_video=kind == "video"))
        return layouts
