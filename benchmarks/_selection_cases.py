"""The shapes ``selection.py`` times and the seeded inputs and calls it builds for each.

A case is ``frames`` images of ``n`` tokens of width ``d`` keeping ``k``; every input is drawn
from a fixed seed, so two runs time the same tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

import visprune
from visprune.compiled import SelectionNotCompilable

TEXT_TOKENS = 40
#: CLS attention heads and key width of the vision-tower context (CLIP ViT-L/14: 16 x 64).
HEADS, KEY_WIDTH = 16, 64


@dataclass
class Case:
    """One benchmark shape: ``frames`` images of ``n`` tokens of width ``d``, keeping ``k``."""

    key: str
    label: str
    frames: int
    n: int
    d: int
    k: int


CASES = [
    Case("image", "LLaVA-1.5 image", 1, 576, 4096, 64),
    Case("next", "LLaVA-NeXT image", 1, 2880, 4096, 320),
    Case("video", "video, 32 frames", 32, 144, 1024, 16),
]


def inputs(case: Case, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded visual tokens ``(n, d)`` (``(frames, n, d)`` for video) and a prompt
    ``(TEXT_TOKENS, d)``."""
    generator = torch.Generator().manual_seed(seed)
    shape = (case.frames, case.n, case.d) if case.frames > 1 else (case.n, case.d)
    tokens = torch.randn(shape, generator=generator)
    text = torch.randn(TEXT_TOKENS, case.d, generator=generator)
    return tokens, text


def vision_context(case: Case, seed: int = 2) -> visprune.Context:
    """Seeded CLS attention ``(.., H, n)``, keys ``(.., n, hd)`` and CLS states ``(.., d)``."""
    generator = torch.Generator().manual_seed(seed)
    lead = (case.frames,) if case.frames > 1 else ()
    logits = torch.randn(*lead, HEADS, case.n, generator=generator)
    return visprune.Context(
        cls_attention=logits.softmax(dim=-1),
        vision_keys=torch.randn(*lead, case.n, KEY_WIDTH, generator=generator),
        cls_state=torch.randn(*lead, case.d, generator=generator),
    )


def frame_context(context: visprune.Context, frame: int) -> visprune.Context:
    """The vision-tower context of one video frame."""
    return visprune.Context(
        cls_attention=context.cls_attention[frame],
        vision_keys=context.vision_keys[frame],
        cls_state=context.cls_state[frame],
    )


def runner(
    method: str, tokens: torch.Tensor, text: torch.Tensor, k: int, context, compile: bool = False
):
    """One call of ``method``: ``visprune.select`` with what it needs, or ``reduce`` for a
    merging method (its kept indices are returned, to compare batched and per-frame runs)."""
    chosen = visprune.get_method(method, budget=k)
    if chosen.merges:
        if compile:
            raise SelectionNotCompilable(f"{method} merges tokens; only selection compiles.")
        return lambda: chosen.reduce(tokens, None, context).kept
    extra = {"cls_attention": context.cls_attention} if "cls_attention" in chosen.uses else {}
    return lambda: visprune.select(chosen, tokens, k, text=text, compile=compile, **extra)
