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

import torch
from vllm.model_executor.models.llava_onevision import (
    LlavaOnevisionDummyInputsBuilder,
    LlavaOnevisionForConditionalGeneration,
    LlavaOnevisionMultiModalProcessor,
    LlavaOnevisionProcessingInfo,
)

from .llava_next import PatchBudgetMixin, newline_swapped
from .processing import PromptTextMixin, PrunedInfoMixin, PrunedModelMixin
from .registration import register_pruned_processing
from .selection import select_in_parts, select_rows
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


@register_pruned_processing(
    info=LlavaOnevisionProcessingInfo,
    processor=LlavaOnevisionMultiModalProcessor,
    dummy_inputs=LlavaOnevisionDummyInputsBuilder,
    pruned_info=PrunedLlavaOnevisionProcessingInfo,
    pruned_processor=PrunedLlavaOnevisionMultiModalProcessor,
)
class PrunedLlavaOnevisionForConditionalGeneration(
    PrunedModelMixin, LlavaOnevisionForConditionalGeneration
):
    """vLLM's LLaVA-OneVision whose multimodal embedding returns the kept rows of each image
    and of each video frame (in order, at consecutive positions)."""

    def __init__(self, *, vllm_config, prefix: str = "") -> None:
        super().__init__(vllm_config=vllm_config, prefix=prefix)
        self._init_visprune(vllm_config)

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

    def _patch_rows(self, inputs, text_ids) -> list[torch.Tensor]:
        """Kept rows of each image for "vision"-stage methods: its crops' projector input
        packed like its tokens, the newlines kept."""
        pixels = inputs["pixel_values"]
        crops = [len(image) for image in pixels]
        features = self._image_pixels_to_features(self.vision_tower, torch.cat(list(pixels)))
        projected = self.multi_modal_projector(features).split(crops)
        sizes = inputs.get("image_sizes")
        if sizes is None:
            side = self.config.vision_config.image_size
            sizes = torch.tensor([[side, side]] * len(crops))
        candidates, embeddings, fixed = [], [], []
        for number, crop_features in enumerate(features.split(crops)):
            embeddings.append(
                self._merge_image_patch_embeddings(
                    sizes[number],
                    projected[number],
                    image_newline=self.image_newline,
                    strategy="spatial_unpad",
                )
            )
            patches, newline = packed_projector_input(self, sizes[number], crop_features)
            candidates.append(patches)
            fixed.append(newline)
        texts = self._texts(text_ids, len(embeddings))
        return select_rows(self.visprune, candidates, embeddings, texts, fixed=fixed)

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
    # A zero column marks the patches and a -1 the newline (bilinear interpolation keeps both).
    tagged = torch.cat((features, features.new_zeros(*features.shape[:-1], 1)), dim=-1)
    marker = features.new_zeros(features.shape[-1] + 1)
    marker[-1] = -1.0
    with newline_swapped(model, marker):  # a one-crop image reads the parameter
        packed = model._merge_image_patch_embeddings(
            image_size, tagged, image_newline=marker, strategy="spatial_unpad"
        )
    newline = packed[:, -1] < 0
    return packed[~newline, :-1], newline
