"""Run the method on every located image and frame, and turn its picks into a keep mask and
the :class:`Selection` records ``handle.selections`` shows.

Merging methods (VisionZip) return new tokens besides the kept indices. Each image's new tokens
take the sequence slots of its last ``c`` dropped candidates, in the method's order: they stay
inside the image span, after the kept tokens wherever the kept tokens leave the end of the image
free (the published code appends them after all kept tokens), and kept tokens never move, so
``Selection.positions`` and the position modes mean what they mean for every other method.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..methods import Context, Method
from ..methods.context import VISION_NEEDS
from .records import Item, Selection

#: Per-token vision scores, stacked ``(b, n, ...)``; ``cls_attention`` moves its heads first.
_SCORE_FIELDS = ("cls_attention", "vision_keys", "cls_state")


def run_method(
    method: Method,
    items: list[Item],
    embeds: Tensor,
    texts: list[Tensor] | None,
    compile: bool | str = False,
) -> None:
    """Fill ``item.kept`` (and ``item.merged``) for every item; equal shapes run as one batch.

    Parameters
    ----------
    method : Method
    items : list of Item
        Their ``vision`` holds pre-projector features for "vision" methods, else ``None`` (the
        tokens are then ``embeds[item.sample, item.positions]``); their ``scores`` the vision
        scores for methods that use them.
    embeds : Tensor
        ``(B, L, d)`` the language model's input embeddings.
    texts : list of Tensor or None
        Per sample, the prompt text after its last visual token.
    compile : bool or str
        ``Method.select``'s ``compile`` (selection methods only).
    """
    groups: dict[tuple, list[Item]] = {}
    for item in items:
        tokens = item.vision if item.vision is not None else embeds[item.sample, item.positions]
        item.vision = tokens
        groups.setdefault((tuple(tokens.shape), str(tokens.device)), []).append(item)
    wants_scores = bool(method.uses & (VISION_NEEDS.keys() | {"cls_state"}))
    for group in groups.values():
        tokens = torch.stack([item.vision for item in group])
        k = method.num_keep(tokens.shape[1])
        scores = _stacked_scores(group, tokens.device) if wants_scores else {}
        ctx = Context(text=[texts[item.sample] for item in group] if texts else None, **scores)
        if method.merges:
            kept, merged = method.reduce(tokens, k, ctx)
        else:
            kept, merged = method.select(tokens, k, ctx, compile=compile), None
        for number, (item, row) in enumerate(zip(group, kept, strict=True)):
            item.kept = row.to(item.positions.device)
            item.vision = None
            if merged is not None and merged.shape[1]:
                item.merged = merged[number]
                item.merged_positions = merge_slots(item)


def _stacked_scores(group: list[Item], device: torch.device) -> dict[str, Tensor]:
    if any(item.scores is None for item in group):
        return {}  # the method raises for what it requires
    stacked = {
        name: torch.stack([item.scores[name] for item in group]).to(device)
        for name in _SCORE_FIELDS
    }
    stacked["cls_attention"] = stacked["cls_attention"].transpose(1, 2)  # (b, H, n)
    return stacked


def merge_slots(item: Item) -> Tensor:
    """Positions of the slots that carry ``item``'s new tokens: its last ``c`` dropped
    candidates, ascending (new token ``j`` goes to slot ``j``)."""
    dropped = torch.ones(len(item.positions), dtype=torch.bool, device=item.positions.device)
    dropped[item.kept] = False
    slots = item.positions[dropped]
    count = item.merged.shape[0]
    if count > len(slots):
        raise ValueError(
            f"a merging method returned {len(item.kept)} kept and {count} new tokens for an "
            f"image of {len(item.positions)} candidates; kept plus new must not exceed them."
        )
    return slots[len(slots) - count :]


def place_merged(items: list[Item], embeds: Tensor, project) -> Tensor:
    """``embeds`` with every item's projected new tokens written into its slots (a copy when
    there are any; ``project`` maps new tokens ``(c, d_method)`` to ``(c, d)``)."""
    merging = [item for item in items if item.merged is not None]
    if not merging:
        return embeds
    embeds = embeds.clone()
    for item in merging:
        projected = project(item.merged).to(embeds.dtype)
        if projected.shape != (item.merged.shape[0], embeds.shape[-1]):
            raise ValueError(
                f"the projected new tokens have shape {tuple(projected.shape)}, expected "
                f"({item.merged.shape[0]}, {embeds.shape[-1]})."
            )
        embeds[item.sample, item.merged_positions] = projected
        item.merged = projected
    return embeds


def keep_mask(items: list[Item], batch: int, length: int, device: torch.device) -> Tensor:
    """``(B, L)`` bool: True for every position that stays (all but the dropped candidates;
    the slots of new tokens stay)."""
    keep = torch.ones(batch, length, dtype=torch.bool, device=device)
    for item in items:
        keep[item.sample, item.positions] = False
        keep[item.sample, item.positions[item.kept]] = True
        if item.merged_positions is not None:
            keep[item.sample, item.merged_positions] = True
    return keep


def selections_of(items: list[Item]) -> list[Selection]:
    """The records of what each item kept, on the CPU.

    Every item's indices travel to the host in one copy (and the merged tokens in one more):
    on a GPU each copy waits for the stream, so a batch pays once, not once per image.
    """
    if not items:
        return []
    device = items[0].positions.device
    indices, lengths = [], []
    for item in items:
        parts = [item.kept, item.positions[item.kept], item.positions]
        if item.merged_positions is not None:
            parts.append(item.merged_positions)
        indices.extend(part.to(device) for part in parts)
        lengths.extend(len(part) for part in parts)
    host = iter(torch.cat(indices).cpu().split(lengths))
    merging = [item.merged.detach().to(device) for item in items if item.merged is not None]
    merged_host = iter(torch.cat(merging).cpu().split([len(m) for m in merging]) if merging else ())
    records = []
    for item in items:
        kept, positions, candidates = next(host), next(host), next(host)
        records.append(
            Selection(
                sample=item.sample,
                image=item.image,
                frame=item.frame,
                kept=kept,
                n=len(item.positions),
                grid=item.grid,
                positions=positions,
                kind=item.kind,
                candidates=candidates,
                merged_positions=None if item.merged_positions is None else next(host),
                merged=None if item.merged is None else next(merged_host),
            )
        )
    return records
