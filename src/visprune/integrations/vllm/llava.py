"""vLLM's LLaVA-1.5 model, processor and processing info, pruned when the override is set.

Without ``hf_config.visprune`` every class here behaves as vLLM's own (the builders return
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
from vllm.multimodal import MULTIMODAL_REGISTRY
from vllm.multimodal.inputs import MultiModalBatchedField, MultiModalFieldElem

from .selection import select_rows
from .settings import ServingSettings, settings_of
from .text import TEXT_FIELD, text_after_images, with_text


class PrunedLlavaProcessingInfo(LlavaProcessingInfo):
    """Reports ``budget`` tokens per image, so vLLM reserves only the kept ones."""

    @property
    def settings(self) -> ServingSettings:
        return settings_of(self.get_hf_config())

    def get_num_image_tokens(self, *, image_width: int, image_height: int) -> int:
        candidates = super().get_num_image_tokens(
            image_width=image_width, image_height=image_height
        )
        return self.settings.num_keep(candidates)


class PrunedLlavaMultiModalProcessor(LlavaMultiModalProcessor):
    """Adds the prompt text after the images to every image item for text-conditioned methods,
    and makes it part of each item's cache identity."""

    def _text_of(self, prompt: list[int]) -> list[int]:
        return text_after_images(prompt, [self.info.get_hf_config().image_token_index])

    def _get_mm_hashes(self, inputs):
        hashes = super()._get_mm_hashes(inputs)
        if not self.info.settings.uses_text:
            return hashes
        text = self._text_of(inputs.prompt)
        return {modality: [with_text(h, text) for h in items] for modality, items in hashes.items()}

    def apply(self, inputs, timing_ctx):
        result = super().apply(inputs, timing_ctx)
        if self.info.settings.uses_text:
            text = torch.tensor(self._text_of(inputs.prompt), dtype=torch.long)
            # Items the engine already holds arrive as None and keep the text they were sent
            # with: their identity includes it, so it is this prompt's text.
            for item in result["mm_kwargs"].get("image", []):
                if item is not None:
                    item[TEXT_FIELD] = MultiModalFieldElem(
                        data=text, field=MultiModalBatchedField()
                    )
        return result


def build_info(ctx):
    """vLLM's info without the override; the pruned one (CLIP/SigLIP towers only) with it."""
    info = _build_llava_or_pixtral_hf_info(ctx)
    hf_config = ctx.get_hf_config()
    if settings_of(hf_config) is None:
        return info
    if isinstance(info, PixtralHFProcessingInfo):
        raise ValueError(
            "visprune: the vLLM plugin prunes LLaVA models with a CLIP or SigLIP tower; this one "
            "has a Pixtral tower (variable image sizes). Remove the override to serve it."
        )
    return PrunedLlavaProcessingInfo(ctx)


def build_processor(info, dummy_inputs):
    if isinstance(info, PrunedLlavaProcessingInfo):
        return PrunedLlavaMultiModalProcessor(info, dummy_inputs)
    return _build_llava_or_pixtral_hf_processor(info, dummy_inputs)


@MULTIMODAL_REGISTRY.register_processor(
    build_processor, info=build_info, dummy_inputs=LlavaDummyInputsBuilder
)
class PrunedLlavaForConditionalGeneration(LlavaForConditionalGeneration):
    """vLLM's LLaVA whose multimodal embedding returns each image's kept rows.

    "vision"-stage methods score the projector input (the selected CLIP layer without CLS, as
    in ``visprune.apply``); the others the projected tokens. Kept rows stay in image order and
    take consecutive positions (``positions="compact"`` in ``visprune.apply``).
    """

    def __init__(self, *, vllm_config, prefix: str = "") -> None:
        super().__init__(vllm_config=vllm_config, prefix=prefix)
        self.visprune = settings_of(self.config)

    def embed_multimodal(self, **kwargs: object):
        if self.visprune is None:
            return super().embed_multimodal(**kwargs)
        text_ids = kwargs.pop(TEXT_FIELD, None)
        image_input = self._parse_and_validate_image_input(**kwargs)
        if image_input is None:
            return []
        if image_input["type"] != "pixel_values":
            raise ValueError(
                "visprune: images given as ready embeddings cannot be pruned (the method needs "
                "the encoder's tokens); send pixels, or serve without the visprune override."
            )
        features = self._process_image_pixels(image_input)
        if isinstance(features, torch.Tensor):  # (images, n, d_v): projected as one batch
            embeddings = list(self.multi_modal_projector(features))
        else:
            embeddings = [self.multi_modal_projector(image) for image in features]
        features = list(features)
        vision = self.visprune.method.stage == "vision"
        return select_rows(
            self.visprune,
            features if vision else embeddings,
            embeddings,
            self._texts(text_ids, len(features)),
        )

    def _texts(self, text_ids, images: int) -> list[torch.Tensor] | None:
        if not self.visprune.uses_text:
            return None
        if text_ids is None:
            raise ValueError(
                f"visprune: {self.visprune.method.name} reads the prompt, but the images "
                "arrived without it; they must come through visprune's processor."
            )
        rows = list(text_ids)
        if len(rows) != images:
            raise ValueError(f"visprune: {len(rows)} prompt texts for {images} images.")
        embed = self.language_model.embed_input_ids
        return [
            embed(row.reshape(-1).to(self.multi_modal_projector.linear_1.weight.device))
            for row in rows
        ]
