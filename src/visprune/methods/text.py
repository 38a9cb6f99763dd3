"""Text helpers shared by the methods that compare tokens with the prompt in the token space."""

from __future__ import annotations

from collections.abc import Callable

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

    def mean(text: Tensor) -> Tensor:
        unit = unit_rows(text.float())
        return unit.mean(0) if text.shape[0] else unit.new_zeros(width)

    means = once_per_tensor(texts, mean)
    return torch.stack(means), torch.tensor([text.shape[0] > 0 for text in texts])


def once_per_tensor(texts: list[Tensor], function: Callable[[Tensor], Tensor]) -> list[Tensor]:
    """``[function(text) for text in texts]``, computed once per distinct tensor.

    A prompt shared by a batch (video frames) is one tensor repeated: its work, and its kernel
    launches on a GPU, do not grow with the frames.
    """
    done: dict[int, Tensor] = {}
    for text in texts:
        if id(text) not in done:
            done[id(text)] = function(text)
    return [done[id(text)] for text in texts]
