"""LLaVA-OneVision (``llava_onevision``): anyres images like LLaVA-NeXT, and pooled video frames."""

from __future__ import annotations

from ..registry import ADAPTERS
from .base import encoder_features
from .llava import video_layout
from .llava_next import LlavaNextAdapter


@ADAPTERS.register("llava_onevision")
class LlavaOnevisionAdapter(LlavaNextAdapter):
    """LlavaOnevisionForConditionalGeneration.

    Images as in LLaVA-NeXT (samples with several images use only the base tile, as the model
    does). A video is ``frames`` pooled grids followed by one newline token, which is always kept;
    the budget applies per frame. "vision"-stage methods see the projector input, pooled like the
    model pools its output.
    """

    model_classes = ("LlavaOnevisionForConditionalGeneration",)

    def tiles_per_image(self, image_sizes, kwargs) -> list[int]:
        counts = super().tiles_per_image(image_sizes, kwargs)
        per_sample = kwargs.get("batch_num_images")
        if per_sample is None:
            return counts
        patched = [int(n) == 1 for n in per_sample for _ in range(int(n))]
        return [count if keep else 1 for count, keep in zip(counts, patched, strict=True)]

    def pack(self, tiles, image_sizes, kwargs):
        ratio = kwargs.get("vision_aspect_ratio") or self.model.config.vision_aspect_ratio
        packed, _ = self.base.pack_image_features(
            tiles, image_sizes, image_newline=None, vision_aspect_ratio=ratio
        )
        return packed

    def describe(self, kind, output, args, kwargs):
        if kind == "image":
            return super().describe(kind, output, args, kwargs)
        videos = encoder_features(output, kind)
        pixel_values = kwargs.get("pixel_values_videos", args[0] if args else None)
        frames = pixel_values.shape[1]
        vision = None
        if self.method.stage == "vision" and self._captured_vision:
            pooled = self.base.apply_pooling(self._captured_vision[0])
            vision = pooled.reshape(len(videos), -1, pooled.shape[-1])
        layouts = []
        for number, video in enumerate(videos):
            fixed = video.new_zeros(video.shape[0], dtype=bool)
            fixed[-1] = True  # the newline closing the video
            per_video = vision[number] if vision is not None else None
            layouts.append(video_layout(video.shape[0], frames, per_video, fixed))
        return layouts
