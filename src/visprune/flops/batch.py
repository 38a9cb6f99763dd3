"""FLOPs of a processor batch as it ran: its placeholder tokens, what a method kept of them, and
:func:`~visprune.flops.model_flops` per row, summed.

:func:`visprune.bench.measure` and the sweep's prefill meter (:mod:`visprune.sweep.meter`) both
count a batch this way, from the handle's selection records.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from .inputs import describe_rows
from .model import model_flops

#: Config attributes that name the image and video placeholder tokens.
_PLACEHOLDER_IDS = ("image_token_id", "image_token_index", "video_token_id", "video_token_index")


def placeholder_mask(model: Any, input_ids: Tensor) -> Tensor:
    """``(B, L)`` bool: the image and video placeholder tokens of ``input_ids``."""
    mask = torch.zeros_like(input_ids, dtype=torch.bool)
    seen: list[int] = []
    for name in _PLACEHOLDER_IDS:
        token = getattr(model.config, name, None)
        if isinstance(token, int) and token not in seen:
            seen.append(token)
            mask |= input_ids == token
    return mask


def kept_per_row(visual: Tensor, selections: Sequence[Any]) -> list[int]:
    """Visual tokens each row keeps: its placeholders less what the selections dropped.

    Every placeholder token counts, candidates or not (OneVision's video newline and newlines
    under ``newlines="keep"`` are always kept), and merged tokens count as kept, so pruned and
    unpruned counts compare.

    Parameters
    ----------
    visual : Tensor
        ``(B, L)`` bool placeholder mask (:func:`placeholder_mask`).
    selections : sequence of Selection
        The handle's records of the call (none: nothing dropped).
    """
    kept = [int(v) for v in visual.sum(dim=1)]
    for s in selections:
        merged = 0 if s.merged_positions is None else len(s.merged_positions)
        kept[s.sample] -= int(s.n) - len(s.kept) - merged
    return kept


def kept_per_layer(model: Any, visual: Tensor, selections: Sequence[Any]) -> list[list[int]] | None:
    """Per row, the visual tokens each decoder layer sees at prefill, for methods that prune
    inside the language model (``Selection.stages``); ``None`` for the other methods."""
    if not any(s.layer is not None for s in selections):
        return None
    layers = model.config.text_config.num_hidden_layers
    counts = [[int(v)] * layers for v in visual.sum(dim=1)]
    for s in selections:
        for number in range(layers):
            earlier = [kept for layer, kept in s.stages if layer <= number]
            if earlier:
                counts[s.sample][number] -= int(s.n) - len(earlier[-1])
    return counts


def batch_flops(
    model: Any,
    inputs: dict,
    visual: Tensor,
    kept: list[int],
    new_tokens: int,
    per_layer: list[list[int]] | None = None,
) -> dict[str, Any]:
    """:func:`~visprune.flops.model_flops` of every row of a batch, summed.

    Parameters
    ----------
    model : PreTrainedModel
        The VLM (its ``config`` is read).
    inputs : dict
        Processor outputs: ``input_ids`` (B, L), ``attention_mask`` and the visual tensors.
    visual : Tensor
        ``(B, L)`` bool placeholder mask.
    kept : list of int
        Visual tokens each row keeps (:func:`kept_per_row`).
    new_tokens : int
        Tokens generated: ``new_tokens - 1`` decode steps are counted.
    per_layer : list of list of int, optional
        Per row, the visual tokens each decoder layer sees (:func:`kept_per_layer`).

    Returns
    -------
    dict
        ``prefill_total`` and ``decode_total`` FLOPs, and ``prefill`` / ``decode``: the
        :class:`~visprune.flops.FlopsBreakdown` parts summed over rows.
    """
    config = model.config
    ids = inputs["input_ids"]
    mask = inputs.get("attention_mask")
    totals = {"prefill_total": 0.0, "decode_total": 0.0}
    parts: dict[str, dict[str, float]] = {"prefill": {}, "decode": {}}
    for row, described in enumerate(describe_rows(config, inputs)):
        n_visual = int(visual[row].sum())
        length = int(mask[row].sum()) if isinstance(mask, Tensor) else ids.shape[1]
        layers = {} if per_layer is None else {"layer_kept_visual_tokens": per_layer[row]}
        counts = model_flops(
            config,
            n_visual,
            length - n_visual,
            decode_steps=new_tokens - 1,
            kept_visual_tokens=kept[row],
            logits="last",
            **described,
            **layers,
        )
        for stage, breakdown in counts.items():
            totals[f"{stage}_total"] += breakdown.total
            for name, value in dataclasses.asdict(breakdown).items():
                parts[stage][name] = parts[stage].get(name, 0.0) + float(value)
    return {**totals, **parts}
