"""InternVL (``internvl``): dynamic tiles of pixel-shuffled ViT tokens, each image in
``<img>`` ... ``</img>``."""

from __future__ import annotations

from ..registry import ADAPTERS
from .base import Adapter, Layout, encoder_features
from .llava import square_grid


@ADAPTERS.register("internvl")
class InternVLAdapter(Adapter):
    """InternVLForConditionalGeneration (the ``-hf`` checkpoints of InternVL 3 and 3.5).

    The processor cuts an image into tiles (plus a thumbnail when there are several) and writes
    ``<img>``, ``image_seq_length`` image tokens per tile (256 for a 448-px tile after the 2x2
    pixel shuffle), then ``</img>``. ``get_image_features`` encodes every tile of every image of
    the batch as one flat ``(tiles, tokens per tile, d)`` output, and the model never receives
    the per-image tile counts (in transformers 5.19 and 5.24 alike the processor keeps
    ``num_patches`` to itself). So each tile is recorded on its own and the tiles are grouped by
    the runs of image tokens in ``input_ids``: one contiguous run is one image, and the budget
    applies per image across all its tiles, thumbnail included (a method picks ``k`` of the
    image's ``tiles * tokens per tile`` tokens; one selection per image, ``grid`` set only for a
    one-tile image). There is no per-tile budget.

    Video: InternVL's processor writes each frame as its own one-tile image span
    (``Frame1: <img>...</img>``) with the image token, and the model has no video input of its
    own; visprune sees what the model sees, so every frame is an image with its own budget
    (selections of kind ``"image"``, numbered in prompt order).

    "vision"-stage methods (ReDiPrune) see the projector input: each tile's ViT tokens, CLS
    dropped, after the pixel shuffle (``(tokens per tile, 4 c)``), an image's tiles concatenated
    in prompt order.
    """

    model_classes = ("InternVLForConditionalGeneration",)

    def describe(self, kind, output, args, kwargs):
        tiles = encoder_features(output, kind)  # one (tokens per tile, d) per tile
        before = self._captured_vision[0] if self._captured_vision else None
        if before is not None and (
            before.dim() != 3 or before.shape[:2] != (len(tiles), tiles[0].shape[0])
        ):
            before = None  # not one row per tile: "vision" methods then refuse in the base
        layouts = []
        for number, tile in enumerate(tiles):
            count = tile.shape[0]
            layouts.append(
                Layout(
                    count=count,
                    frames=[(0, count)],
                    grid=square_grid(count),
                    vision=before[number] if before is not None else None,
                    tile=True,
                )
            )
        return layouts
