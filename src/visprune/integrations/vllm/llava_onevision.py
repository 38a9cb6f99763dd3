"""vLLM's LLaVA-OneVision, pruned when the override is set (vLLM's own classes otherwise).

Images as in LLaVA-NeXT: an image's candidates are all its tokens as vLLM packs them (base
tile, then the unpadded anyres tiles with one newline token per row, which is what
``visprune.apply`` selects from with ``newlines="candidates"``); the budget applies per image.
A video is its frames' pooled grids, then one newline token: the budget applies per frame and
the newline is always kept, as in ``visprune.apply``. "vision"-stage methods are refused at
engine start (the packed image tokens have no per-token features before the projector: the
newline tokens have none).
"""

from __future__ import annotations

import torch
from vllm.model_executor.models.llava_onevision import (
    LlavaOnevisionDummyInputsBuilder,
    LlavaOnevisionForConditionalGeneration,
    LlavaOnevisionMultiModalProcessor,
    LlavaOnevisionProcessingInfo,
)
from vllm.multimodal import MULTIMODAL_REGISTRY

from .processing import PromptTextMixin, PrunedInfoMixin, PrunedModelMixin
from .selection import select_in_parts
from .settings import settings_of
from .text import TEXT_FIELD


class PrunedLlavaOnevisionProcessingInfo(PrunedInfoMixin, LlavaOnevisionProcessingInfo):
    """``num_keep(n)`` tokens for an image vLLM would give ``n``; per video frame
    ``num_keep(frame tokens)``, plus the closing newline."""

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


def build_info(ctx):
    settings = settings_of(ctx.get_hf_config())
    if settings is None:
        return LlavaOnevisionProcessingInfo(ctx)
    if settings.method.stage == "vision":  # refused at engine start already (guard.py)
        raise ValueError(
            f"visprune: {settings.method.name} is a 'vision'-stage method, which vLLM's "
            "LLaVA-OneVision cannot serve."
        )
    return PrunedLlavaOnevisionProcessingInfo(ctx)


def build_processor(info, dummy_inputs):
    if isinstance(info, PrunedLlavaOnevisionProcessingInfo):
        return PrunedLlavaOnevisionMultiModalProcessor(info, dummy_inputs)
    return LlavaOnevisionMultiModalProcessor(info, dummy_inputs)


@MULTIMODAL_REGISTRY.register_processor(
    build_processor, info=build_info, dummy_inputs=LlavaOnevisionDummyInputsBuilder
)
class PrunedLlavaOnevisionForConditionalGeneration(
    PrunedModelMixin, LlavaOnevisionForConditionalGeneration
):
    """vLLM's LLaVA-OneVision whose multimodal embedding returns the kept rows of each image
    and of each video frame (in order, at consecutive positions)."""

    def __init__(self, *, vllm_config, prefix: str = "") -> None:
        super().__init__(vllm_config=vllm_config, prefix=prefix)
        self._init_visprune(
            vllm_config, PrunedLlavaOnevisionProcessingInfo, PrunedLlavaOnevisionMultiModalProcessor
        )

    def embed_multimodal(self, **kwargs: object):
        if self.visprune is None:
            return super().embed_multimodal(**kwargs)
        text_ids = kwargs.pop(TEXT_FIELD, None)
        kept: list[torch.Tensor] = []
        for modality, inputs in self._parse_and_validate_multimodal_inputs(**kwargs).items():
            if modality == "image":
                self._require_pixels(inputs)
                embeddings = list(self._process_image_input(inputs))
                kept += self._kept_rows(embeddings, embeddings, text_ids)
            else:
                kept += self._kept_video_rows(inputs, text_ids)
        return kept

    def _kept_video_rows(self, inputs, text_ids) -> list[torch.Tensor]:
        videos = list(inputs["pixel_values_videos"])  # per video (frames, c, h, w)
        frames = [len(video) for video in videos]
        pooled = self._video_pixels_to_features(self.vision_tower, torch.cat(videos))
        parts = list(pooled)  # per frame (tokens, d), projected and pooled
        texts = self._texts(text_ids, len(videos))
        kept = select_in_parts(self.visprune, parts, parts, texts, frames)
        newline = self.image_newline[None].to(parts[0])
        return [torch.cat((video, newline)) for video in kept]
