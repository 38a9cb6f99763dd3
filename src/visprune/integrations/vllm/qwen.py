"""What the pruned Qwen2.5-VL and Qwen3-VL models share in vLLM: placeholders sized to the kept
tokens of each image and video frame, the selection, and the M-RoPE positions of the kept tokens
(:mod:`.mrope`). Imports vLLM (engine processes only).

A family module supplies ``runs(modality, grid_thw, merge, t_step)``: the :class:`~.mrope.Run`
list of one image or video, in prompt order. The budget applies per frame (per temporal patch
group), as in ``visprune.apply``; every method scores the language model's input embeddings of
the frame (the patch merger's output: it leaves no per-token features before the projector, so
"vision"-stage methods run on it too, as in transformers).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Sequence

import torch
from torch import Tensor
from vllm.multimodal.processing import PromptReplacement, PromptUpdateDetails

from .mrope import OFFSET_COLUMNS, Run, decode_offsets, encode_offsets, media_runs, prompt_positions
from .processing import PromptTextMixin, PrunedInfoMixin, PrunedModelMixin
from .selection import select_rows
from .text import TEXT_FIELD

RunsOf = Callable[[str, Sequence[int], int, float], list[Run]]


def _token_id(config, modality: str) -> int:
    return config.image_token_id if modality == "image" else config.video_token_id


@functools.cache
def _warn_skipped_forward() -> None:
    """Once per process: kept tokens of a step went without their M-RoPE offsets."""
    logging.getLogger(__name__).warning(
        "visprune: vLLM ran a step's kept visual tokens without calling the model's forward "
        "(a full CUDA graph replayed a one-token prefill chunk), so those tokens sat at their "
        "media's start position; answers of the requests in that step may differ from "
        'visprune.apply. Serve with --compilation-config \'{"cudagraph_mode": "PIECEWISE"}\' '
        "(or --enforce-eager) to rule it out."
    )


class QwenPrunedInfoMixin(PrunedInfoMixin):
    """For a vLLM Qwen-VL processing info: kept-token counts for images and videos, so vLLM
    budgets (and profiles) only the kept ones."""

    def get_max_image_candidates(self) -> int:
        """Tokens before pruning of the largest image the server's processor settings make: the
        image size vLLM reserves memory for, and the largest it would accept unpruned."""
        width, height = self.get_image_size_with_most_features()
        return self.get_num_image_candidates(
            image_width=width,
            image_height=height,
            image_processor=self.get_image_processor(),
            mm_kwargs={},
        )

    def get_num_video_tokens(
        self, *, image_width, image_height, num_frames, image_processor, mm_kwargs
    ) -> int:
        size, full = self._get_vision_info(
            image_width=image_width,
            image_height=image_height,
            num_frames=num_frames,
            image_processor=image_processor,
            mm_kwargs=mm_kwargs,
            modality="video",
        )
        vision = self.get_hf_config().vision_config
        unit = vision.patch_size * vision.spatial_merge_size
        per_frame = (size.height // unit) * (size.width // unit)
        return full // per_frame * self.settings.num_keep(per_frame)


class QwenPrunedProcessorMixin(PromptTextMixin):
    """For a vLLM Qwen-VL multimodal processor: each media run of the family's replacement holds
    only its kept tokens, and text-conditioned methods get the prompt after its last image or
    video with every image and video item."""

    runs: RunsOf

    def _visual_ids(self) -> list[int]:
        config = self.info.get_hf_config()
        return [config.image_token_id, config.video_token_id]

    # The method reads the text after the last visual token of the expanded prompt, as in
    # transformers: after a Qwen3-VL video it starts with the last frame's vision-end token.
    _media_marks = _visual_ids
    _placeholder_ids = _visual_ids

    def _identity_text(self, prompt: list[int]) -> list[int]:
        """From the request's last image or video placeholder on: the placeholder's kind and the
        text after it fix the method's text in the expanded prompt."""
        visual = set(self._visual_ids())
        last = max((i for i, token in enumerate(prompt) if token in visual), default=0)
        return list(prompt[last:])

    def _get_prompt_updates(self, mm_items, hf_processor_mm_kwargs, out_mm_kwargs):
        updates = super()._get_prompt_updates(mm_items, hf_processor_mm_kwargs, out_mm_kwargs)
        return [
            PromptReplacement(
                modality=update.modality,
                target=update.target,
                replacement=self._kept_replacement(update, out_mm_kwargs),
            )
            for update in updates
        ]

    def _kept_replacement(self, update, out_mm_kwargs):
        config = self.info.get_hf_config()
        modality = update.modality
        token = _token_id(config, modality)
        merge = config.vision_config.spatial_merge_size
        num_keep = self.info.settings.num_keep
        limit = self.info.get_max_image_candidates() if modality == "image" else None

        def replacement(item_idx: int):
            full = (
                update.replacement(item_idx) if callable(update.replacement) else update.replacement
            )
            ids = list(full.full if isinstance(full, PromptUpdateDetails) else full)
            grid = out_mm_kwargs[modality][item_idx][f"{modality}_grid_thw"].data.tolist()
            runs = self.runs(modality, grid, merge, 1.0)
            candidates = sum(run.candidates for run in runs)
            if limit is not None and candidates > limit:
                # vLLM bounds an image by its placeholder count, which pruning makes small: an
                # image enlarged by the request's mm_processor_kwargs would reach the vision
                # tower at any size (unpruned, the context length refuses it).
                raise ValueError(
                    f"visprune: this image has {candidates} tokens before pruning, more than the "
                    f"{limit} of the largest image the server's processor settings make (and "
                    "vLLM reserved memory for); the request's mm_processor_kwargs enlarge it. "
                    "Send the image without them, or with a smaller max_pixels."
                )
            found = media_runs(ids, 0, len(ids), [token])
            if [count for _, count in found] != [run.candidates for run in runs]:
                raise ValueError(
                    f"visprune: the {modality} placeholder runs {found} do not match the grid "
                    f"{grid}; this processor is not one the plugin knows."
                )
            kept, last = [], 0
            for (start, count), run in zip(found, runs, strict=True):
                kept += ids[last:start] + [token] * run.kept(num_keep)
                last = start + count
            return PromptUpdateDetails.select_token_id(kept + ids[last:], token)

        return replacement


class QwenPrunedModelMixin(PrunedModelMixin):
    """For a vLLM Qwen-VL model: the kept rows of each image and video frame, and their M-RoPE
    positions, when the override is set (vLLM's own code otherwise).

    ``embed_multimodal`` returns each item's kept rows with their grid offsets appended
    (:func:`~.mrope.encode_offsets`); ``embed_input_ids`` strips them and ``forward`` adds them
    to the placeholders' positions, which :meth:`get_mrope_input_positions` set to each run's
    start. vLLM's Qwen3-VL passes deepstack features from ``embed_input_ids`` to ``forward`` the
    same way.

    The offsets are added in place, into the positions tensor the model runner passed: it is the
    runner's per-step buffer, rewritten every step, and the one whose address vLLM's CUDA graphs
    captured (a graph replays reading that address, so positions in a new tensor would be
    ignored on a GPU). A step that vLLM replays as one full CUDA graph (decode batches, which on
    vLLM 0.32-0.34 include one-token prefill chunks) never calls ``forward``: if such a chunk
    held a kept token, it ran without its offset, and the next step logs a warning.
    """

    runs: RunsOf
    media_noun = "images or videos"
    #: Columns of an item's embedding that the method scores (all; Qwen3-VL: the main features,
    #: not the deepstack levels that follow them).
    candidate_columns: int | None = None

    def _init_visprune(self, vllm_config) -> None:
        super()._init_visprune(vllm_config)
        # Kept tokens' (rows, offsets) of the step, from embed_input_ids to forward. vLLM's own
        # video pruning, whose position columns these would collide with, is refused with the
        # override at engine start (guard.py).
        self._pending_offsets: tuple[Tensor, Tensor] | None = None

    # -------------------------------------------------------------------------- positions
    def _t_step(self, modality: str, data) -> float:
        """Temporal position step between a video's frames (1 unless the family says so)."""
        return 1.0

    def get_mrope_input_positions(self, input_tokens, mm_features):
        if self.visprune is None:
            return super().get_mrope_input_positions(input_tokens, mm_features)
        merge = self.config.vision_config.spatial_merge_size
        located = []
        for feature in sorted(mm_features, key=lambda f: f.mm_position.offset):
            modality, data = feature.modality, feature.data
            grid = data[f"{modality}_grid_thw"].data.tolist()
            runs = self.runs(modality, grid, merge, self._t_step(modality, data))
            start = feature.mm_position.offset
            found = media_runs(
                input_tokens,
                start,
                start + feature.mm_position.length,
                [_token_id(self.config, modality)],
            )
            expected = [run.kept(self.visprune.num_keep) for run in runs]
            if [count for _, count in found] != expected:
                raise ValueError(
                    f"visprune: a {modality} of grid {grid} has placeholder runs {found}, "
                    f"expected {expected} kept tokens per run."
                )
            located += [(at, count, run) for (at, count), run in zip(found, runs, strict=True)]
        return prompt_positions(len(input_tokens), located)

    def embed_input_ids(self, input_ids, multimodal_embeddings=None, *, is_multimodal=None):
        if self.visprune is None:
            return super().embed_input_ids(
                input_ids, multimodal_embeddings, is_multimodal=is_multimodal
            )
        if self._pending_offsets is not None:
            _warn_skipped_forward()
        self._pending_offsets = None
        if multimodal_embeddings is not None and len(multimodal_embeddings):
            offsets = decode_offsets(
                torch.cat([rows[:, -OFFSET_COLUMNS:] for rows in multimodal_embeddings])
            )
            rows = is_multimodal.nonzero().squeeze(-1)
            if rows.numel() != offsets.shape[0]:
                raise ValueError(
                    f"visprune: {rows.numel()} placeholder tokens for {offsets.shape[0]} kept "
                    "visual tokens in this step."
                )
            self._pending_offsets = (rows, offsets)
            multimodal_embeddings = [rows[:, :-OFFSET_COLUMNS] for rows in multimodal_embeddings]
        return super().embed_input_ids(
            input_ids, multimodal_embeddings, is_multimodal=is_multimodal
        )

    def forward(self, input_ids, positions, intermediate_tensors=None, inputs_embeds=None, **kw):
        pending, self._pending_offsets = self._pending_offsets, None
        if pending is not None:
            rows, offsets = pending
            # In place (see the class docstring): a copy would be invisible to a CUDA graph.
            positions[:, rows.to(positions.device)] += offsets.T.to(positions)
        return super().forward(input_ids, positions, intermediate_tensors, inputs_embeds, **kw)

    # -------------------------------------------------------------------------- selection
    def embed_multimodal(self, **kwargs: object):
        if self.visprune is None:
            return super().embed_multimodal(**kwargs)
        text_ids = kwargs.pop(TEXT_FIELD, None)
        inputs = {
            m: i for m, i in self._parse_and_validate_multimodal_inputs(**kwargs).items() if i
        }
        if not inputs:
            return []
        if text_ids is not None and len(inputs) > 1:
            raise ValueError("visprune: one encoder batch holds images and videos with texts.")
        kept: list[Tensor] = []
        for modality, media in inputs.items():
            self._require_pixels(media)
            if modality == "image":
                embeddings = self._process_image_input(media)
            else:
                embeddings = self._process_video_input(media)
            grids = media[f"{modality}_grid_thw"].tolist()
            steps = self._t_steps(modality, media, len(grids))
            kept += self._kept_items(list(embeddings), grids, steps, modality, text_ids)
        return tuple(kept)

    def _t_steps(self, modality: str, media, count: int) -> list[float]:
        return [1.0] * count

    def _kept_items(self, embeddings, grids, steps, modality, text_ids) -> list[Tensor]:
        """Per item ``(kept, d + OFFSET_COLUMNS)``: kept rows (in token order) with offsets."""
        merge = self.config.vision_config.spatial_merge_size
        texts = self._texts(text_ids, len(embeddings))
        candidates, rows, frame_texts, frames_of = [], [], [], []
        for number, (item, grid, step) in enumerate(zip(embeddings, grids, steps, strict=True)):
            runs = self.runs(modality, grid, merge, step)
            offsets = torch.cat([run.offsets() for run in runs]).to(item.device)
            if offsets.shape[0] != item.shape[0]:
                raise ValueError(
                    f"visprune: a {modality} of grid {grid} encoded to {item.shape[0]} tokens, "
                    f"its runs hold {offsets.shape[0]}."
                )
            with_offsets = torch.cat([item, encode_offsets(offsets, item.dtype)], dim=-1)
            sizes = [run.per_frame for run in runs for _ in range(run.frames)]
            for frame in with_offsets.split(sizes):
                rows.append(frame)
                candidates.append(frame[:, : self.candidate_columns or item.shape[-1]])
                frame_texts.append(None if texts is None else texts[number])
            frames_of.append(len(sizes))
        selected = select_rows(
            self.visprune, candidates, rows, None if texts is None else frame_texts
        )
        items, start = [], 0
        for count in frames_of:
            items.append(torch.cat(selected[start : start + count]))
            start += count
        return items
