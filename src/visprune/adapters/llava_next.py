"""LLaVA-NeXT (``llava_next``): a base tile plus anyres tiles, unpadded, with newline tokens."""

from __future__ import annotations

from ..registry import ADAPTERS
from .base import Adapter, Layout, encoder_features


@ADAPTERS.register("llava_next")
class LlavaNextAdapter(Adapter):
    """LlavaNextForConditionalGeneration.

    An image's tokens are its base tile, then the unpadded tile grid with one ``image_newline``
    token closing each row. By default every token is a candidate, newlines included, as in the
    published code; ``newlines="keep"`` takes newlines out of the candidates and always keeps
    them. "vision"-stage methods see the projector input re-packed the way the model packs its
    output (newlines have no such feature, so they are always kept then).
    """

    def describe(self, kind, output, args, kwargs):
        features = encoder_features(output, kind)
        newline = self.base.image_newline
        vision = self._vision_per_image(args, kwargs, len(features))
        layouts = []
        for number, image in enumerate(features):
            count = image.shape[0]
            is_newline = (image == newline.to(image)).all(dim=-1)
            fixed = None
            if self.newlines == "keep" or vision is not None:
                fixed = is_newline
            per_image = vision[number] if vision is not None else None
            if per_image is not None and per_image.shape[0] != int((~is_newline).sum()):
                per_image = None
            layouts.append(Layout(count=count, frames=[(0, count)], fixed=fixed, vision=per_image))
        return layouts

    def tiles_per_image(self, image_sizes, kwargs) -> list[int]:
        from transformers.models.llava_next.modeling_llava_next import image_size_to_num_patches

        config = self.model.config
        return [
            image_size_to_num_patches(
                image_size=size,
                grid_pinpoints=config.image_grid_pinpoints,
                patch_size=config.vision_config.image_size,
            )
            for size in image_sizes
        ]

    def pack(self, tiles, image_sizes, kwargs):
        strategy = kwargs.get("vision_feature_select_strategy")
        if strategy is None:
            strategy = self.model.config.vision_feature_select_strategy
        packed, _ = self.base.pack_image_features(tiles, image_sizes, strategy, image_newline=None)
        return packed

    def _vision_per_image(self, args, kwargs, images: int):
        if self.method.stage != "vision" or not self._captured_vision:
            return None
        image_sizes = kwargs.get("image_sizes")
        if image_sizes is None and len(args) > 1:
            image_sizes = args[1]
        before = self._captured_vision[0]
        tiles = before.split(self.tiles_per_image(image_sizes, kwargs), dim=0)
        packed = self.pack(list(tiles), image_sizes, kwargs)
        return list(packed) if len(packed) == images else None
