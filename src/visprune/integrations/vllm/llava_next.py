"""vLLM's LLaVA-NeXT, pruned when the override is set (vLLM's own classes otherwise).

An image's candidates are all its tokens as vLLM's LLaVA-NeXT packs them (base tile, then the
unpadded anyres tiles with one newline token per row), which is what ``visprune.apply`` selects
from with ``newlines="candidates"``; the budget applies per image. "vision"-stage methods are
refused at engine start: vLLM's LLaVA-NeXT keeps no per-token features before the projector
that line up with the packed tokens (the newline tokens have none).
"""

from __future__ import annotations

from vllm.model_executor.models.llava import LlavaDummyInputsBuilder
from vllm.model_executor.models.llava_next import (
    LlavaNextForConditionalGeneration,
    LlavaNextMultiModalProcessor,
    LlavaNextProcessingInfo,
)
from vllm.multimodal import MULTIMODAL_REGISTRY

from .processing import PromptTextMixin, PrunedInfoMixin, PrunedModelMixin
from .settings import settings_of


class PrunedLlavaNextProcessingInfo(PrunedInfoMixin, LlavaNextProcessingInfo):
    """``num_keep(n)`` tokens for an image vLLM would give ``n``."""


class PrunedLlavaNextMultiModalProcessor(PromptTextMixin, LlavaNextMultiModalProcessor):
    """vLLM's LLaVA-NeXT processor, carrying the prompt text for text-conditioned methods."""


def build_info(ctx):
    settings = settings_of(ctx.get_hf_config())
    if settings is None:
        return LlavaNextProcessingInfo(ctx)
    if settings.method.stage == "vision":  # refused at engine start already (guard.py)
        raise ValueError(
            f"visprune: {settings.method.name} is a 'vision'-stage method, which vLLM's "
            "LLaVA-NeXT cannot serve."
        )
    return PrunedLlavaNextProcessingInfo(ctx)


def build_processor(info, dummy_inputs):
    if isinstance(info, PrunedLlavaNextProcessingInfo):
        return PrunedLlavaNextMultiModalProcessor(info, dummy_inputs)
    return LlavaNextMultiModalProcessor(info, dummy_inputs)


@MULTIMODAL_REGISTRY.register_processor(
    build_processor, info=build_info, dummy_inputs=LlavaDummyInputsBuilder
)
class PrunedLlavaNextForConditionalGeneration(PrunedModelMixin, LlavaNextForConditionalGeneration):
    """vLLM's LLaVA-NeXT whose multimodal embedding returns each image's kept rows (in their
    packed order, at consecutive positions)."""

    def __init__(self, *, vllm_config, prefix: str = "") -> None:
        super().__init__(vllm_config=vllm_config, prefix=prefix)
        self._init_visprune(
            vllm_config, PrunedLlavaNextProcessingInfo, PrunedLlavaNextMultiModalProcessor
        )

    def embed_multimodal(self, **kwargs: object):
        if self.visprune is None:
            return super().embed_multimodal(**kwargs)
        image_input, text_ids = self._pixel_input(kwargs)
        if image_input is None:
            return []
        embeddings = list(self._process_image_input(image_input))
        return self._kept_rows(embeddings, embeddings, text_ids)
