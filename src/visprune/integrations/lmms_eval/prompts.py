"""Requests made ready for the processor: a simple task's text and visuals as one user turn
(visuals at its ``<image>`` marks, else first), and the ids of a scored continuation."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from PIL import Image

#: The placeholder lmms-eval tasks write where an image goes in a simple task's text.
IMAGE_MARK = "<image>"


@dataclass
class Prompt:
    """One request made ready for the processor."""

    messages: list[dict]
    images: list
    videos: list
    doc: dict
    context: str


def user_turn(context: str, visuals: Sequence | None, doc: dict) -> Prompt:
    """A simple task's request as one user message: visuals at the ``<image>`` marks of the
    text when it has them, else before it (as lmms-eval's chat tasks place them)."""
    visuals = [v for v in (visuals or []) if v is not None]
    images = [v for v in visuals if isinstance(v, Image.Image)]
    videos = [v for v in visuals if not isinstance(v, Image.Image)]
    parts: list[dict] = []
    if IMAGE_MARK in context and images:
        pieces = context.split(IMAGE_MARK)
        if len(pieces) - 1 != len(images):
            raise ValueError(
                f"the prompt has {len(pieces) - 1} {IMAGE_MARK} marks but the document has "
                f"{len(images)} images; give one mark per image, or none to put images first."
            )
        for i, piece in enumerate(pieces):
            if i:
                parts.append({"type": "image", "url": images[i - 1]})
            if piece:
                parts.append({"type": "text", "text": piece})
        parts = [{"type": "video", "url": v} for v in videos] + parts
    else:
        parts = [{"type": "image", "url": v} for v in images]
        parts += [{"type": "video", "url": v} for v in videos]
        parts.append({"type": "text", "text": context})
    return Prompt([{"role": "user", "content": parts}], images, videos, doc, context)


def continuation_ids(full: str, context: str, tokenizer: Any) -> list[int]:
    """Token ids of ``full`` after its prompt ``context``; both hold the same images, whose
    placeholders the processor expands equally, so the text tokens tell the difference."""
    ids = tokenizer(full).input_ids
    length = len(ids) - len(tokenizer(context).input_ids)
    if length < 1:
        raise ValueError(
            f"the continuation of {context!r} encodes to no tokens after the prompt; check the "
            "task's doc_to_target."
        )
    return ids[-length:]
