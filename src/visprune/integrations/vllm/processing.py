"""What every pruned vLLM model shares: its processor reports the kept token count and carries
the prompt text, its model selects the kept rows. Imports vLLM (engine processes only)."""

from __future__ import annotations

import contextlib
from dataclasses import replace

import torch
from vllm.multimodal.inputs import MultiModalBatchedField, MultiModalFieldElem
from vllm.multimodal.processing import PromptUpdateDetails

from .compat import require_servable
from .placeholders import shrink_runs
from .selection import select_rows
from .settings import ServingSettings, settings_of
from .text import TEXT_FIELD, text_after_images, with_text


class PrunedInfoMixin:
    """For a vLLM processing info: ``num_keep(n)`` placeholder tokens for an image vLLM would
    give ``n``, so vLLM reserves (and schedules, and reports) only the kept ones."""

    @property
    def settings(self) -> ServingSettings:
        return settings_of(self.get_hf_config())

    def get_num_image_tokens(self, **kwargs) -> int:
        return self.settings.num_keep(self.get_num_image_candidates(**kwargs))

    def get_num_image_candidates(self, **kwargs) -> int:
        """Tokens of the image before pruning: what vLLM's own info gives it."""
        return super().get_num_image_tokens(**kwargs)


class PromptTextMixin:
    """For a vLLM multimodal processor: text-conditioned methods get the prompt's tokens after
    its last placeholder with every image (and video) item, and that text becomes part of the
    item's identity (processor cache, encoder cache and prefix cache key on it).

    The text is read from the expanded prompt, after the last placeholder token, which is where
    ``visprune.apply`` reads it in transformers (after InternVL's ``</img>``, Gemma 3's
    ``<end_of_image>``, ...). The identity is computed before the expansion, from the request's
    prompt after its last media mark; the expanded text is a function of it.
    """

    def _media_marks(self) -> list[int]:
        """The ids that stand for one media item in a request's prompt."""
        return [self.info.get_hf_config().image_token_index]

    def _placeholder_ids(self) -> list[int]:
        """The ids of the expanded placeholders (one per embedding row)."""
        return [self.info.get_hf_config().image_token_index]

    def _identity_text(self, prompt: list[int]) -> list[int]:
        """The part of the request's prompt an item's cache identity holds: enough to fix the
        method's text in the expanded prompt."""
        return text_after_images(prompt, self._media_marks())

    def _get_mm_hashes(self, inputs):
        hashes = super()._get_mm_hashes(inputs)
        if not self.info.settings.uses_text:
            return hashes
        text = self._identity_text(inputs.prompt)
        return {modality: [with_text(h, text) for h in items] for modality, items in hashes.items()}

    def apply(self, inputs, timing_ctx):
        result = super().apply(inputs, timing_ctx)
        if self.info.settings.uses_text:
            text = text_after_images(result["prompt_token_ids"], self._placeholder_ids())
            text = torch.tensor(text, dtype=torch.long)
            # Items the engine already holds arrive as None and keep the text they were sent
            # with: their identity includes it, so it is this prompt's text.
            for items in result["mm_kwargs"].values():
                for item in items:
                    if item is not None:
                        item[TEXT_FIELD] = MultiModalFieldElem(
                            data=text, field=MultiModalBatchedField()
                        )
        return result


class KeptPlaceholdersMixin:
    """For a vLLM multimodal processor whose prompt replacements write the placeholder tokens
    themselves: every run of placeholders in a replacement shrinks to its kept count."""

    def _get_prompt_updates(self, mm_items, hf_processor_mm_kwargs, out_mm_kwargs):
        updates = super()._get_prompt_updates(mm_items, hf_processor_mm_kwargs, out_mm_kwargs)
        placeholders = set(self._placeholder_ids())
        keep = self.info.settings.num_keep

        def shrunk(content):
            if isinstance(content, PromptUpdateDetails):
                return replace(content, full=shrink_runs(content.full, placeholders, keep))
            return shrink_runs(content, placeholders, keep)

        def replacement(content):
            if callable(content):
                return lambda item: shrunk(content(item))
            return shrunk(content)

        return [replace(update, replacement=replacement(update.replacement)) for update in updates]


@contextlib.contextmanager
def projector_inputs(projector: torch.nn.Module):
    """Collect the inputs of ``projector`` while the block runs: the per-token features before
    projection that "vision"-stage methods score (a list, one tensor per call)."""
    captured: list[torch.Tensor] = []
    handle = projector.register_forward_pre_hook(lambda module, args: captured.append(args[0]))
    try:
        yield captured
    finally:
        handle.remove()


class PrunedModelMixin:
    """For a vLLM model registered by :func:`~.registration.register_pruned_processing`:
    ``self.visprune`` from the config, the prompt texts' embeddings, and the kept rows."""

    #: What the plugin's messages call the media this model prunes.
    media_noun = "images"

    def _init_visprune(self, vllm_config) -> None:
        """Read the override; with it, check the engine fits the plugin (before weights load)."""
        self.visprune = settings_of(self.config)
        if self.visprune is not None:
            require_servable(type(self), vllm_config, *self.visprune_parts)

    def embed_multimodal(self, **kwargs: object):
        """Each image's kept rows (an image-only family's ``_kept_image_rows``); vLLM's own
        embedding without the override. Families with videos override this."""
        if self.visprune is None:
            return super().embed_multimodal(**kwargs)
        text_ids = kwargs.pop(TEXT_FIELD, None)
        image_input = self._parse_and_validate_image_input(**kwargs)
        if image_input is None:
            return []
        self._require_pixels(image_input)
        return self._kept_image_rows(image_input, text_ids)

    def _require_pixels(self, media_input) -> None:
        if not media_input["type"].startswith("pixel_values"):
            raise ValueError(
                f"visprune: {self.media_noun} given as ready embeddings cannot be pruned (the "
                "method needs the encoder's tokens); send pixels, or serve without the visprune "
                "override."
            )

    def _kept_rows(self, candidates, embeddings, text_ids) -> list[torch.Tensor]:
        return select_rows(
            self.visprune, candidates, embeddings, self._texts(text_ids, len(embeddings))
        )

    def _texts(self, text_ids, items: int) -> list[torch.Tensor] | None:
        """The embedded prompt text of each of ``items`` media items (``None``: the method reads
        no text)."""
        if not self.visprune.uses_text:
            return None
        if text_ids is None:
            raise ValueError(
                f"visprune: {self.visprune.method.name} reads the prompt, but the "
                f"{self.media_noun} arrived without it; they must come through visprune's "
                "processor."
            )
        rows = list(text_ids)
        if len(rows) != items:
            raise ValueError(f"visprune: {len(rows)} prompt texts for {items} {self.media_noun}.")
        embed = self.language_model.embed_input_ids
        # The embedding table is the language model's: embed where it lives.
        device = next(self.language_model.parameters()).device
        return [embed(row.reshape(-1).to(device)) for row in rows]
