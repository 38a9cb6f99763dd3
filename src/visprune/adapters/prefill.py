"""The language model's pre-hook: run the method at the prefill and shorten the sequence.

It sees the final ``inputs_embeds``. At a prefill over the placeholders of kinds the call
encoded, it locates every image/frame, runs the method on each and hands on the shortened
sequence (:func:`sequence.shorten`), or, for a layer-stage method, leaves a plan for the
decoder-layer hooks (:mod:`layers`). Decode steps get a mask and positions that fit the
shortened cache (:func:`sequence.continue_decode`). Whatever cannot be pruned raises.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from .. import compat
from ..compat import PruningNotApplied
from . import sequence
from .needs import check_item_scores
from .records import CallState, Layout
from .selection import keep_mask, place_merged, run_method, selections_of
from .spans import locate_items, prompt_texts

if TYPE_CHECKING:
    from .base import Adapter


def before_language_model(adapter: Adapter, module: Any, args: tuple, kwargs: dict) -> tuple:
    """Forward pre-hook of the language model: prune a prefill, fit a decode step."""
    call = adapter.call_state()
    call.layer_plan = None
    past = compat.cache_length(compat.find_cache(kwargs))
    embeds = kwargs.get("inputs_embeds")
    if embeds is None:
        if call.expects_prefill:
            raise PruningNotApplied(
                "the language model received input_ids instead of inputs_embeds, so the "
                "image features never reached a place where visprune can select them"
            )
        return args, kwargs
    input_ids = call.input_ids
    if input_ids is not None and input_ids.shape != embeds.shape[:2]:
        input_ids = None
    if past:
        fit_decode_step(adapter, call, kwargs, embeds.shape[1], past)
    else:
        start_prefill(adapter, call, kwargs, embeds, input_ids)
    return args, kwargs


def fit_decode_step(adapter: Adapter, call: CallState, kwargs: dict, steps: int, past: int) -> None:
    """A forward over ``steps`` tokens on top of ``past`` cached ones: after a pruned prefill,
    its mask (and compact positions) must fit the shortened cache."""
    if call.brought & call.placeholders:
        raise ValueError(
            "a forward with a non-empty KV cache carries image/video placeholder tokens: the "
            "prompt arrives in chunks (prefill chunking, or a cache reused across calls), "
            "which visprune cannot prune. Prefill the whole prompt in one call (no "
            "prefill_chunk_size) with a fresh cache."
        )
    if call.prefill is None:
        return
    mask = kwargs.get("attention_mask")
    if isinstance(mask, dict) or (isinstance(mask, Tensor) and mask.dim() == 4):
        # Built for the unpruned cache layout; the language model rebuilds it from the 2-D
        # mask of the shortened cache (generated tokens are never padding).
        kwargs["attention_mask"] = None
    sequence.continue_decode(
        kwargs, call.prefill, steps, past, adapter.positions == "compact", call.positions_supplied
    )


def start_prefill(
    adapter: Adapter, call: CallState, kwargs: dict, embeds: Tensor, input_ids: Tensor | None
) -> None:
    """A forward with an empty cache: forget the last prefill, then prune this one when it
    runs over placeholders of kinds the call brought."""
    call.prefill = None
    call.selections = adapter.last_selections = []
    call.next_position = None
    if adapter.mrope:
        # Where a manual loop's decode steps continue (sequence.decode_positions).
        call.next_position = compat.next_mrope_position(kwargs.get("position_ids"))
    kinds = call.brought & call.placeholders
    if not kinds:
        return  # no images encoded (placeholder ids, if any, are text)
    if input_ids is None:
        raise PruningNotApplied(
            "the language model's prefill could not be matched with the prompt that "
            "carried the images (no input_ids or inputs_embeds of the same shape)"
        )
    fresh, call.fresh = call.fresh, set()
    visual = {kind: input_ids == adapter.token_ids()[kind] for kind in sorted(kinds)}
    call.prefill_seen = True
    unrecorded = kinds - call.encoded - call.known
    if unrecorded:
        counts = ", ".join(f"{int(visual[kind].sum())} {kind}" for kind in sorted(unrecorded))
        raise PruningNotApplied(
            f"this call carries images or video ({counts} placeholder tokens), but their "
            "encoder output did not pass through model.model.get_image_features / "
            "get_video_features after visprune.apply, where visprune records it (ready "
            "mm_encoder_outputs must be computed with the pruned model)"
        )
    prune_prefill(adapter, call, kwargs, embeds, input_ids, visual, continues=not fresh & kinds)


def prune_prefill(
    adapter: Adapter,
    call: CallState,
    kwargs: dict,
    embeds: Tensor,
    input_ids: Tensor,
    visual: dict[str, Tensor],
    continues: bool,
) -> None:
    """Run the method on every image/frame of the prompt and shorten ``kwargs`` in place.

    ``embeds`` is ``(B, L, d)``, ``input_ids`` ``(B, L)``, ``visual`` the ``(B, L)``
    placeholder mask per kind; ``continues``: the prefill re-runs an earlier one (nothing was
    encoded since).
    """
    batch, length, _ = embeds.shape
    mask = compat.key_padding_mask(kwargs.get("attention_mask"), length)
    layouts = {kind: call.layouts.get(kind, []) for kind in visual}
    vision = {kind: vision_per_layout(adapter, kind, layouts[kind]) for kind in visual}
    items = locate_items(input_ids, visual, layouts, vision)
    if adapter.layer_pruner is not None:  # the method runs between decoder layers
        call.layer_plan = adapter.layer_pruner.plan(items, mask, visual, length)
        return
    method = adapter.method
    texts = None
    if method.uses & {"text", "query"}:
        texts = texts_for_prefill(call, input_ids, embeds, mask, visual, continues)
    check_item_scores(method, adapter.model.config.model_type, items)
    run_method(method, items, embeds, texts, compile=adapter.compile)
    embeds = place_merged(items, embeds, adapter.project_vision)
    call.selections = adapter.last_selections = selections_of(items)
    if all(item.keeps_all() for item in items):
        return
    keep = keep_mask(items, batch, length, embeds.device)
    call.prefill = sequence.shorten(kwargs, embeds, keep, mask, adapter.positions == "compact")
    adapter.shorten_family_inputs(kwargs, keep, call.prefill.index)


def vision_per_layout(adapter: Adapter, kind: str, layouts: list[Layout]) -> list[Tensor | None]:
    """Each layout's pre-projector features for a "vision"-stage method (``None`` for the
    other stages, or where the family has none per token)."""
    if adapter.method.stage != "vision" or adapter.vision_capture_module() is None:
        return [None] * len(layouts)
    features = [layout.vision for layout in layouts]
    if any(feature is None for feature in features):
        raise ValueError(
            f"{adapter.method.name} runs on vision features before the projector, which "
            f"{adapter.model.config.model_type} {kind} inputs do not provide here."
        )
    return features


def texts_for_prefill(
    call: CallState,
    input_ids: Tensor,
    embeds: Tensor,
    mask: Tensor | None,
    visual: dict[str, Tensor],
    continues: bool,
) -> list[Tensor]:
    """The prompt texts; a re-run prefill (``generate(use_cache=False)`` re-sends the prompt
    plus the tokens generated so far, without encoding again) keeps the first prompt's text,
    so generated tokens never change what the method selects."""
    previous = call.prompt_cache
    if continues and previous is not None:
        ids, texts = previous
        width = ids.shape[1]
        if input_ids.shape[1] > width and torch.equal(input_ids[:, :width], ids):
            return texts
    texts = prompt_texts(embeds, mask, visual)
    # Ids found from embeddings are -1 on every text token: no prompt to recognise later.
    call.prompt_cache = None if call.ids_from_embeds else (input_ids, texts)
    return texts
