"""LLaVA-1.5 (``model_type == "llava"``): one grid of patch tokens per image."""

from __future__ import annotations

import math

from torch import Tensor

from ..registry import ADAPTERS
from .base import Adapter, Layout, encoder_features
from .vision_scores import clip_score_layer, per_image_scores


def square_grid(count: int) -> tuple[int, int] | None:
    """``(side, side)`` when ``count`` tokens form a square grid, else ``None``."""
    side = math.isqrt(count)
    return (side, side) if side * side == count else None


def video_layout(
    count: int, frames: int, vision: Tensor | None, fixed: Tensor | None = None
) -> Layout:
    """A video of ``frames`` equal square grids of pooled tokens (after which ``fixed`` tokens,
    such as OneVision's closing newline, may follow); the budget applies per frame."""
    extra = 0 if fixed is None else int(fixed.sum())
    per_frame = (count - extra) // frames
    return Layout(
        count=count,
        frames=[(f * per_frame, (f + 1) * per_frame) for f in range(frames)],
        grid=square_grid(per_frame),
        fixed=fixed,
        vision=vision,
        is_video=True,
    )


@ADAPTERS.register("llava")
class LlavaAdapter(Adapter):
    """LlavaForConditionalGeneration: image tokens are the projected CLIP patches, in raster order.

    "vision"-stage methods see the projector input (the selected vision layer, CLS removed);
    methods that need the CLS attention get it from that CLIP layer (``vision_scores``).
    """

    model_classes = ("LlavaForConditionalGeneration",)

    @classmethod
    def score_layer(cls, model):
        config = model.config
        return clip_score_layer(
            model.model.vision_tower,
            config.vision_feature_layer,
            config.vision_feature_select_strategy,
        )

    def describe(self, kind, output, args, kwargs):
        features = encoder_features(output, kind)
        before = self._captured_vision[0] if self._captured_vision else None
        scores = self.call_state().captured_scores
        if scores and scores[0]["hidden"].shape[0] != len(features):
            scores = []  # not one CLS row per image: the method refuses at the prefill
        layouts = []
        for number, image in enumerate(features):
            count = image.shape[0]
            vision = None
            if (
                before is not None
                and before.dim() == 3
                and before.shape[:2]
                == (
                    len(features),
                    count,
                )
            ):
                vision = before[number]
            layout = Layout(
                count=count, frames=[(0, count)], grid=square_grid(count), vision=vision
            )
            if scores and scores[0]["hidden"].shape[1] == count + 1:
                layout.scores = per_image_scores(scores[0], number)
            layouts.append(layout)
        return layouts
