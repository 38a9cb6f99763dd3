"""vLLM's Qwen2.5-VL, pruned when the override is set (vLLM's own classes otherwise).

An image is one grid of merged 2x2-patch tokens; a video is ``t`` temporal patch groups of that
grid, in one run of placeholders, selected group by group (the budget applies to each, as in
``visprune.apply``). Kept tokens keep their M-RoPE positions (``positions="original"``, the
family's only mode in transformers): a video group's temporal position is its index times the
seconds per group times the tower's ``tokens_per_second``.
"""

from __future__ import annotations

from collections.abc import Sequence

from vllm.model_executor.models.qwen2_5_vl import (
    Qwen2_5_VLDummyInputsBuilder,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2_5_VLMultiModalProcessor,
    Qwen2_5_VLProcessingInfo,
)

from .guard import building_served_model
from .mrope import Run
from .qwen import QwenPrunedInfoMixin, QwenPrunedModelMixin, QwenPrunedProcessorMixin
from .registration import register_pruned_processing


def runs(modality: str, grid_thw: Sequence[int], merge: int, t_step: float) -> list[Run]:
    """One run per image or video: ``t`` frames of the merged grid."""
    t, h, w = grid_thw
    return [Run(t if modality == "video" else 1, h // merge, w // merge, t_step)]


class PrunedQwen2_5_VLProcessingInfo(QwenPrunedInfoMixin, Qwen2_5_VLProcessingInfo):
    """Kept tokens per image and per video."""


class PrunedQwen2_5_VLMultiModalProcessor(QwenPrunedProcessorMixin, Qwen2_5_VLMultiModalProcessor):
    """vLLM's Qwen2.5-VL processor with kept-size placeholders and the prompt text."""

    runs = staticmethod(runs)


@register_pruned_processing(
    info=Qwen2_5_VLProcessingInfo,
    processor=Qwen2_5_VLMultiModalProcessor,
    dummy_inputs=Qwen2_5_VLDummyInputsBuilder,
    pruned_info=PrunedQwen2_5_VLProcessingInfo,
    pruned_processor=PrunedQwen2_5_VLMultiModalProcessor,
)
class PrunedQwen2_5_VLForConditionalGeneration(
    QwenPrunedModelMixin, Qwen2_5_VLForConditionalGeneration
):
    """vLLM's Qwen2.5-VL whose multimodal embedding returns the kept rows of each image and
    video group, at their original M-RoPE positions."""

    runs = staticmethod(runs)

    def __init__(self, *, vllm_config, prefix: str = "") -> None:
        with building_served_model():  # its language model resolves with this config
            super().__init__(vllm_config=vllm_config, prefix=prefix)
        self._init_visprune(vllm_config)

    def _seconds_step(self) -> float:
        return float(getattr(self.config.vision_config, "tokens_per_second", 1.0))

    def _t_step(self, modality: str, data) -> float:
        if modality != "video":
            return 1.0
        seconds = data.get("second_per_grid_ts")
        per_group = float(seconds.data.item()) if seconds is not None else 1.0
        return per_group * self._seconds_step()

    def _t_steps(self, modality: str, media, count: int) -> list[float]:
        seconds = media.get("second_per_grid_ts") if modality == "video" else None
        if seconds is None:
            return [1.0] * count
        return [float(s) * self._seconds_step() for s in seconds.reshape(-1).tolist()]
