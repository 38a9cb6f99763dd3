"""LLaVA-NeXT-Video (``llava_next_video``): anyres images as LLaVA-NeXT, pooled video frames."""

from __future__ import annotations

from .. import compat
from ..registry import ADAPTERS
from .base import encoder_features
from .llava import video_layout
from .llava_next import LlavaNextAdapter


@ADAPTERS.register("llava_next_video")
class LlavaNextVideoAdapter(LlavaNextAdapter):
    """LlavaNextVideoForConditionalGeneration.

    Images as in LLaVA-NeXT (base tile, anyres tiles, newline tokens). A video is ``frames``
    grids of average-pooled patch tokens with no newline; the budget applies per frame.
    "vision"-stage methods (ReDiPrune) see the pooled features before the projector, per frame,
    as in ReDiPrune's own LLaVA-NeXT-Video setup.
    """

    model_classes = ("LlavaNextVideoForConditionalGeneration",)

    def describe(self, kind, output, args, kwargs):
        if kind == "image":
            return super().describe(kind, output, args, kwargs)
        videos = compat.tokens_per_item(encoder_features(output, kind))
        pixel_values = kwargs.get("pixel_values_videos", args[0] if args else None)
        frames = pixel_values.shape[1]
        vision = None
        if self.method.stage == "vision" and self._captured_vision:
            pooled = self._captured_vision[0]  # (videos * frames, per_frame, c)
            vision = pooled.reshape(len(videos), -1, pooled.shape[-1])
        return [
            video_layout(video.shape[0], frames, vision[number] if vision is not None else None)
            for number, video in enumerate(videos)
        ]
