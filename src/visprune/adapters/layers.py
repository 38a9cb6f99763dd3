"""Pruning inside the language model: the sequence shortened between decoder layers.

For a layer-stage method (FastV, PyramidDrop, DART) the language model's prefill runs layers
``< K`` on the full sequence; a pre-hook on layer ``K`` measures what the method reads (the last
prompt token's attention, or key norms: :mod:`layer_signals`), runs the method per image/frame,
and hands layer ``K`` and every later layer only the kept rows, with their rotary embedding,
position ids and a causal mask rebuilt for the shorter sequence by the model's own mask
builder. PyramidDrop does this at several layers, each time on the tokens kept so far.

**What the KV cache holds.** At each pruning the cache of the layers before it is cut to the
kept rows, so at the end of the prefill every layer's cache holds the same kept rows (the early
layers' entries are the keys and values they computed on the full sequence). Decode steps then
see one consistent, shortened cache, exactly as after pruning before the language model, and
generated tokens attend to the kept tokens at every layer.

**Positions.** Kept tokens keep their original positions (the published code gathers the
position ids); renumbering them from layer ``K`` on would give keys of one token different
rotations in different layers, so ``positions="compact"`` is refused for this stage.

Batches: each row keeps its own tokens (per image, per frame); rows that keep different counts
are re-padded on the left, as before the language model. A prefill that never reaches the
pruning layer through the hook raises :class:`~visprune.compat.PruningNotApplied`.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from .. import compat, compat_layers
from ..compat import PruningNotApplied
from ..methods import Context
from . import layer_signals, sequence
from .records import Item, Prefill, Selection
from .selection import selections_of
from .spans import tail_positions


def layer_positions(model_type: str, positions: str | None) -> str:
    """The position mode of a layer-stage method: "original" (the only one)."""
    if positions not in (None, "original"):
        raise ValueError(
            f"positions={positions!r}: methods that prune inside the language model keep the "
            f"kept tokens' original positions (their keys in the layers before the pruning "
            f"were rotated at those positions); use positions='original' for {model_type}."
        )
    return "original"


@dataclass
class LayerPlan:
    """One prefill's pruning in progress (per thread, in ``CallState.layer_plan``)."""

    items: list[Item]
    length: int  # L, the unpruned length
    mask: Tensor | None  # (B, L) the 2-D padding mask, or None
    queries: Tensor  # (B,) position of each row's last prompt token
    texts: list[Tensor]  # per row: positions of the prompt text after its last visual token
    keep: Tensor  # (B, L) bool, the positions still in the sequence
    alive: list[Tensor]  # per item: indices into its candidates still in the sequence
    index: Tensor | None = None  # (B, L') positions in the sequence now; None: all of them
    substitutes: dict = field(default_factory=dict)  # keyword arguments of the later layers
    captured: dict = field(default_factory=dict)  # layer -> (hidden, cos, sin) entering it
    stages: list = field(default_factory=list)  # per pruning: (layer, [kept per item])
    step: int = 0


class LayerPruner:
    """The hooks on one model's decoder layers for one layer-stage method."""

    def __init__(self, adapter: Any) -> None:
        self.adapter = adapter
        self.method = adapter.method
        self.compile = adapter.compile
        self.language_model = adapter.language_model
        self.layers = compat_layers.decoder_layers(self.language_model)
        self.prune_at = self.method.check_layers(len(self.layers))
        adapter.check_layer_stage(self.prune_at)
        self.signal_at = {self.method.signal_layer(layer): layer for layer in self.prune_at}
        self.norm = (
            compat_layers.final_norm(self.language_model) if self.method.signal == "keys" else None
        )
        first = min(self.signal_at)
        self._hooks = [
            layer.register_forward_pre_hook(
                functools.partial(self._before_layer, number), with_kwargs=True
            )
            for number, layer in enumerate(self.layers)
            if number >= first
        ]
        self._hooks.append(self.language_model.register_forward_hook(self._after_language_model))

    def remove(self) -> None:
        for hook in self._hooks:
            hook.remove()
        self._hooks.clear()

    # ------------------------------------------------------------------------------ planning
    def plan(self, items: list[Item], mask: Tensor | None, visual: dict, length: int) -> LayerPlan:
        """Start a prefill's pruning; the layer hooks carry it out."""
        if self.method.check_layers(len(self.layers)) != self.prune_at:
            raise ValueError(
                f"{self.method.name}'s pruning layers changed after visprune.apply (hooked: "
                f"{self.prune_at}); apply the method again to prune at other layers."
            )
        batch = next(iter(visual.values())).shape[0]
        device = next(iter(visual.values())).device
        attended = torch.ones(batch, length, dtype=torch.bool, device=device)
        if mask is not None:
            attended = mask.bool().to(device)
        last = length - 1 - attended.flip(-1).int().argmax(-1)
        texts = tail_positions(visual, attended)
        return LayerPlan(
            items=items,
            length=length,
            mask=mask,
            queries=last,
            texts=texts,
            keep=torch.ones(batch, length, dtype=torch.bool, device=device),
            alive=[torch.arange(len(item.positions), device=device) for item in items],
        )

    # --------------------------------------------------------------------------------- hooks
    def _before_layer(self, number: int, module, args, kwargs):
        call = self.adapter.call_state()
        plan: LayerPlan | None = call.layer_plan
        if plan is None:
            return args, kwargs
        hidden = args[0] if args else kwargs.get("hidden_states")
        if not isinstance(hidden, Tensor) or "position_embeddings" not in kwargs:
            raise PruningNotApplied(
                f"decoder layer {number} was called without hidden states and "
                "position_embeddings as visprune expects"
            )
        originals = {
            name: kwargs.get(name)
            for name in ("attention_mask", "position_embeddings", "position_ids")
        }
        kwargs.update(plan.substitutes)
        expected = plan.length if plan.index is None else plan.index.shape[1]
        if hidden.shape[1] != expected:
            raise PruningNotApplied(
                f"decoder layer {number} received {hidden.shape[1]} positions where visprune "
                f"handed on {expected}"
            )
        if number in self.signal_at:
            cos, sin = (
                part.expand(hidden.shape[0], -1, -1) for part in kwargs["position_embeddings"]
            )
            plan.captured[number] = (hidden, cos, sin)
        if number in self.prune_at:
            hidden = self._prune(call, plan, number, hidden, kwargs, originals)
            if args:
                args = (hidden, *args[1:])
            else:
                kwargs["hidden_states"] = hidden
        return args, kwargs

    def _after_language_model(self, module, args, output):
        call = self.adapter.call_state()
        plan, call.layer_plan = call.layer_plan, None
        if plan is not None and plan.step < len(self.prune_at):
            raise PruningNotApplied(
                f"the language model's prefill did not pass decoder layer "
                f"{self.prune_at[plan.step]} through visprune's hook, where "
                f"{self.method.name} prunes"
            )

    # ------------------------------------------------------------------------------- pruning
    def _prune(self, call, plan: LayerPlan, layer: int, hidden: Tensor, kwargs, originals):
        source = self.method.signal_layer(layer)
        entering, cos, sin = plan.captured.pop(source)
        batch, current_length, _ = hidden.shape
        device = hidden.device
        current = plan.index
        if current is None:
            current = torch.arange(plan.length, device=device).expand(batch, -1)
        column = torch.full((batch, plan.length), -1, dtype=torch.long, device=device)
        rows = torch.arange(batch, device=device)[:, None].expand_as(current)
        present = current >= 0
        column[rows[present], current[present]] = torch.arange(
            current_length, device=device
        ).expand(batch, -1)[present]
        tokens_of, scores_of, texts, text_scores = self.signals(
            plan, layer, source, hidden, entering, cos, sin, current, column
        )
        # Items with as many tokens alive and to keep select as one batch: one call of the
        # method (and its reads of the device) per group, not per image.
        groups: dict[tuple[int, int], list[int]] = {}
        for number, item in enumerate(plan.items):
            k = self.method.keep_count(len(item.positions), plan.step)
            if k < len(plan.alive[number]):
                groups.setdefault((len(plan.alive[number]), k), []).append(number)
        for (_, k), numbers in groups.items():
            items = [plan.items[number] for number in numbers]
            columns = [
                column[item.sample, item.positions[plan.alive[number]]]
                for number, item in zip(numbers, items, strict=True)
            ]
            pairs = list(zip(items, columns, strict=True))
            ctx = Context(
                scores=torch.stack([scores_of[item.sample, cols] for item, cols in pairs]),
                text=None if texts is None else [texts[item.sample] for item in items],
                text_scores=None
                if text_scores is None
                else [text_scores[item.sample] for item in items],
            )
            tokens = torch.stack([tokens_of[item.sample, cols] for item, cols in pairs])
            kept = self.method.select(tokens, k, ctx, compile=self.compile)
            for number, item, row in zip(numbers, items, kept, strict=True):
                alive = plan.alive[number]
                plan.keep[item.sample, item.positions[alive]] = False
                alive = alive[row.to(alive.device)]
                plan.keep[item.sample, item.positions[alive]] = True
                plan.alive[number] = alive
        kept_now = [alive.clone() for alive in plan.alive]
        plan.stages.append((layer, kept_now))
        plan.step += 1
        if plan.index is not None or not bool(plan.keep.all()):
            hidden = self._shorten(call, plan, layer, hidden, kwargs, originals, column)
        if plan.step == len(self.prune_at):
            self._record(call, plan)
        return hidden

    def signals(self, plan, layer, source, hidden, entering, cos, sin, current, column):
        """Per row and current column: the tokens the method sees and their scores."""
        signal_layer = self.layers[source]
        rows = torch.arange(hidden.shape[0], device=hidden.device)
        if self.method.signal == "attention":
            query = column[rows, plan.queries.to(hidden.device)]
            attended = current >= 0
            if plan.mask is not None:
                attended &= plan.mask.bool().gather(1, current.clamp_min(0))
            before = torch.arange(current.shape[1], device=hidden.device) <= query[:, None]
            scores = layer_signals.last_token_attention(
                signal_layer, entering, cos, sin, query, attended & before
            )
            return hidden, scores, None, None
        norms = layer_signals.key_norms(signal_layer, entering, cos, sin)
        states = self.norm(hidden)
        texts = [states[row, column[row, plan.texts[row]]] for row in range(hidden.shape[0])]
        text_scores = [norms[row, column[row, plan.texts[row]]] for row in range(hidden.shape[0])]
        return states, norms, texts, text_scores

    def _shorten(self, call, plan, layer, hidden, kwargs, originals, column) -> Tensor:
        """Hand layer ``layer`` and the later ones only the kept rows, without the padding the
        longest row does not need; cut the earlier caches."""
        stays = (
            plan.keep if plan.mask is None else plan.keep & plan.mask.bool().to(plan.keep.device)
        )
        index = sequence.packed_index(stays)
        padded = index < 0
        batch, width = hidden.shape[0], hidden.shape[-1]
        local = column.gather(1, index.clamp_min(0)).clamp_min(0)
        shortened = hidden.gather(1, local.unsqueeze(-1).expand(-1, -1, width))
        shortened = shortened.masked_fill(padded.unsqueeze(-1), 0)
        cache = compat.find_cache(kwargs)
        if cache is not None:
            compat_layers.keep_cache_rows(cache, range(layer), local)
        safe = index.clamp_min(0)
        cos, sin = originals["position_embeddings"]
        gathered = tuple(
            part.expand(batch, -1, -1).gather(1, safe.unsqueeze(-1).expand(-1, -1, part.shape[-1]))
            for part in (cos, sin)
        )
        positions = originals["position_ids"]
        if isinstance(positions, Tensor):
            if positions.dim() != 2 or positions.shape[-1] != plan.length:
                raise PruningNotApplied(
                    f"decoder layer {layer} received position_ids of shape "
                    f"{tuple(positions.shape)}; visprune expects (B, {plan.length})"
                )
            positions = positions.expand(batch, -1).gather(1, safe).masked_fill(padded, 1)
        mask = plan.mask.gather(1, safe) if plan.mask is not None else torch.ones_like(index)
        mask = mask.masked_fill(padded, 0)
        built = compat_layers.causal_mask(self.language_model.config, shortened, mask)
        plan.substitutes = {
            "attention_mask": built,
            "position_embeddings": gathered,
            "position_ids": positions,
        }
        kwargs.update(plan.substitutes)
        plan.index = index
        call.prefill = Prefill(
            length=plan.length,
            index=index,
            mask=mask,
            dropped=(~plan.keep).sum(-1),
            shift=torch.full((batch, 1), plan.length - index.shape[1], device=index.device),
        )
        return shortened

    def _record(self, call, plan: LayerPlan) -> None:
        for number, item in enumerate(plan.items):
            item.kept = plan.alive[number]
        # Every stage's kept indices reach the host in one copy (each copy waits for a GPU).
        flat = [kept for _, stage in plan.stages for kept in stage]
        host = iter(torch.cat(flat).cpu().split([len(kept) for kept in flat]) if flat else ())
        per_stage = [[next(host) for _ in stage] for _, stage in plan.stages]
        records: list[Selection] = []
        for number, record in enumerate(selections_of(plan.items)):
            stages = tuple(
                (layer, kept[number])
                for (layer, _), kept in zip(plan.stages, per_stage, strict=True)
            )
            records.append(dataclasses.replace(record, layer=stages[-1][0], stages=stages))
        call.selections = self.adapter.last_selections = records
