"""Token-id rows of the v2 recipe's batches: prompts, targets and the caption prompt, and the
batch of each stage (text, captions, questions)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from .. import task
from ..evaluate import Encoder
from . import corpus


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


def text_batch(samples: Sequence[corpus.TextSample], enc: Encoder) -> dict[str, torch.Tensor]:
    """Stage 1: plain language modelling on every token of each text (and ``</s>``)."""
    rows = [([*enc.words(s.text), enc.eos], []) for s in samples]
    return sequences(rows, enc.pad, loss_on_prompt=True)


def caption_batch(samples: Sequence[task.Sample], enc: Encoder) -> dict[str, torch.Tensor]:
    """Stage 2: the caption after the prompt, loss on the caption and ``</s>``."""
    return question_batch((), enc, samples)


def question_batch(
    samples: Sequence[task.Sample], enc: Encoder, captioned: Sequence[task.Sample] = ()
) -> dict[str, torch.Tensor]:
    """Stage 3: the task's prompt, loss on the answer and ``</s>``; then the ``captioned``
    images' caption rows (as :func:`caption_batch`), if any."""
    rows = [(enc.prompt(s), [*enc.words(s.answer), enc.eos]) for s in samples]
    prompt = caption_prompt(enc)
    rows += [(prompt, [*enc.words(corpus.caption(s)), enc.eos]) for s in captioned]
    batch = sequences(rows, enc.pad)
    images = [s.image for s in [*samples, *captioned]]
    batch["pixel_values"] = torch.from_numpy(task.normalize(np.stack(images)))
    return batch
