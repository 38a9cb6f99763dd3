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

    Raises
    ------
    ValueError
        When a text's width differs from the tokens' width ``d`` (these methods compare tokens and
        text in one space, so the text must be LLM input embeddings like the tokens).
    """
    texts = ctx.texts_for(batch)
    if texts is None:
        return None
    means, present = [], []
    for text in texts:
        if text.shape[-1] != width:
            raise ValueError(
                f"{method}: text width {text.shape[-1]} differs from the token width {width}; "
                "pass the LLM input embeddings of the prompt (the tokens' own space)."
            )
        unit = unit_rows(text.float())
        means.append(unit.mean(0) if text.shape[0] else unit.new_zeros(width))
        present.append(text.shape[0] > 0)
    return torch.stack(means), torch.tensor(present)
