"""Shorten the language model's inputs at prefill, and keep decode steps and labels consistent.

Pure functions on the keyword arguments the language model receives; the adapter decides when
they run.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .records import Prefill


def shorten(
    kwargs: dict, embeds: Tensor, keep: Tensor, mask: Tensor | None, compact: bool
) -> Prefill:
    """Gather the kept rows of ``inputs_embeds``, positions and mask into ``kwargs``.

    Parameters
    ----------
    kwargs : dict
        The language model's keyword arguments, changed in place.
    embeds : Tensor
        ``(B, L, d)`` the full input embeddings.
    keep : Tensor
        ``(B, L)`` bool, True for kept positions.
    mask : Tensor or None
        ``(B, L)`` the 2-D attention mask (the padding of what the language model received).
        Its padding (0) is left out too, so the sequence is as long as its longest row of
        kept tokens.
    compact : bool
        Renumber kept tokens (True) or keep their original positions. Only removed tokens
        lower the numbers, padding does not.

    Returns
    -------
    Prefill
        What decode steps and the loss need. Rows that keep different counts are re-padded on
        the left (``index == -1``). ``kwargs["attention_mask"]`` is then 2-D (or left out when
        none is needed): a 4-D mask or a dict of them, built for the unpruned length, never
        stays.
    """
    batch, length, width = embeds.shape
    device = embeds.device
    present = keep if mask is None else keep & mask.bool().to(keep.device)
    # The one read of the device: the longest and shortest row of what stays.
    counts = present.sum(-1)
    longest, shortest = torch.stack([counts.max(), counts.min()]).tolist()
    index = packed_index(present, longest)
    padded = index < 0
    safe = index.clamp_min(0)
    dropped_before = (~keep).long().cumsum(-1)
    gathered_embeds = embeds.gather(1, safe.unsqueeze(-1).expand(-1, -1, width))
    kwargs["inputs_embeds"] = gathered_embeds.masked_fill(padded.unsqueeze(-1), 0)

    positions = kwargs.get("position_ids")
    if positions is None:
        positions = torch.arange(length, device=device).expand(batch, length)
    gathered = positions.gather(-1, safe.expand(*positions.shape[:-2], batch, longest))
    if compact:
        gathered = gathered - dropped_before.gather(1, safe)
    kwargs["position_ids"] = gathered.masked_fill(padded, 1)

    built = kwargs.get("attention_mask")
    stale = built is not None and not (isinstance(built, Tensor) and built.dim() == 2)
    new_mask = None
    if mask is not None:
        new_mask = mask.gather(1, safe).masked_fill(padded, 0)
    elif shortest < longest or not compact or stale:
        # Gapped positions without a mask would read as packed sequences, and a mask built
        # for the unpruned length must go: pass one.
        new_mask = (~padded).long()
    if new_mask is not None:
        kwargs["attention_mask"] = new_mask
    dropped = (~keep).sum(-1)
    shift = (length - longest) - (dropped if compact else 0 * dropped)
    return Prefill(
        length=length, index=index, mask=new_mask, dropped=dropped, shift=shift.unsqueeze(-1)
    )


def packed_index(keep: Tensor, longest: int | None = None) -> Tensor:
    """``(B, L)`` bool -> ``(B, L')`` the kept positions per row, left re-padded with -1.

    ``longest`` is ``L'``, the most positions a row keeps (read from the device when not
    given): the only read, whatever the batch. A stable sort puts each row's removed positions
    first and its kept ones last, in order, so the last ``L'`` columns are the kept positions
    behind the removed ones that re-pad the row.
    """
    length = keep.shape[1]
    if longest is None:
        longest = int(keep.sum(-1).max())
    order = keep.to(torch.uint8).sort(dim=-1, stable=True).indices[:, length - longest :]
    return order.masked_fill(~keep.gather(1, order), -1)


def continue_decode(
    kwargs: dict, state: Prefill, steps: int, past: int, compact: bool, positions_supplied: bool
) -> None:
    """Fit a decode step's mask (and compact positions) to the shortened cache, in place.

    ``steps`` tokens arrive on top of ``past`` cached ones; the mask generate builds covers the
    unpruned length, so its tail (the generated tokens) is appended to the compacted prefill
    mask.
    """
    batch = state.index.shape[0]
    longest = state.index.shape[1]
    mask = kwargs.get("attention_mask")
    if state.mask is not None:
        generated = past - longest + steps
        if mask is None:
            tail = state.mask.new_ones(batch, generated)
        elif isinstance(mask, Tensor) and mask.dim() == 2:
            tail = mask[:, -generated:] if generated else mask[:, :0]
        else:
            raise ValueError("visprune needs a 2-D attention mask (or none) in decode steps.")
        kwargs["attention_mask"] = torch.cat([state.mask, tail.to(state.mask)], dim=-1)
    elif isinstance(mask, Tensor) and mask.dim() == 2 and mask.shape[-1] != past + steps:
        kwargs["attention_mask"] = mask[:, -(past + steps) :]
    positions = kwargs.get("position_ids")
    if positions is not None and compact and not positions_supplied:
        # generate continues the unpruned numbering; renumbered tokens continue lower.
        kwargs["position_ids"] = positions - state.dropped.to(positions.device).unsqueeze(-1)


def decode_positions(
    input_ids: Tensor,
    state: Prefill,
    past: int,
    following: Tensor | None,
    mrope: bool,
    deltas: Tensor | None = None,
) -> Tensor:
    """Positions of a manual loop's decode step: where the unpruned sequence would continue.

    Parameters
    ----------
    input_ids : Tensor
        ``(B, q)`` the step's tokens.
    state : Prefill
        What the pruned prefill left.
    past : int
        Tokens in the (shortened) cache.
    following : Tensor or None
        M-RoPE: ``(B,)`` the position that follows each row's unpruned prompt, one past its
        largest (``compat.next_mrope_position`` of the positions its prefill received), as
        ``generate`` continues; ``None`` when the prefill had no M-RoPE positions: then a
        row's real tokens count (its padding holds no position), plus ``deltas``. Unused
        without M-RoPE.
    mrope : bool
        Whether the model takes M-RoPE positions.
    deltas : Tensor or None
        M-RoPE without ``following``: ``(B, 1)`` transformers' ``rope_deltas``, where the model
        kept them, by which its M-RoPE positions run ahead of or behind the token count.

    Returns
    -------
    Tensor
        ``(B, q)`` positions: the unpruned numbering (less the removed tokens when renumbered),
        or ``(3, B, q)`` M-RoPE positions: ``following`` plus one per token decoded since.
        M-RoPE positions are never renumbered (their adapters keep the original positions).
    """
    batch, steps = input_ids.shape
    step = torch.arange(steps, device=input_ids.device)
    if not mrope:
        return step + past + state.shift.to(input_ids.device)
    if following is None:
        # The real tokens: the kept ones and the removed ones (left-out padding is neither).
        following = (state.index >= 0).sum(-1) + state.dropped.to(state.index.device)
        if deltas is not None:
            following = following + deltas.reshape(-1).to(following.device)
    decoded = past - state.index.shape[1]
    start = following.to(input_ids.device).unsqueeze(-1) + decoded
    return (start + step).unsqueeze(0).expand(3, batch, steps)


def shorten_labels(labels: Tensor | None, logits: Tensor, state: Prefill | None) -> Tensor | None:
    """Drop the labels of removed positions so they line up with the shortened logits."""
    if labels is None or state is None or labels.shape[-1] != state.length:
        return labels
    if logits.shape[-2] != state.index.shape[1]:
        return labels
    index = state.index.to(labels.device)
    return labels.gather(1, index.clamp_min(0)).masked_fill(index < 0, -100)
