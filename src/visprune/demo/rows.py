"""Token-id rows of the v2 recipe's batches: prompts, targets and the caption prompt."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from . import corpus, task


def sequences(
    rows: Sequence[tuple[list[int], list[int]]], pad: int, *, loss_on_prompt: bool = False
) -> dict[str, torch.Tensor]:
    """Right-padded ``prompt + target`` rows; labels on the targets (and prompts if asked)."""
    length = max(len(p) + len(t) for p, t in rows)
    ids = torch.full((len(rows), length), pad, dtype=torch.long)
    labels = torch.full_like(ids, -100)
    mask = torch.zeros_like(ids)
    for i, (prompt, target) in enumerate(rows):
        n = len(prompt) + len(target)
        ids[i, :n] = torch.tensor(prompt + target)
        first = 0 if loss_on_prompt else len(prompt)
        labels[i, first:n] = ids[i, first:n]
        mask[i, :n] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def caption_prompt(enc) -> list[int]:
    """``describe the image ? <image> describe the image ?`` with the image expanded."""
    describe = enc.words(corpus.DESCRIBE)
    return describe + [enc.image] * task.NUM_CELLS + describe
