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

from .guard import building_served_model
from .mrope import Run
from .qwen import QwenPrunedInfoMixin, QwenPrunedModelMixin, QwenPrunedProcessorMixin
from .registration import register_pruned_processing


def runs(modality: str, grid_thw: Sequence[int], merge: int, t_step: float) -> list[Run]:
    """One run per image, one per video frame."""
    t, h, w = grid_thw
    return [Run(1, h // merge, w // merge)] * (t if modality == "video" else 1)


class PrunedQwen3VLProcessingInfo(QwenPrunedInfoMixin, Qwen3VLProcessingInfo):
    """Kept tokens per image and per video."""


class PrunedQwen3VLMultiModalProcessor(QwenPrunedProcessorMixin, Qwen3VLMultiModalProcessor):
    """vLLM's Qwen3-VL processor with kept-size placeholders and the prompt text."""

    runs = staticmethod(runs)


@register_pruned_processing(
    info=Qwen3VLProcessingInfo,
    processor=Qwen3VLMultiModalProcessor,
    dummy_inputs=Qwen3VLDummyInputsBuilder,
    pruned_info=PrunedQwen3VLProcessingInfo,
    pruned_processor=PrunedQwen3VLMultiModalProcessor,
)
class PrunedQwen3VLForConditionalGeneration(QwenPrunedModelMixin, Qwen3VLForConditionalGeneration):
    """vLLM's Qwen3-VL whose multimodal embedding returns the kept rows (main and deepstack
    features) of each image and video frame, at their original M-RoPE positions."""

    runs = staticmethod(runs)

    def __init__(self, *, vllm_config, prefix: str = "model") -> None:
        with building_served_model():  # its language model resolves with this config
            super().__init__(vllm_config=vllm_config, prefix=prefix)
        self.candidate_columns = self.visual_dim
        self._init_visprune(vllm_config)
