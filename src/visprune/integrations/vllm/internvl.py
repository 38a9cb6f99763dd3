"""vLLM's InternVL (HF-format checkpoints: InternVL 3 and 3.5 ``-hf``), pruned when the override
is set (vLLM's own classes otherwise).

vLLM registers ``InternVLForConditionalGeneration`` to its InternS1 model code, which reads the
HF format. An image is its tiles (plus a thumbnail when there are several), each
``image_seq_length`` pixel-shuffled tokens, written as ``<img>`` + ``<IMG_CONTEXT>`` per token +
``</img>``; as in ``visprune.apply``, the budget applies per image across all its tiles (one
selection from ``tiles * image_seq_length`` candidates), so the run of ``<IMG_CONTEXT>`` shrinks
to the kept count. "vision"-stage methods score each token's projector input (its tile's ViT
tokens after the pixel shuffle, CLS dropped), an image's tiles concatenated in order.
Video is not pruned here: the pruned model accepts images only.
"""

from __future__ import annotations

from vllm.model_executor.models.interns1 import (
    InternS1DummyInputsBuilder,
    InternS1ForConditionalGeneration,
    InternS1MultiModalProcessor,
    InternS1ProcessingInfo,
)
from vllm.multimodal import MULTIMODAL_REGISTRY

from .processing import (
    KeptPlaceholdersMixin,
    PromptTextMixin,
    PrunedInfoMixin,
    PrunedModelMixin,
    projector_inputs,
)
from .settings import settings_of


class PrunedInternVLProcessingInfo(PrunedInfoMixin, InternS1ProcessingInfo):
    """``num_keep(tiles * image_seq_length)`` tokens per image; images only."""

    def get_supported_mm_limits(self):
        return {"image": None}


class PrunedInternVLMultiModalProcessor(
    KeptPlaceholdersMixin, PromptTextMixin, InternS1MultiModalProcessor
):
    """vLLM's InternVL processor with each image's ``<IMG_CONTEXT>`` run cut to its kept count,
    carrying the prompt text for text-conditioned methods."""

    def _context_id(self) -> int:
        return self.info.get_hf_processor().image_token_id

    def _media_marks(self) -> list[int]:
        return [self._context_id()]  # the request's prompt holds one <IMG_CONTEXT> per image

    def _placeholder_ids(self) -> list[int]:
        return [self._context_id()]


def build_info(ctx):
    if settings_of(ctx.get_hf_config()) is None:
        return InternS1ProcessingInfo(ctx)
    return PrunedInternVLProcessingInfo(ctx)


def build_processor(info, dummy_inputs):
    if isinstance(info, PrunedInternVLProcessingInfo):
        return PrunedInternVLMultiModalProcessor(info, dummy_inputs)
    return InternS1MultiModalProcessor(info, dummy_inputs)


@MULTIMODAL_REGISTRY.register_processor(
    build_processor, info=build_info, dummy_inputs=InternS1DummyInputsBuilder
)
class PrunedInternVLForConditionalGeneration(PrunedModelMixin, InternS1ForConditionalGeneration):
    """vLLM's InternVL whose multimodal embedding returns each image's kept rows (in tile
    order, at consecutive positions: ``positions="compact"`` in ``visprune.apply``)."""

    def __init__(self, *, vllm_config, prefix: str = "") -> None:
        super().__init__(vllm_config=vllm_config, prefix=prefix)
        self._init_visprune()

    def embed_multimodal(self, **kwargs: object):
        if self.visprune is None:
            return super().embed_multimodal(**kwargs)
        image_input, text_ids = self._pixel_input(kwargs)
        if image_input is None:
            return []
        with projector_inputs(self.multi_modal_projector) as captured:
            tiles = self.extract_feature(image_input["pixel_values"])  # (tiles, n, d)
        counts = [int(count) for count in image_input["num_patches"]]
        embeddings = [image.flatten(0, 1) for image in tiles.split(counts)]
        candidates = embeddings
        if self.visprune.method.stage == "vision":  # (tiles, n, 4 c) after the pixel shuffle
            candidates = [image.flatten(0, 1) for image in captured[0].split(counts)]
        return self._kept_rows(candidates, embeddings, text_ids)
