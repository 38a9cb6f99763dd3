"""Qwen3-VL: Qwen2.5-VL's tokens and M-RoPE, plus deepstack features inside the first layers."""

from __future__ import annotations

from torch import Tensor

from ..registry import ADAPTERS
from .qwen2_vl import QwenVLAdapter


@ADAPTERS.register("qwen3_vl_moe")
@ADAPTERS.register("qwen3_vl")
class Qwen3VLAdapter(QwenVLAdapter):
    """Qwen3-VL (dense and MoE).

    Images and video frames as in Qwen2.5-VL (a video's frames are separated by timestamp text
    tokens; each frame is selected separately). Deepstack: the vision tower's intermediate
    features are added to the hidden states of the visual positions inside the first decoder
    layers, so the kept indices apply to the main features, to every deepstack level and to the
    visual position mask alike.
    """

    model_classes = ("Qwen3VLForConditionalGeneration", "Qwen3VLMoeForConditionalGeneration")

    def check_layer_stage(self, layers: list[int]) -> None:
        """Deepstack adds vision features to the outputs of the first decoder layers, at the
        positions of the full sequence: pruning must come after the last of them."""
        levels = len(getattr(self.model.config.vision_config, "deepstack_visual_indexes", ()))
        if min(layers) < levels:
            raise ValueError(
                f"{self.method.name} prunes after layer {min(layers)}, but Qwen3-VL adds "
                f"deepstack vision features to the outputs of layers 0 to {levels - 1} at the "
                f"full sequence's visual positions; prune at layer {levels} or later."
            )

    def shorten_family_inputs(self, kwargs: dict, keep: Tensor, index: Tensor) -> None:
        visual = kwargs.get("visual_pos_masks")
        levels = kwargs.get("deepstack_visual_embeds")
        if visual is None:
            if levels is not None:
                raise ValueError(
                    "Qwen3-VL's language model received deepstack features without "
                    "visual_pos_masks; visprune cannot place them on the kept tokens."
                )
            return
        visual = visual.to(keep.device)
        # Deepstack rows follow visual_pos_masks in row-major order, as do the kept ones.
        kept_rows = keep[visual]
        kwargs["visual_pos_masks"] = visual.gather(1, index.clamp_min(0)) & (index >= 0)
        if levels is not None:
            kwargs["deepstack_visual_embeds"] = [
                level[kept_rows.to(level.device)] for level in levels
            ]
