"""vLLM's InternVL (HF-format checkpoints: InternVL 3 and 3.5 ``-hf``), pruned when the override
is set (vLLM's own classes otherwise).

vLLM registers ``InternVLForConditionalGeneration`` to its InternS1 model code, which reads the
HF format. An image is its tiles (plus a thumbnail when there are several), each
``image_seq_length`` pixel-shuffled tokens, written as ``<img>`` + ``<IMG_CONTEXT>`` per token +
``</img>``; as in ``visprune.apply``, the budget applies per image across all its tiles (one
selection from ``tiles * image_seq_length`` candidates), so the run of ``<IMG_CONTEXT>`` shrinks
to the kept count. "vision"-stage methods score each token's projector input (its tile's ViT
tokens after the pixel shuffle, CLS dropped), an image's tiles concatenated in order.
A video's frames are one-tile images there (transformers writes each as ``Frame<i>: <img> ...
</img>``, vLLM the same with ``<video>`` tokens): one selection per frame, the budget per frame.
"""

from __future__ import annotations

import torch
from vllm.model_executor.models.interns1 import (
    InternS1DummyInputsBuilder,
    InternS1ForConditionalGeneration,
    InternS1MultiModalProcessor,
    InternS1ProcessingInfo,
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
from .text import TEXT_FIELD


class PrunedInternVLProcessingInfo(PrunedInfoMixin, InternS1ProcessingInfo):
    """``num_keep(tiles * image_seq_length)`` tokens per image."""


class PrunedInternVLMultiModalProcessor(
    KeptPlaceholdersMixin, PromptTextMixin, InternS1MultiModalProcessor
):
    """vLLM's InternVL processor with each image's ``<IMG_CONTEXT>`` run, and each video frame's
    run of ``<video>`` tokens, cut to its kept count, carrying the prompt text for
    text-conditioned methods."""

    def _media_marks(self) -> list[int]:
        # The request's prompt holds one <IMG_CONTEXT> per image and one <video> per video;
        # vLLM expands them into runs of the same ids.
        processor = self.info.get_hf_processor()
        video = self.info.get_tokenizer().get_vocab()[processor.video_token]
        return [processor.image_token_id, video]

    _placeholder_ids = _media_marks


@register_pruned_processing(
    info=InternS1ProcessingInfo,
    processor=InternS1MultiModalProcessor,
    dummy_inputs=InternS1DummyInputsBuilder,
    pruned_info=PrunedInternVLProcessingInfo,
    pruned_processor=PrunedInternVLMultiModalProcessor,
)
class PrunedInternVLForConditionalGeneration(PrunedModelMixin, InternS1ForConditionalGeneration):
    """vLLM's InternVL whose multimodal embedding returns each image's kept rows (in tile
    order, at consecutive positions: ``positions="compact"`` in ``visprune.apply``)."""

    def __init__(self, *, vllm_config, prefix: str = "") -> None:
        super().__init__(vllm_config=vllm_config, prefix=prefix)
        self._init_visprune(vllm_config)

    def embed_multimodal(self, **kwargs: object):
        if self.visprune is None:
            return super().embed_multimodal(**kwargs)
        text_ids = kwargs.pop(TEXT_FIELD, None)
        kept: list[torch.Tensor] = []
        for modality, media in self._parse_and_validate_multimodal_inputs(**kwargs).items():
            if media is None:
                continue
            self._require_pixels(media)
            with projector_inputs(self.multi_modal_projector) as captured:
                tiles = self.extract_feature(media["pixel_values"])  # (tiles, n, d)
            candidates = tiles
            if self.visprune.method.stage == "vision":  # (tiles, n, 4 c): after the shuffle
                candidates = captured[0]
            counts = [int(count) for count in media["num_patches"]]
            if modality == "images":  # one selection per image, from all its tiles
                kept += self._kept_rows(
                    [image.flatten(0, 1) for image in candidates.split(counts)],
                    [image.flatten(0, 1) for image in tiles.split(counts)],
                    text_ids,
                )
            else:  # a video's frames: one-tile images, one selection each
                texts = self._texts(text_ids, len(counts))
                kept += select_in_parts(self.visprune, list(candidates), list(tiles), texts, counts)
        return kept
