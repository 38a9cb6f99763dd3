"""The v2 recipe's checks on validation data after its first two stages: the text stage's
answers and descriptions, the caption stage's captions, and how near the visual tokens sit to
the words that describe them."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .. import relevance, task
from ..evaluate import Encoder
from . import corpus, grid_text
from .rows import caption_batch, sequences
from .stages import exact_accuracy, token_accuracy


@torch.no_grad()
def text_accuracy(model, enc: Encoder, seed: int, count: int, objects) -> dict[str, float]:
    """Stage-1 check on validation scenes: answers right (questions) and whole repeated
    descriptions right (teacher forcing)."""
    samples = [
        corpus.text_sample(seed, i, split="validation", objects=objects) for i in range(count)
    ]
    out = {}
    for kind in ("question", "describe"):
        chosen = [s for s in samples if s.kind == kind]
        rows = []
        for s in chosen:
            words = [*enc.words(s.text), enc.eos]
            if kind == "question":  # the answer word and </s>
                cut = len(words) - 2
            else:  # the repeated description and </s>
                cut = len(words) - len(enc.words(s.text.split(corpus.DESCRIBE)[-1])) - 1
            rows.append((words[:cut], words[cut:]))
        batch = sequences(rows, enc.pad)
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        out[kind] = exact_accuracy(logits, batch["labels"])
    return out


@torch.no_grad()
def grid_accuracy(model, enc: Encoder, seed: int, count: int, objects) -> dict[str, float]:
    """Stage-1 check on validation scenes written cell by cell (:mod:`grid_text`): answers
    right (questions) and whole captions right (teacher forcing)."""
    out = {}
    for kind in ("question", "describe"):
        indices = [i for i in range(count) if grid_text.kind_of(i) == kind]
        samples = [task.make_sample(seed, "validation", i, objects=objects) for i in indices]
        batch = grid_text.grid_batch(model, samples, [kind] * len(samples), enc)
        out[kind] = exact_accuracy(model(**batch).logits, batch["labels"])
    return out


@torch.no_grad()
def caption_accuracy(model, enc: Encoder, seed: int, count: int, objects) -> dict[str, float]:
    """Stage-2 check on validation images: caption tokens and whole captions right."""
    samples = [task.make_sample(seed, "validation", i, objects=objects) for i in range(count)]
    batch = caption_batch(samples, enc)
    logits = model(**batch).logits
    return {
        "token": token_accuracy(logits, batch["labels"]),
        "caption": exact_accuracy(logits, batch["labels"]),
    }


def relevance_line(model, enc: Encoder, samples: Sequence[task.Sample]) -> str:
    """Median rank and top-7 share of the answer token by text relevance (single-object)."""
    ranks = relevance.answer_ranks(model, samples, enc)
    stats = relevance.summary(ranks)
    return (
        f"answer token by text relevance: median rank {stats['median']:.0f} of {task.NUM_CELLS}, "
        f"top-7 {100 * stats['top7']:.1f} % ({len(ranks)} questions)"
    )
