"""vLLM's Gemma 3, pruned when the override is set (vLLM's own classes otherwise).

An image (and each pan-and-scan crop, which transformers writes as one more image) is
``mm_tokens_per_image`` soft tokens between ``<start_of_image>`` and ``<end_of_image>``; as in
``visprune.apply``, each is its own selection with its own budget, and its run of soft tokens
shrinks to the kept count. "vision"-stage methods score the vision tower's output pooled to the
soft-token grid the way the projector pools it, before its norm and projection.

Attention: vLLM marks Gemma 3 a prefix-LM model and gives every backend that supports it the
span of each image's embedding rows (``PlaceholderRange.extract_embeds_range``), within which
attention is bidirectional. Those spans come from the placeholders vLLM placed, which here are
the kept ones, so the kept tokens of one image attend to each other both ways, as in
transformers. (vLLM's CPU attention backend has no such support: on CPU vLLM serves Gemma 3
causally, pruned or not.)
"""

from __future__ import annotations

from torch import Tensor
from vllm.model_executor.models.gemma3_mm import (
    Gemma3DummyInputsBuilder,
    Gemma3ForConditionalGeneration,
    Gemma3MultiModalProcessor,
    Gemma3ProcessingInfo,
)

from .processing import (
    KeptPlaceholdersMixin,
    PromptTextMixin,
    PrunedInfoMixin,
    PrunedModelMixin,
    projector_inputs,
)
from .registration import register_pruned_processing
from .selection import select_in_parts


class PrunedGemma3ProcessingInfo(PrunedInfoMixin, Gemma3ProcessingInfo):
    """``num_keep(mm_tokens_per_image)`` tokens for the image and for each of its crops."""

    def get_num_image_tokens(self, **kwargs) -> int:
        per_image = kwargs["processor"].image_seq_length
        parts = self.get_num_image_candidates(**kwargs) // per_image
        return parts * self.settings.num_keep(per_image)


class PrunedGemma3MultiModalProcessor(
    KeptPlaceholdersMixin, PromptTextMixin, Gemma3MultiModalProcessor
):
    """vLLM's Gemma 3 processor with each run of soft tokens cut to its kept count, carrying
    the prompt text for text-conditioned methods."""

    def _media_marks(self) -> list[int]:
        return [self.info.get_hf_config().boi_token_index]

    def _placeholder_ids(self) -> list[int]:
        return [self.info.get_hf_config().image_token_index]


@register_pruned_processing(
    info=Gemma3ProcessingInfo,
    processor=Gemma3MultiModalProcessor,
    dummy_inputs=Gemma3DummyInputsBuilder,
    pruned_info=PrunedGemma3ProcessingInfo,
    pruned_processor=PrunedGemma3MultiModalProcessor,
)
class PrunedGemma3ForConditionalGeneration(PrunedModelMixin, Gemma3ForConditionalGeneration):
    """vLLM's Gemma 3 whose multimodal embedding returns the kept rows of each image and crop
    (in order, at consecutive positions: ``positions="compact"`` in ``visprune.apply``)."""

    def __init__(self, *, vllm_config, prefix: str = "") -> None:
        super().__init__(vllm_config=vllm_config, prefix=prefix)
        self._init_visprune(vllm_config)

    def _kept_image_rows(self, image_input, text_ids) -> list[Tensor]:
        parts = [int(count) for count in image_input["num_patches"]]  # crops + 1 per image
        projector = self.multi_modal_projector
        with projector_inputs(projector) as captured:
            features = self._image_pixels_to_features(
                self.vision_tower, image_input["pixel_values"]
            )
            embeddings = list(projector(features))  # per crop (tokens, d)
        candidates = embeddings
        if self.visprune.method.stage == "vision":
            candidates = list(pooled(projector, captured[0]))
        texts = self._texts(text_ids, len(parts))
        return select_in_parts(self.visprune, candidates, embeddings, texts, parts)


def pooled(projector, patches):
    """``(crops, tokens, c)``: the vision tower's ``(crops, patches, c)`` output average-pooled
    to the soft-token grid, as the projector pools it before its norm and projection."""
    crops, _, channels = patches.shape
    side = projector.patches_per_image
    grid = patches.transpose(1, 2).reshape(crops, channels, side, side)
    return projector.avg_pool(grid).flatten(2).transpose(1, 2)
