"""What the demo runs on the demo model: prompts as token ids, the greedy answer, accuracy.

:class:`Encoder` writes the ids the processor would (without it, for speed); :func:`accuracy` is
what ``visprune demo`` reports per question type.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from . import task
from .answers import accuracy_per_type, greedy_words, left_padded
from .tokenizer import EOS, IMAGE, PAD, build_tokenizer


class Encoder:
    """Token ids of prompts and answers without the processor (same ids as the processor)."""

    def __init__(self, tokenizer=None) -> None:
        self.tokenizer = tokenizer or build_tokenizer()
        vocab = self.tokenizer.get_vocab()
        self.vocab = vocab
        self.image = vocab[IMAGE]
        self.pad = vocab[PAD]
        self.eos = vocab[EOS]
        self._cache: dict[str, list[int]] = {}

    def words(self, text: str) -> list[int]:
        ids = self._cache.get(text)
        if ids is None:
            ids = self._cache[text] = [self.vocab[w] for w in text.replace("?", " ?").split()]
        return ids

    def prompt(self, sample: task.Sample) -> list[int]:
        """Ids of :func:`task.prompt_text` with the image expanded to its visual tokens."""
        question = self.words(sample.question)
        return question + [self.image] * task.NUM_CELLS + question


def prompt_batch(samples: Sequence[task.Sample], enc: Encoder) -> dict[str, torch.Tensor]:
    """Left-padded prompts (as the processor with ``padding_side="left"`` gives)."""
    batch = left_padded([enc.prompt(s) for s in samples], enc.pad)
    batch["pixel_values"] = torch.from_numpy(task.normalize(np.stack([s.image for s in samples])))
    return batch


def predict(model, samples: Sequence[task.Sample], enc: Encoder, batch: int = 100) -> list[str]:
    """Greedy first answer word: argmax of the next-token logits over the whole vocabulary
    (what ``generate(max_new_tokens=1)`` returns)."""
    return greedy_words(model, samples, lambda rows: prompt_batch(rows, enc), enc.vocab, batch)


def accuracy(model, samples: Sequence[task.Sample], enc: Encoder) -> dict[str, float]:
    """Accuracy per question type and ``"all"`` (mean over samples)."""
    return accuracy_per_type(samples, predict(model, samples, enc))


def pruned_accuracy(model, samples, enc, method: str = "random", budget: float = 0.111, **kw):
    import visprune

    with visprune.apply(model, method, budget=budget, **kw):
        return accuracy(model, samples, enc)


def fmt(acc: dict[str, float]) -> str:
    keys = ["all", *task.QUESTION_TYPES]
    return " ".join(f"{k}={100 * acc[k]:.1f}" for k in keys if k in acc)
