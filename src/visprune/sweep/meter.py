"""Exact prefill FLOPs and visual-token counts of every call a configuration makes.

A forward hook on the model reads each prefill call's inputs (``input_ids``, the pixel tensors,
``attention_mask``) and, after the call, what the applied method kept (``handle.selections``);
:func:`visprune.flops.model_flops` then counts, per batch row, the prefill FLOPs of that row as
it ran and as it would have run unpruned (the same row with every visual token). Decoding steps
(no visual token in ``input_ids``) are not counted: the ratio is the prefill's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch


@dataclass
class Counts:
    """Totals over the metered calls.

    Attributes
    ----------
    rows : int
        Prompts prefilled (batch rows with visual tokens).
    visual_tokens : int
        Visual tokens the language model received (kept, plus merged ones), all rows.
    visual_tokens_unpruned : int
        Visual tokens of the same rows before pruning.
    prefill_flops : float
        Prefill FLOPs as run (vision tower, projector, language model, ``lm_head`` of the last
        position).
    prefill_flops_unpruned : float
        Prefill FLOPs of the same rows unpruned.
    """

    rows: int = 0
    visual_tokens: int = 0
    visual_tokens_unpruned: int = 0
    prefill_flops: float = 0.0
    prefill_flops_unpruned: float = 0.0

    @property
    def ratio(self) -> float | None:
        """Prefill FLOPs pruned / unpruned (None before any call)."""
        if not self.prefill_flops_unpruned:
            return None
        return self.prefill_flops / self.prefill_flops_unpruned


class PrefillMeter:
    """Context manager that meters every prefill call of ``model`` while it is open.

    Parameters
    ----------
    model : PreTrainedModel
        The ``...ForConditionalGeneration`` the configuration runs.
    handle : visprune.Handle or None
        The applied method's handle (None: unpruned).
    """

    def __init__(self, model: Any, handle: Any = None) -> None:
        self.model = model
        self.handle = handle
        self.counts = Counts()
        self._hook: Any = None

    def __enter__(self) -> PrefillMeter:
        self._hook = self.model.register_forward_hook(self._after_call, with_kwargs=True)
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self._hook.remove()

    def _after_call(self, module: Any, args: tuple, kwargs: dict, output: Any) -> None:
        from ..flops.batch import batch_flops, kept_per_layer, kept_per_row, placeholder_mask

        inputs = dict(kwargs)
        if args:
            inputs.setdefault("input_ids", args[0])
        ids = inputs.get("input_ids")
        if not isinstance(ids, torch.Tensor):
            return
        visual = placeholder_mask(module, ids)
        if not bool(visual.any()):
            return  # a decoding step or a text-only call
        before = [int(v) for v in visual.sum(dim=1)]
        selections = self.handle.selections if self.handle is not None else []
        kept = kept_per_row(visual, selections)
        per_layer = kept_per_layer(module, visual, selections) if selections else None
        pruned = batch_flops(module, inputs, visual, kept, 1, per_layer)
        full = batch_flops(module, inputs, visual, before, 1, None)
        counts = self.counts
        counts.rows += sum(1 for count in before if count)
        counts.visual_tokens += sum(kept)
        counts.visual_tokens_unpruned += sum(before)
        counts.prefill_flops += pruned["prefill_total"]
        counts.prefill_flops_unpruned += full["prefill_total"]
