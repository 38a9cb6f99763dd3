"""What the pruned LLaVA-NeXT and LLaVA-OneVision models share: anyres images whose tokens vLLM
packs (base tile, then the unpadded tiles with one newline token per row), and the methods that
score the tower's patches, which get each packed token's projector input (and CLS scores) packed
by vLLM's own packing. The newline tokens have no such feature: they are no candidates then and
always stay, as in ``visprune.apply``. Imports vLLM (engine processes only).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch
from torch import Tensor, nn
from vllm.model_executor.models.llava_next import (
    LlavaNextProcessingInfo,
    get_anyres_image_grid_shape,
)

from .selection import select_rows

#: ``(image_size, rows) -> packed``: a family's packing of one image's ``(crops, patches, c)``
#: rows into ``(N, c)`` in the order of its tokens, newlines included.
Pack = Callable[[Tensor, Tensor], Tensor]


class PatchBudgetMixin:
    """For a LLaVA-NeXT-style pruned info: for methods that score the tower's patches an image
    gets ``num_keep(patches) + newlines`` tokens (the newlines always stay)."""

    def get_num_image_tokens(self, *, image_width: int, image_height: int) -> int:
        if not self.settings.scores_patches:
            return super().get_num_image_tokens(image_width=image_width, image_height=image_height)
        total = LlavaNextProcessingInfo.get_num_image_tokens(
            self, image_width=image_width, image_height=image_height
        )
        encoder = self.get_vision_encoder_info()
        rows, columns = get_anyres_image_grid_shape(
            image_size=(image_height, image_width),
            grid_pinpoints=self.get_hf_config().image_grid_pinpoints,
            patch_size=encoder.get_image_size(),
        )
        _, newlines = self._get_num_unpadded_features(
            original_height=image_height,
            original_width=image_width,
            npatches=encoder.get_patch_grid_length(),
            num_patch_height=rows,
            num_patch_width=columns,
        )
        return self.settings.num_keep(total - newlines) + newlines


@contextlib.contextmanager
def newline_swapped(model: nn.Module, newline: Tensor):
    """``model.image_newline`` is ``newline`` ``(d,)`` for the duration (vLLM's packing reads
    the parameter), so its packing of other rows than the projected tokens marks the newlines."""
    original = model._parameters["image_newline"]
    model._parameters["image_newline"] = nn.Parameter(newline, requires_grad=False)
    try:
        yield
    finally:
        model._parameters["image_newline"] = original


def packed_patches(model: nn.Module, image_size: Tensor, rows: Tensor, pack: Pack):
    """One image's per-patch rows packed by ``pack`` (the family's packing of its tokens).

    Parameters
    ----------
    model : nn.Module
        The vLLM model whose ``image_newline`` parameter ``pack`` reads.
    image_size : Tensor
        ``(2,)`` the image's height and width.
    rows : Tensor
        ``(crops, patches, c)`` per patch of each crop: its projector input (and scores).
    pack : callable
        ``(image_size, rows) -> (N, c)``, vLLM's packing of the image's tokens.

    Returns
    -------
    packed : Tensor
        ``(n, c)`` the patches' rows in the order of the image's tokens (base tile, then the
        unpadded tiles, interpolated where vLLM interpolates), as ``visprune.apply`` packs them.
    newline : Tensor
        ``(N,)`` bool over the image's ``N`` tokens: its newline tokens.
    """
    # A zero column marks the patches and a -1 the newline (bilinear interpolation keeps both).
    tagged = torch.cat((rows, rows.new_zeros(*rows.shape[:-1], 1)), dim=-1)
    marker = rows.new_zeros(rows.shape[-1] + 1)
    marker[-1] = -1.0
    with newline_swapped(model, marker):
        packed = pack(image_size, tagged)
    newline = packed[:, -1] < 0
    return packed[~newline, :-1], newline


class PatchRowsMixin:
    """For a pruned LLaVA-NeXT-style model: the kept rows of each image for the methods that
    score the tower's patches. ``_pack`` is the family's packing (LLaVA-NeXT's by default); the
    model sets ``self.visprune_scores``, the CLS scores (:class:`~.vision_scores.ClsScores`)
    where the method reads them, else ``None``."""

    def _pack(self, image_size: Tensor, rows: Tensor) -> Tensor:
        return self._merge_image_patch_embeddings(image_size, rows, strategy="spatial_unpad")

    def _patch_rows(self, image_input, text_ids) -> list[Tensor]:
        """Every crop through the tower once, its patches' projector input (and CLS scores,
        for the methods that read them) packed like the image's tokens, the newlines kept."""
        pixels = image_input["pixel_values"]
        crops = [len(image) for image in pixels]
        features, per_patch, scores = self._patch_features(torch.cat(list(pixels)))
        width = features.shape[-1]
        sizes = image_input.get("image_sizes")
        if sizes is None:
            side = self.config.vision_config.image_size
            sizes = torch.tensor([[side, side]] * len(crops))
        projected = self.multi_modal_projector(features).split(crops)
        candidates, embeddings, fixed, image_scores = [], [], [], []
        first = 0
        for number, image in enumerate(per_patch.split(crops)):
            embeddings.append(self._pack(sizes[number], projected[number]))
            rows, newline = packed_patches(self, sizes[number], image, self._pack)
            candidates.append(rows[:, :width].to(features.dtype))
            fixed.append(newline)
            if scores is not None:
                heads = scores["cls_attention"].shape[1]
                image_scores.append(
                    {
                        "cls_attention": rows[:, width : width + heads],
                        "vision_keys": rows[:, width + heads :],
                        "cls_state": scores["hidden"][first, 0],  # the base crop's CLS
                    }
                )
            first += crops[number]
        return select_rows(
            self.visprune,
            candidates,
            embeddings,
            self._texts(text_ids, len(embeddings)),
            scores=image_scores if scores is not None else None,
            project=self.multi_modal_projector,
            fixed=fixed,
        )

    def _patch_features(self, pixels: Tensor):
        """``(features, per_patch, scores)`` of the stacked crops: the projector input
        ``(C, patches, D)``; what is packed per patch (the features, and for the methods that
        read the CLS attention its column per head and the mean keys after them, in float32);
        the scores (``None`` where the method reads none)."""
        if self.visprune_scores is None:  # "vision"-stage: the projector input alone
            features = self._image_pixels_to_features(self.vision_tower, pixels)
            return features, features, None
        features, scores = self.visprune_scores.encode(self.vision_tower, pixels)
        per_patch = torch.cat(  # (C, patches, D + H + hd)
            [
                features.float(),
                scores["cls_attention"][:, :, 1:].transpose(1, 2),
                scores["keys"][:, 1:],
            ],
            dim=-1,
        )
        return features, per_patch, scores
