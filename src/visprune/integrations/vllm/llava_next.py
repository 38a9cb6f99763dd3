"""vLLM's LLaVA-NeXT, pruned when the override is set (vLLM's own classes otherwise).

An image's candidates are all its tokens as vLLM's LLaVA-NeXT packs them (base tile, then the
unpadded anyres tiles with one newline token per row), which is what ``visprune.apply`` selects
from with ``newlines="candidates"``; the budget applies per image. Methods that score the
tower's patches ("vision"-stage ones such as ReDiPrune, and those that read the CLS attention)
get each crop's projector input (and scores) packed in the order of the image's tokens by
vLLM's own packing of a map of patch indices; the newline tokens have no such feature, so they
are no candidates then and always stay, as in ``visprune.apply``.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn
from vllm.model_executor.models.llava import LlavaDummyInputsBuilder
from vllm.model_executor.models.llava_next import (
    LlavaNextForConditionalGeneration,
    LlavaNextMultiModalProcessor,
    LlavaNextProcessingInfo,
    get_anyres_image_grid_shape,
)

from .processing import PromptTextMixin, PrunedInfoMixin, PrunedModelMixin
from .registration import register_pruned_processing
from .selection import select_rows
from .vision_scores import ScoredModelMixin


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


class PrunedLlavaNextProcessingInfo(PatchBudgetMixin, PrunedInfoMixin, LlavaNextProcessingInfo):
    """``num_keep(n)`` tokens for an image vLLM would give ``n``; for methods that score the
    tower's patches ``num_keep(patches) + newlines``."""


class PrunedLlavaNextMultiModalProcessor(PromptTextMixin, LlavaNextMultiModalProcessor):
    """vLLM's LLaVA-NeXT processor, carrying the prompt text for text-conditioned methods."""


@register_pruned_processing(
    info=LlavaNextProcessingInfo,
    processor=LlavaNextMultiModalProcessor,
    dummy_inputs=LlavaDummyInputsBuilder,
    pruned_info=PrunedLlavaNextProcessingInfo,
    pruned_processor=PrunedLlavaNextMultiModalProcessor,
)
class PrunedLlavaNextForConditionalGeneration(
    ScoredModelMixin, PrunedModelMixin, LlavaNextForConditionalGeneration
):
    """vLLM's LLaVA-NeXT whose multimodal embedding returns each image's kept rows (in their
    packed order, at consecutive positions). "vision"-stage methods score the projector input
    (the selected CLIP layer without CLS, as in ``visprune.apply``); the others the projected
    tokens."""

    def __init__(self, *, vllm_config, prefix: str = "") -> None:
        super().__init__(vllm_config=vllm_config, prefix=prefix)
        self._init_visprune(vllm_config)
        self._init_scores()

    def embed_multimodal(self, **kwargs: object):
        if self.visprune is None:
            return super().embed_multimodal(**kwargs)
        image_input, text_ids = self._pixel_input(kwargs)
        if image_input is None:
            return []
        if self.visprune.scores_patches:
            return self._patch_rows(image_input, text_ids)
        embeddings = list(self._process_image_input(image_input))
        return self._kept_rows(embeddings, embeddings, text_ids)

    def _patch_rows(self, image_input, text_ids):
        """Kept rows for methods that score the tower's patches: every crop through the tower
        once, its patches' projector input (and CLS scores, for the methods that read them)
        packed like the image's tokens, the newlines always kept."""
        pixels = image_input["pixel_values"]
        crops = [len(image) for image in pixels]
        stacked = torch.cat(list(pixels))
        if self.visprune_scores is None:  # "vision"-stage: the projector input alone
            features = self._image_pixels_to_features(self.vision_tower, stacked)
            scores, heads = None, 0
            per_patch = features.float()
        else:
            features, scores = self.visprune_scores.encode(self.vision_tower, stacked)
            heads = scores["cls_attention"].shape[1]
            per_patch = torch.cat(  # (C, patches, D + H + hd)
                [
                    features.float(),
                    scores["cls_attention"][:, :, 1:].transpose(1, 2),
                    scores["keys"][:, 1:],
                ],
                dim=-1,
            )
        patches, width = features.shape[1], features.shape[-1]
        per_patch = per_patch.flatten(0, 1)  # (C * patches, ...), the order the index map names
        sizes = image_input.get("image_sizes")
        if sizes is None:
            side = self.config.vision_config.image_size
            sizes = torch.tensor([[side, side]] * len(crops))
        projected = self.multi_modal_projector(features).split(crops)
        index = torch.arange(len(per_patch), dtype=torch.float64, device=features.device)
        index = index.view(-1, patches, 1).split(crops)
        candidates, embeddings, fixed, image_scores = [], [], [], []
        first = 0
        for number, count in enumerate(crops):
            packed = self._merge_image_patch_embeddings(
                sizes[number], projected[number], strategy="spatial_unpad"
            )
            with self._newline_marker():
                order = self._merge_image_patch_embeddings(
                    sizes[number], index[number], strategy="spatial_unpad"
                )[:, 0]
            newline = order < 0
            rows = per_patch[order[~newline].long()]
            candidates.append(rows[:, :width].to(features.dtype))
            if scores is not None:
                image_scores.append(
                    {
                        "cls_attention": rows[:, width : width + heads],
                        "vision_keys": rows[:, width + heads :],
                        "cls_state": scores["hidden"][first, 0],  # the base crop's CLS
                    }
                )
            embeddings.append(packed)
            fixed.append(newline)
            first += count
        return select_rows(
            self.visprune,
            candidates,
            embeddings,
            self._texts(text_ids, len(embeddings)),
            scores=image_scores if scores is not None else None,
            project=self.multi_modal_projector,
            fixed=fixed,
        )

    def _newline_marker(self):
        """vLLM's packing with ``-1`` for the newline token: packing a ``(crops, patches, 1)``
        map of patch indices then gives each packed token's patch (``-1``: a newline)."""
        newline = self._parameters["image_newline"]
        return newline_swapped(
            self, torch.full((1,), -1.0, dtype=torch.float64, device=newline.device)
        )


@contextlib.contextmanager
def newline_swapped(model: nn.Module, newline: torch.Tensor):
    """``model.image_newline`` is ``newline`` ``(d,)`` for the duration (vLLM's packing reads
    the parameter), so its packing of other rows than the projected tokens marks the newlines."""
    original = model._parameters["image_newline"]
    model._parameters["image_newline"] = nn.Parameter(newline, requires_grad=False)
    try:
        yield
    finally:
        model._parameters["image_newline"] = original
