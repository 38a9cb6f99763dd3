"""What every pruned vLLM model shares: its processor reports the kept token count and carries
the prompt text, its model selects the kept rows. Imports vLLM (engine processes only)."""

from __future__ import annotations

import torch
from vllm.multimodal.inputs import MultiModalBatchedField, MultiModalFieldElem

from .selection import select_rows
from .settings import ServingSettings, settings_of
from .text import TEXT_FIELD, text_after_images, with_text


class PrunedInfoMixin:
    """For a vLLM ``BaseLlavaProcessingInfo``: ``budget`` placeholder tokens per image, so vLLM
    reserves (and schedules, and reports) only the kept ones."""

    @property
    def settings(self) -> ServingSettings:
        return settings_of(self.get_hf_config())

    def get_num_image_tokens(self, *, image_width: int, image_height: int) -> int:
        candidates = super().get_num_image_tokens(
            image_width=image_width, image_height=image_height
        )
        return self.settings.num_keep(candidates)


class PromptTextMixin:
    """For a vLLM multimodal processor: text-conditioned methods get the prompt's tokens after
    its last image with every image item, and that text becomes part of the item's identity
    (processor cache, encoder cache and prefix cache key on it)."""

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


class PrunedModelMixin:
    """For a vLLM LLaVA-style model: ``self.visprune`` from the config, and the kept rows."""

    def _init_visprune(self) -> None:
        self.visprune = settings_of(self.config)

    def _pixel_input(self, kwargs: dict):
        """``(image input, prompt token ids per image)``, or ``(None, None)`` without images."""
        text_ids = kwargs.pop(TEXT_FIELD, None)
        image_input = self._parse_and_validate_image_input(**kwargs)
        if image_input is None:
            return None, None
        if image_input["type"] != "pixel_values":
            raise ValueError(
                "visprune: images given as ready embeddings cannot be pruned (the method needs "
                "the encoder's tokens); send pixels, or serve without the visprune override."
            )
        return image_input, text_ids

    def _kept_rows(self, candidates, embeddings, text_ids) -> list[torch.Tensor]:
        return select_rows(
            self.visprune, candidates, embeddings, self._texts(text_ids, len(embeddings))
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
        device = next(self.multi_modal_projector.parameters()).device
        return [embed(row.reshape(-1).to(device)) for row in rows]
