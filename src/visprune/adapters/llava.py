"""LLaVA-1.5 (``model_type == "llava"``): one grid of patch tokens per image."""

from __future__ import annotations

import math

from ..registry import ADAPTERS
from .base import Adapter, Layout, encoder_features


def square_grid(count: int) -> tuple[int, int] | None:
    """``(side, side)`` when ``count`` tokens form a square grid, else ``None``."""
    side = math.isqrt(count)
    return (side, side) if side * side == count else None


@ADAPTERS.register("llava")
class LlavaAdapter(Adapter):
    """LlavaForConditionalGeneration: image tokens are the projected CLIP patches, in raster order.

    "vision"-stage methods see the projector input (the selected vision layer, CLS removed).
    """

    def describe(self, kind, output, args, kwargs):
        features = encoder_features(output, kind)
        before = self._captured_vision[0] if self._captured_vision else None
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
            layouts.append(
                Layout(count=count, frames=[(0, count)], grid=square_grid(count), vision=vision)
            )
        return layouts
