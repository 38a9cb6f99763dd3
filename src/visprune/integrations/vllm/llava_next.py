"""vLLM's LLaVA-NeXT, pruned when the override is set (vLLM's own classes otherwise).

An image's candidates are all its tokens as vLLM's LLaVA-NeXT packs them (base tile, then the
unpadded anyres tiles with one newline token per row), which is what ``visprune.apply`` selects
from with ``newlines="candidates"``; the budget applies per image. Methods that score the
tower's patches ("vision"-stage ones such as ReDiPrune, and those that read the CLS attention)
get each crop's projector input (and scores) packed in the order of the image's tokens by
vLLM's own packing (:mod:`.anyres`); the newline tokens have no such feature, so they are no
candidates then and always stay, as in ``visprune.apply``.
"""

from __future__ import annotations

from torch import Tensor
from vllm.model_executor.models.llava import LlavaDummyInputsBuilder
from vllm.model_executor.models.llava_next import (
    LlavaNextForConditionalGeneration,
    LlavaNextMultiModalProcessor,
    LlavaNextProcessingInfo,
)

from .anyres import PatchBudgetMixin, PatchRowsMixin
from .processing import PromptTextMixin, PrunedInfoMixin, PrunedModelMixin
from .registration import register_pruned_processing
from .vision_scores import ScoredModelMixin


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
    ScoredModelMixin, PatchRowsMixin, PrunedModelMixin, LlavaNextForConditionalGeneration
):
    """vLLM's LLaVA-NeXT whose multimodal embedding returns each image's kept rows (in their
    packed order, at consecutive positions). "vision"-stage methods score the projector input
    (the selected CLIP layer without CLS, as in ``visprune.apply``); the others the projected
    tokens."""

    def __init__(self, *, vllm_config, prefix: str = "") -> None:
        super().__init__(vllm_config=vllm_config, prefix=prefix)
        self._init_visprune(vllm_config)
        self._init_scores()

    def _kept_image_rows(self, image_input, text_ids) -> list[Tensor]:
        if self.visprune.scores_patches:
            return self._patch_rows(image_input, text_ids)
        embeddings = list(self._process_image_input(image_input))
        return self._kept_rows(embeddings, embeddings, text_ids)
