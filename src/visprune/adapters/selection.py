"""Run the method on every located image and frame, and turn its picks into a keep mask and
the :class:`Selection` records ``handle.selections`` shows."""

from __future__ import annotations

import torch
from torch import Tensor

from ..methods import Context, Method
from .records import Item, Selection


def run_method(
    method: Method, items: list[Item], embeds: Tensor, texts: list[Tensor] | None
) -> None:
    """Fill ``item.kept`` for every item; items with equal token shapes run as one batch.

    Parameters
    ----------
    method : Method
    items : list of Item
        Their ``vision`` holds pre-projector features for "vision" methods, else ``None`` (the
        tokens are then ``embeds[item.sample, item.positions]``).
    embeds : Tensor
        ``(B, L, d)`` the language model's input embeddings.
    texts : list of Tensor or None
        Per sample, the prompt text after its last visual token.
    """
    groups: dict[tuple, list[Item]] = {}
    for item in items:
        tokens = item.vision if item.vision is not None else embeds[item.sample, item.positions]
        item.vision = tokens
        groups.setdefault((tuple(tokens.shape), str(tokens.device)), []).append(item)
    for group in groups.values():
        tokens = torch.stack([item.vision for item in group])
        k = method.num_keep(tokens.shape[1])
        ctx = Context(text=[texts[item.sample] for item in group] if texts else None)
        keep = method.select(tokens, k, ctx)
        for item, row in zip(group, keep, strict=True):
            item.kept = row.to(item.positions.device)
            item.vision = None


def keep_mask(items: list[Item], batch: int, length: int, device: torch.device) -> Tensor:
    """``(B, L)`` bool: True for every position that stays (all but the dropped candidates)."""
    keep = torch.ones(batch, length, dtype=torch.bool, device=device)
    for item in items:
        keep[item.sample, item.positions] = False
        keep[item.sample, item.positions[item.kept]] = True
    return keep


def selections_of(items: list[Item]) -> list[Selection]:
    """The records of what each item kept, on the CPU."""
    return [
        Selection(
            sample=item.sample,
            image=item.image,
            frame=item.frame,
            kept=item.kept.cpu(),
            n=len(item.positions),
            grid=item.grid,
            positions=item.positions[item.kept].cpu(),
            kind=item.kind,
            candidates=item.positions.cpu(),
        )
        for item in items
    ]
