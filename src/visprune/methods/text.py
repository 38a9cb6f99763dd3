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


def padded_rows(texts: list[Tensor], device: torch.device) -> Tensor:
    """Per-item ``(m_i, d)`` texts as one ``(b, max m_i, d)`` float32 tensor on ``device``.

    Rows past an item's own text are zero. A text shared by every item is expanded, not copied;
    otherwise the texts are packed with one concatenation and one indexed copy, so the ops do
    not grow with the items.
    """
    first = texts[0]
    if all(text is first for text in texts):
        return first.float().to(device).unsqueeze(0).expand(len(texts), -1, -1)
    lengths = [len(text) for text in texts]
    longest = max(lengths)
    packed = torch.cat(texts).float().to(device)
    where = [item * longest + at for item, length in enumerate(lengths) for at in range(length)]
    padded = packed.new_zeros(len(texts) * longest, packed.shape[-1])
    padded.index_copy_(0, torch.tensor(where, device=device), packed)
    return padded.view(len(texts), longest, -1)
