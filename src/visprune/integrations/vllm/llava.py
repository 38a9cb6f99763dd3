"""vLLM's LLaVA-1.5 model, processor and processing info, pruned when the override is set.

Without ``hf_config.visprune`` every class here behaves as vLLM's own (the registration gives
vLLM's info and processor, and the model defers to its parent).
"""

from __future__ import annotations

import torch
from vllm.model_executor.models.llava import (
    LlavaDummyInputsBuilder,
    LlavaForConditionalGeneration,
    LlavaMultiModalProcessor,
    LlavaProcessingInfo,
    PixtralHFProcessingInfo,
    _build_llava_or_pixtral_hf_info,
    _build_llava_or_pixtral_hf_processor,
)

from .processing import PromptTextMixin, PrunedInfoMixin, PrunedModelMixin
from .registration import register_pruned_processing
from .selection import select_rows
from .vision_scores import ScoredModelMixin, per_image


class PrunedLlavaProcessingInfo(PrunedInfoMixin, LlavaProcessingInfo):
    """``budget`` tokens per image."""


class PrunedLlavaMultiModalProcessor(PromptTextMixin, LlavaMultiModalProcessor):
    """vLLM's LLaVA processor, carrying the prompt text for text-conditioned methods."""


def refuse_pixtral(ctx) -> None:
    """The plugin prunes LLaVA models with a CLIP or SigLIP tower only."""
    if isinstance(_build_llava_or_pixtral_hf_info(ctx), PixtralHFProcessingInfo):
        raise ValueError(
            "visprune: the vLLM plugin prunes LLaVA models with a CLIP or SigLIP tower; this one "
            "has a Pixtral tower (variable image sizes). Remove the override to serve it."
        )


@register_pruned_processing(
    info=_build_llava_or_pixtral_hf_info,
    processor=_build_llava_or_pixtral_hf_processor,
    dummy_inputs=LlavaDummyInputsBuilder,
    pruned_info=PrunedLlavaProcessingInfo,
    pruned_processor=PrunedLlavaMultiModalProcessor,
    refuse=refuse_pixtral,
)
class PrunedLlavaForConditionalGeneration(
    ScoredModelMixin, PrunedModelMixin, LlavaForConditionalGeneration
):
    """vLLM's LLaVA whose multimodal embedding returns each image's kept rows.

    "vision"-stage methods score the projector input (the selected CLIP layer without CLS, as
    in ``visprune.apply``); the others the projected tokens. Kept rows stay in image order and
    take consecutive positions (``positions="compact"`` in ``visprune.apply``). Methods that
    read the CLS attention (VisPruner, VisionZip) get it from the scoring CLIP layer
    (:mod:`.vision_scores`); VisionZip's new tokens are projected and placed as in transformers.
    """

    def __init__(self, *, vllm_config, prefix: str = "") -> None:
        super().__init__(vllm_config=vllm_config, prefix=prefix)
        self._init_visprune(vllm_config)
        self._init_scores()

    def _kept_image_rows(self, image_input, text_ids) -> list[torch.Tensor]:
        if self.visprune_scores is not None:
            return self._scored_rows(image_input["pixel_values"], text_ids)
        features = self._process_image_pixels(image_input)
        if isinstance(features, torch.Tensor):  # (images, n, d_v): projected as one batch
            embeddings = list(self.multi_modal_projector(features))
        else:
            embeddings = [self.multi_modal_projector(image) for image in features]
        features = list(features)
        vision = self.visprune.method.stage == "vision"
        return self._kept_rows(features if vision else embeddings, embeddings, text_ids)

    def _scored_rows(self, pixels, text_ids):
        """Kept rows for methods that read the CLS attention (and merge, for VisionZip)."""
        features, scores = self.visprune_scores.encode(self.vision_tower, pixels)
        embeddings = list(self.multi_modal_projector(features))
        return select_rows(
            self.visprune,
            list(features),
            embeddings,
            self._texts(text_ids, len(embeddings)),
            scores=[per_image(scores, image) for image in range(len(embeddings))],
            project=self.multi_modal_projector,
        )
