"""The base model's hooks: what each forward brings, its decode positions, and the check that
its prefill was pruned.

Before a forward of the base model (``model.model``) runs, :func:`before_base` records in the
thread's :class:`~visprune.adapters.records.CallState` which kinds it carries (pixels or encoder
outputs), its ``input_ids`` (or where the placeholder embeddings of an ``inputs_embeds`` call
sit) and whether its prefill runs over placeholders of those kinds; a decode step of a manual
loop (no ``position_ids``) gets the positions the shortened cache needs. After it,
:func:`after_base` raises when such a prefill never reached the language model through
visprune.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from .. import compat
from ..compat import PruningNotApplied
from . import sequence
from .records import CallState

if TYPE_CHECKING:
    from .base import Adapter


def before_base(adapter: Adapter, module: Any, args: tuple, kwargs: dict) -> tuple:
    """Forward pre-hook of the base model: record the call, supply decode positions."""
    call = adapter.call_state()
    past = compat.cache_length(compat.find_cache(kwargs))
    record_call(adapter, call, args, kwargs, past)
    if not call.ids_from_embeds:
        supply_decode_positions(adapter, call, kwargs, past)
    return args, kwargs


def record_call(adapter: Adapter, call: CallState, args: tuple, kwargs: dict, past: int) -> None:
    """What this forward brings: its kinds, ids and whether its prefill must be pruned."""
    input_ids = kwargs.get("input_ids", args[0] if args else None)
    call.brought = compat.kinds_in_call(kwargs)
    call.encoded = set()  # this forward's own encoder calls add to it
    call.known = call.known_kinds(compat.encoder_outputs(kwargs))
    call.ids_from_embeds = False
    embeds = kwargs.get("inputs_embeds")
    if input_ids is None and call.brought and isinstance(embeds, Tensor):
        # As transformers does without input_ids: placeholders are the embeddings equal
        # to a placeholder token's embedding.
        input_ids = compat.placeholder_ids_from_embeds(adapter.base, embeds, adapter.token_ids())
        call.ids_from_embeds = True
    call.input_ids = input_ids
    call.token_types = compat.token_types(kwargs)
    call.positions_supplied = False
    call.prefill_seen = False
    call.placeholders = placeholder_kinds(adapter.token_ids(), input_ids, call.brought)
    # A call that carries no pixels and no encoder output encodes nothing: its placeholder
    # ids are text (as in a decode step that generated one), and it runs as the unpatched
    # model runs it.
    call.expects_prefill = past == 0 and bool(call.brought & call.placeholders)


def placeholder_kinds(ids: dict[str, int], input_ids: Tensor | None, brought: set[str]) -> set[str]:
    """Which of the kinds the call brought pixels for have placeholders in ``input_ids``.

    ``ids`` holds the placeholder id per kind. Only the brought kinds matter (a placeholder
    without pixels is text), so a decode step, which brings none, reads nothing from the
    device; a prefill reads once for all its kinds.
    """
    kinds = [kind for kind in ids if kind in brought]
    if not isinstance(input_ids, Tensor) or not kinds:
        return set()
    present = torch.stack([(input_ids == ids[kind]).any() for kind in kinds]).tolist()
    return {kind for kind, found in zip(kinds, present, strict=True) if found}


def supply_decode_positions(adapter: Adapter, call: CallState, kwargs: dict, past: int) -> None:
    """A decode step of a manual loop (a pruned prefill before it, a cache, no ``position_ids``)
    continues from where the unpruned sequence would be (:func:`sequence.decode_positions`)."""
    state, input_ids = call.prefill, call.input_ids
    if state is None or past == 0 or input_ids is None or kwargs.get("position_ids") is not None:
        return
    # Without the prefill's own M-RoPE positions, transformers' rope_deltas (when the model kept
    # them) say how far its positions run from the token count.
    deltas = None
    if adapter.mrope and call.next_position is None:
        deltas = getattr(adapter.base, "rope_deltas", None)
    kwargs["position_ids"] = sequence.decode_positions(
        input_ids, state, past, call.next_position, adapter.mrope, deltas
    )
    call.positions_supplied = True


def after_base(adapter: Adapter, module: Any, args: tuple, output: Any) -> None:
    """Forward hook of the base model: a prefill over placeholders must have been pruned."""
    call = adapter.call_state()
    if call.expects_prefill and not call.prefill_seen:
        call.expects_prefill = False
        raise PruningNotApplied(
            f"{type(adapter.model).__name__} ran a prefill over image/video placeholder tokens "
            "without its language model receiving inputs_embeds through visprune's hook on "
            "model.model.language_model"
        )
