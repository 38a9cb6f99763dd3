"""vLLM's LLaVA-OneVision, pruned when the override is set (vLLM's own classes otherwise).

Images as in LLaVA-NeXT: an image's candidates are all its tokens as vLLM packs them (base
tile, then the unpadded anyres tiles with one newline token per row, which is what
``visprune.apply`` selects from with ``newlines="candidates"``); the budget applies per image.
A video is its frames' pooled grids, then one newline token: the budget applies per frame and
the newline is always kept, as in ``visprune.apply``. "vision"-stage methods score the
projector input: an image's packed by vLLM's own packing (its interpolation included) with a
marked newline, the newlines then no candidates and always kept; a video frame's pooled as vLLM
pools the projected frame, as in ``visprune.apply``.
"""

from __future__ import annotations

import functools

import torch
from vllm.model_executor.models.llava_onevision import (
    LlavaOnevisionDummyInputsBuilder,
    LlavaOnevisionForConditionalGeneration,
    LlavaOnevisionMultiModalProcessor,
    LlavaOnevisionProcessingInfo,
)

from .anyres import PatchBudgetMixin, PatchRowsMixin, packed_patches
from .processing import PromptTextMixin, PrunedInfoMixin, PrunedModelMixin
from .registration import register_pruned_processing
from .selection import select_in_parts
from .text import TEXT_FIELD


class PrunedLlavaOnevisionProcessingInfo(
    PatchBudgetMixin, PrunedInfoMixin, LlavaOnevisionProcessingInfo
):
    """``num_keep(n)`` tokens for an image vLLM would give ``n`` (``num_keep(patches) +
    newlines`` for "vision"-stage methods); per video frame ``num_keep(frame tokens)``, plus
    the closing newline."""

    def get_num_video_tokens(self, *, image_width: int, image_height: int, num_frames: int):
        per_frame = self._get_num_frame_tokens(image_width=image_width, image_height=image_height)
        return num_frames * self.settings.num_keep(per_frame) + 1


class PrunedLlavaOnevisionMultiModalProcessor(PromptTextMixin, LlavaOnevisionMultiModalProcessor):
    """vLLM's OneVision processor, carrying the prompt text (after the last image or video
    token) for text-conditioned methods."""

    def _media_marks(self) -> list[int]:
        config = self.info.get_hf_config()
        return [config.image_token_index, config.video_token_index]

    _placeholder_ids = _media_marks


def pack_onevision(model, image_size: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """vLLM's OneVision packing of one image's ``(crops, patches, c)`` rows (its interpolation
    included) with the model's newline: ``(N, c)`` in the order of the image's tokens."""
    return model._merge_image_patch_embeddings(
        image_size, rows, image_newline=model.image_newline, strategy="spatial_unpad"
    )


def packed_projector_input(model, image_size: torch.Tensor, features: torch.Tensor):
    """One image's projector input packed by vLLM's OneVision packing of its tokens.

    Parameters
    ----------
    model : vLLM ``LlavaOnevisionForConditionalGeneration``
    image_size : Tensor
        ``(2,)`` the image's height and width.
    features : Tensor
        ``(crops, patches, d_v)`` its crops' projector input.

    Returns
    -------
    candidates : Tensor
        ``(n, d_v)`` the patches in the order of the image's tokens (base tile, then the
        unpadded tiles, interpolated where vLLM interpolates), as ``visprune.apply`` packs them.
    newline : Tensor
        ``(N,)`` bool over the image's ``N`` tokens: its newline tokens.
    """
    return packed_patches(model, image_size, features, functools.partial(pack_onevision, model))


@register_pruned_processing(
    info=LlavaOnevisionProcessingInfo,
    processor=LlavaOnevisionMultiModalProcessor,
    dummy_inputs=LlavaOnevisionDummyInputsBuilder,
    pruned_info=PrunedLlavaOnevisionProcessingInfo,
    pruned_processor=PrunedLlavaOnevisionMultiModalProcessor,
)
class PrunedLlavaOnevisionForConditionalGeneration(
    PatchRowsMixin, PrunedModelMixin, LlavaOnevisionForConditionalGeneration
):
    """vLLM's LLaVA-OneVision whose multimodal embedding returns the kept rows of each image
    and of each video frame (in order, at consecutive positions)."""

    _pack = pack_onevision

    def __init__(self, *, vllm_config, prefix: str = "") -> None:
        super().__init__(vllm_config=vllm_config, prefix=prefix)
        self._init_visprune(vllm_config)
        self.visprune_scores = None  # its SigLIP tower has no CLS row

    def embed_multimodal(self, **kwargs: object):
        if self.visprune is None:
            return super().embed_multimodal(**kwargs)
        text_ids = kwargs.pop(TEXT_FIELD, None)
        kept: list[torch.Tensor] = []
        for modality, inputs in self._parse_and_validate_multimodal_inputs(**kwargs).items():
            if modality == "image":
                self._require_pixels(inputs)
                if self.visprune.method.stage == "vision":
                    kept += self._patch_rows(inputs, text_ids)
                    continue
                embeddings = list(self._process_image_input(inputs))
                kept += self._kept_rows(embeddings, embeddings, text_ids)
            else:
                kept += self._kept_video_rows(inputs, text_ids)
        return kept

    def _kept_video_rows(self, inputs, text_ids) -> list[torch.Tensor]:
        videos = list(inputs["pixel_values_videos"])  # per video (frames, c, h, w)
        frames = [len(video) for video in videos]
        stacked = torch.cat(videos)
        if self.visprune.method.stage == "vision":
            # vLLM's _video_pixels_to_features, keeping the projector input (pooled the same
            # way) for the method to score
            features = self._image_pixels_to_features(self.vision_tower, stacked)
            parts = list(self.apply_pooling(self.multi_modal_projector(features)))
            candidates = list(self.apply_pooling(features))
        else:
            parts = list(self._video_pixels_to_features(self.vision_tower, stacked))
            candidates = parts  # per frame (tokens, d), projected and pooled
        texts = self._texts(text_ids, len(videos))
        kept = select_in_parts(self.visprune, candidates, parts, texts, frames)
        newline = self.image_newline[None].to(parts[0])
        return [torch.cat((video, newline)) for video in kept]
