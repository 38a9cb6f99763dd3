"""Text helpers shared by the methods that compare tokens with the prompt in the token space."""

from __future__ import annotations

import torch
from torch import Tensor

from .base import Context, unit_rows


def mean_text_direction(
    ctx: Context, batch: int, width: int, method: str
) -> tuple[Tensor, Tensor] | None:
    """Mean of the unit-normalised prompt rows per item, or ``None`` when no text was given.

    Returns
    -------
    direction : Tensor
        ``(b, d)`` float32 ``t̄``; a zero row for an item whose prompt tail is empty.
    present : Tensor
        ``(b,)`` bool: which items have a non-empty prompt tail.
    """
    texts = ctx.texts_for(batch, method)
    if texts is None:
        return None
    means, present = [], []
    for text in texts:
        unit = unit_rows(text.float())
        means.append(unit.mean(0) if text.shape[0] else unit.new_zeros(width))
        present.append(text.shape[0] > 0)
    return torch.stack(means), torch.tensor(present)
