"""LLaVA-NeXT (``llava_next``): a base tile plus anyres tiles, unpadded, with newline tokens."""

from __future__ import annotations

from ..registry import ADAPTERS
from .base import Adapter, Layout, encoder_features
from .llava import LlavaAdapter
from .vision_scores import packed_scores


@ADAPTERS.register("llava_next")
class LlavaNextAdapter(Adapter):
    """LlavaNextForConditionalGeneration.

    An image's tokens are its base tile, then the unpadded tile grid with one ``image_newline``
    token closing each row. By default every token is a candidate, newlines included, as in the
    published code; ``newlines="keep"`` takes newlines out of the candidates and always keeps
    them. "vision"-stage methods see the projector input re-packed the way the model packs its
    output (newlines have no such feature, so they are always kept then). Methods that need the
    CLS attention get each crop's patches scored by that crop's own CLS row, packed the same way
    (:func:`vision_scores.packed_scores`): one image's budget covers all its crops' tokens, one
    selection, as for every other method; the image's CLS state is its base crop's.
    """

    model_classes = ("LlavaNextForConditionalGeneration",)

    score_layer = LlavaAdapter.score_layer

    def describe(self, kind, output, args, kwargs):
        features = encoder_features(output, kind)
        newline = self.base.image_newline
        vision = self._vision_per_image(args, kwargs, len(features))
        scores = self._scores_per_image(args, kwargs, len(features))
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
            layout = Layout(count=count, frames=[(0, count)], fixed=fixed, vision=per_image)
            if scores is not None and fixed is not None:
                candidates = int((~fixed).sum())
                if scores[number]["cls_attention"].shape[0] == candidates:
                    layout.scores = scores[number]
            layouts.append(layout)
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

    def _image_sizes(self, args, kwargs):
        image_sizes = kwargs.get("image_sizes")
        if image_sizes is None and len(args) > 1:
            image_sizes = args[1]
        return image_sizes

    def _scores_per_image(self, args, kwargs, images: int):
        captured = self.call_state().captured_scores
        if not captured:
            return None
        image_sizes = self._image_sizes(args, kwargs)
        crops = self.tiles_per_image(image_sizes, kwargs)
        if sum(crops) != captured[0]["hidden"].shape[0] or len(crops) != images:
            return None  # the method refuses at the prefill

        def pack(tiles):
            return self.pack(tiles, image_sizes, kwargs)

        return packed_scores(captured[0], pack, crops)

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
