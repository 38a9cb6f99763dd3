"""vLLM's Qwen3-VL, pruned when the override is set (vLLM's own classes otherwise).

Images as in Qwen2.5-VL; a video's frames (temporal patch groups) are separate runs of
placeholders, each after its timestamp text, selected frame by frame and positioned like an
image each (as transformers does). Deepstack: vLLM carries the tower's intermediate features
as columns after the main ones, so each kept row brings its deepstack features along, and the
language model adds them at the kept positions only. The method scores the main features.
"""

from __future__ import annotations

from collections.abc import Sequence

from vllm.model_executor.models.qwen3_vl import (
    Qwen3VLDummyInputsBuilder,
    Qwen3VLForConditionalGeneration,
    Qwen3VLMultiModalProcessor,
    Qwen3VLProcessingInfo,
)
from vllm.multimodal import MULTIMODAL_REGISTRY

from .guard import building_served_model
from .mrope import Run
from .qwen import QwenPrunedInfoMixin, QwenPrunedModelMixin, QwenPrunedProcessorMixin
from .settings import settings_of


def runs(modality: str, grid_thw: Sequence[int], merge: int, t_step: float) -> list[Run]:
    """One run per image, one per video frame."""
    t, h, w = grid_thw
    return [Run(1, h // merge, w // merge)] * (t if modality == "video" else 1)


class PrunedQwen3VLProcessingInfo(QwenPrunedInfoMixin, Qwen3VLProcessingInfo):
    """Kept tokens per image and per video."""


class PrunedQwen3VLMultiModalProcessor(QwenPrunedProcessorMixin, Qwen3VLMultiModalProcessor):
    """vLLM's Qwen3-VL processor with kept-size placeholders and the prompt text."""

    runs = staticmethod(runs)


def build_info(ctx):
    if settings_of(ctx.get_hf_config()) is None:
        return Qwen3VLProcessingInfo(ctx)
    return PrunedQwen3VLProcessingInfo(ctx)


def build_processor(info, dummy_inputs):
    if isinstance(info, PrunedQwen3VLProcessingInfo):
        return PrunedQwen3VLMultiModalProcessor(info, dummy_inputs)
    return Qwen3VLMultiModalProcessor(info, dummy_inputs)


@MULTIMODAL_REGISTRY.register_processor(
    build_processor, info=build_info, dummy_inputs=Qwen3VLDummyInputsBuilder
)
class PrunedQwen3VLForConditionalGeneration(QwenPrunedModelMixin, Qwen3VLForConditionalGeneration):
    """vLLM's Qwen3-VL whose multimodal embedding returns the kept rows (main and deepstack
    features) of each image and video frame, at their original M-RoPE positions."""

    runs = staticmethod(runs)

    def __init__(self, *, vllm_config, prefix: str = "model") -> None:
        with building_served_model():  # its language model resolves with this config
            super().__init__(vllm_config=vllm_config, prefix=prefix)
        self.candidate_columns = self.visual_dim
        self._init_visprune(
            vllm_config, PrunedQwen3VLProcessingInfo, PrunedQwen3VLMultiModalProcessor
        )
