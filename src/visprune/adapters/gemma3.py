"""Gemma 3 (``gemma3``): a square grid of pooled soft tokens per image, bidirectional within it."""

from __future__ import annotations

from torch import Tensor

from ..registry import ADAPTERS
from . import masks
from .base import Adapter, Layout, encoder_features
from .llava import square_grid


@ADAPTERS.register("gemma3")
class Gemma3Adapter(Adapter):
    """Gemma3ForConditionalGeneration.

    Each image (each pan-and-scan crop is one) is ``mm_tokens_per_image`` soft tokens (256: a
    16x16 grid, in raster order) between its begin- and end-of-image tokens, which are text and
    always kept.

    The base model builds the language model's masks from ``token_type_ids``: the image tokens
    of one image attend to each other both ways, text is causal, sliding-window layers see the
    last ``sliding_window`` cache slots. At a pruned prefill the token types are shortened with
    the sequence and the masks built again with the model's own function, so the kept tokens of
    one image still attend to each other both ways, and the window counts the slots of the
    shortened cache that decode steps read. A call without ``token_type_ids`` gets plain causal
    masks, as the unpatched model gives it.

    Positions: ``"compact"`` by default. Gemma 3 has plain 1-D rotary positions, so both modes
    exist; compact renumbers the kept tokens as the published methods do (the language model
    sees a shorter prompt), and keeps the rotary distance between cache slots one position per
    slot, as the sliding-window layers (five in six) were trained with, where original positions
    would make a window of kept slots span more positions than it does unpruned.

    "vision"-stage methods (ReDiPrune) see the vision tower's output pooled to the soft-token
    grid the way the projector pools it (average over each ``k x k`` patch block), before the
    projector's norm and projection: the pre-projector feature of each soft token.
    """

    model_classes = ("Gemma3ForConditionalGeneration",)

    def describe(self, kind, output, args, kwargs):
        features = encoder_features(output, kind)
        pooled = self._pooled_vision(len(features))
        layouts = []
        for number, image in enumerate(features):
            count = image.shape[0]
            vision = None
            if pooled is not None and pooled.shape[1] == count:
                vision = pooled[number]
            layouts.append(
                Layout(count=count, frames=[(0, count)], grid=square_grid(count), vision=vision)
            )
        return layouts

    def _pooled_vision(self, images: int) -> Tensor | None:
        """``(images, tokens, c)`` the captured projector input pooled like the projector pools
        it; ``None`` when nothing was captured or it is not one patch grid per image."""
        if self.method.stage != "vision" or not self._captured_vision:
            return None
        before = self._captured_vision[0]  # (images, patches, c)
        projector = self.base.multi_modal_projector
        side = projector.patches_per_image
        if before.dim() != 3 or tuple(before.shape[:2]) != (images, side * side):
            return None
        grid = before.transpose(1, 2).reshape(images, before.shape[-1], side, side)
        return projector.avg_pool(grid).flatten(2).transpose(1, 2)

    def shorten_family_inputs(self, kwargs: dict, keep: Tensor, index: Tensor) -> None:
        masks.rebuild(self.model, kwargs, self.call_state().token_types, keep, index)
