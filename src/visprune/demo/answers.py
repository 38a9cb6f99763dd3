"""The demo models' greedy answer word and accuracy per question type, for images and video
clips alike (:mod:`.evaluate`, :mod:`.video_evaluate`), and the answers of every method next to
the unpruned ones (the pictures of :mod:`.run` and :mod:`.video_run`)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch

import visprune

from ..methods.layer import positions_for


def left_padded(rows: Sequence[Sequence[int]], pad: int) -> dict[str, torch.Tensor]:
    """``input_ids`` and ``attention_mask``, both ``(len(rows), longest row)``, of token-id rows
    padded with ``pad`` on the left (as a processor with ``padding_side="left"`` gives)."""
    length = max(map(len, rows))
    ids = torch.full((len(rows), length), pad, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, r in enumerate(rows):
        ids[i, length - len(r) :] = torch.tensor(r)
        mask[i, length - len(r) :] = 1
    return {"input_ids": ids, "attention_mask": mask}


@torch.no_grad()
def greedy_words(
    model,
    items: Sequence[Any],
    inputs: Callable[[Sequence[Any]], dict[str, torch.Tensor]],
    vocab: Mapping[str, int],
    batch: int,
) -> list[str]:
    """Greedy first answer word per item: argmax of the next-token logits over the whole
    vocabulary (what ``generate(max_new_tokens=1)`` returns), ``batch`` items per forward pass
    of ``inputs(items)``; the model is left in the mode it was in."""
    was_training = model.training
    model.eval()
    inverse = {i: w for w, i in vocab.items()}
    out: list[str] = []
    for i in range(0, len(items), batch):
        logits = model(**inputs(items[i : i + batch]), logits_to_keep=1).logits
        out += [inverse[int(t)] for t in logits[:, -1].argmax(-1)]
    model.train(was_training)
    return out


def accuracy_per_type(items: Sequence[Any], words: Sequence[str]) -> dict[str, float]:
    """Share of ``items`` (each with ``qtype`` and ``answer``) whose word in ``words`` is the
    answer: per question type, and ``"all"`` (mean over items)."""
    hits: dict[str, list[bool]] = defaultdict(list)
    for item, word in zip(items, words, strict=True):
        hits[item.qtype].append(word == item.answer)
        hits["all"].append(word == item.answer)
    return {k: float(np.mean(v)) for k, v in hits.items()}


def answers_per_method(
    model,
    inputs: dict[str, torch.Tensor],
    vocab: Mapping[str, int],
    methods: Sequence[str],
    *,
    budget: float,
    positions: str,
    tokens: int,
) -> Iterator[tuple[str, list | None, int | None, list[str]]]:
    """For ``"unpruned"`` and then each of ``methods`` applied at ``budget``: the method, its
    selections (None unpruned), the tokens it keeps of ``tokens`` per image or frame (None
    unpruned) and the greedy answer word of each row of ``inputs``."""
    words = {i: w for w, i in vocab.items()}
    for method in ["unpruned", *methods]:
        handle = None
        if method != "unpruned":
            handle = visprune.apply(
                model,
                method,
                budget=budget,
                positions=positions_for(visprune.METHODS[method], positions),
            )
        try:
            with torch.no_grad():
                logits = model(**inputs, logits_to_keep=1).logits
            selections = handle.selections if handle else None
            kept = handle.method.num_keep(tokens) if handle else None
        finally:
            if handle is not None:
                handle.remove()
        yield method, selections, kept, [words[int(t)] for t in logits[:, -1].argmax(-1)]
