"""Prompt-text helpers shared by the cores that compare tokens with the prompt: mean unit
directions, and ragged prompts packed into one zero-padded batch."""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F
from torch import Tensor

from .rows import unit_rows


def mean_text_directions(
    text: Tensor | list[Tensor] | None, batch: int
) -> tuple[Tensor, Tensor] | None:
    """Mean of the unit-normalised prompt rows per item, or ``None`` when no text was given.

    Parameters
    ----------
    text : Tensor or list of Tensor, optional
        One ``(m, d)`` prompt shared by every item, or a list of ``batch`` prompts ``(m_i, d)``.
    batch : int
        Items ``b``.

    Returns
    -------
    direction : Tensor
        ``(b, d)`` float32 ``t̄``; a zero row for an item whose prompt tail is empty.
    present : Tensor
        ``(b,)`` bool: which items have a non-empty prompt tail.
    """
    if text is None:
        return None
    texts = [text] * batch if isinstance(text, Tensor) else list(text)
    return unit_means(texts, torch.device("cpu") if not texts else texts[0].device)


def unit_means(texts: list[Tensor], device: torch.device) -> tuple[Tensor, Tensor]:
    """Mean of each text's unit-normalised rows, for the whole batch at once.

    Parameters
    ----------
    texts : list of Tensor
        ``b`` texts ``(m_i, d)``; one tensor repeated is read once.
    device : torch.device
        Where the results go.

    Returns
    -------
    mean : Tensor
        ``(b, d)`` float32; a zero row for an empty text.
    present : Tensor
        ``(b,)`` bool: which texts have rows.

    Notes
    -----
    The sum runs as a fixed pairwise tree over the rows (:func:`padded_sum`), so an item's mean
    does not depend on the other items' lengths: a batch gives each item's mean alone, exactly.
    """
    lengths = [len(text) for text in texts]
    shared = all(text is texts[0] for text in texts)
    unit = unit_rows(padded_rows(texts[:1] if shared else texts, device))
    counts = torch.tensor(lengths[:1] if shared else lengths, device=device)
    mean = padded_sum(unit) / counts.clamp_min(1).unsqueeze(-1)
    present = counts > 0
    if shared:
        return mean.expand(len(texts), -1), present.expand(len(texts))
    return mean, present


def padded_sum(rows: Tensor) -> Tensor:
    """``(b, m, d) -> (b, d)``: the sum over ``m`` as a pairwise tree of neighbours.

    Zero rows appended to an item leave its sum exactly as it was (each extra node adds a
    zero), unlike a library reduction, whose grouping follows the length it is given.
    """
    b, m, d = rows.shape
    size = 1 << max(m - 1, 0).bit_length()
    if size != m:
        rows = torch.cat([rows, rows.new_zeros(b, size - m, d)], dim=1)
    while rows.shape[1] > 1:
        # Neighbours summed in pairs: a sum of two values is their one rounding, on any kernel.
        rows = rows.unflatten(1, (-1, 2)).sum(2)
    return rows[:, 0] if m else rows.new_zeros(b, d)


def padded_rows(texts: list[Tensor], device: torch.device, rows: int | None = None) -> Tensor:
    """Per-item ``(m_i, d)`` texts as one ``(b, m, d)`` float32 tensor on ``device``.

    Parameters
    ----------
    texts : list of Tensor
        ``b`` texts ``(m_i, d)``.
    device : torch.device
        Where the result goes.
    rows : int, optional
        Keep each text's last ``rows`` rows (all of a shorter text) and make ``m = rows``
        whatever the lengths, so the shape does not depend on the batch. By default every row is
        kept and ``m = max m_i``.

    Returns
    -------
    Tensor
        ``(b, m, d)``: item ``i``'s kept rows first, in order, then zero rows.

    Notes
    -----
    A text shared by every item is expanded, not copied; otherwise the texts are packed with one
    concatenation and one indexed copy, so the ops do not grow with the items.
    """
    first = texts[0]
    if all(text is first for text in texts):
        shared = first.float().to(device)
        if rows is not None:
            tail = shared[-rows:]
            shared = F.pad(tail, (0, 0, 0, rows - len(tail)))
        return shared.unsqueeze(0).expand(len(texts), -1, -1)
    lengths = [len(text) for text in texts]
    kept = lengths if rows is None else [min(length, rows) for length in lengths]
    width = max(kept) if rows is None else rows
    packed = torch.cat(texts).float().to(device)
    if kept != lengths:  # drop the rows before each text's last ``rows``
        ends = itertools.accumulate(lengths)
        last = [end - keep + at for end, keep in zip(ends, kept, strict=True) for at in range(keep)]
        packed = packed.index_select(0, torch.tensor(last, dtype=torch.long, device=device))
    where = [item * width + at for item, keep in enumerate(kept) for at in range(keep)]
    padded = packed.new_zeros(len(texts) * width, packed.shape[-1])
    padded.index_copy_(0, torch.tensor(where, dtype=torch.long, device=device), packed)
    return padded.view(len(texts), width, packed.shape[-1])
