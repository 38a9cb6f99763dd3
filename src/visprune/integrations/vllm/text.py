"""The prompt text a text-conditioned method reads, carried with each image through vLLM.

transformers' adapters give a method the embeddings of the prompt tokens after the sample's last
visual token; here those token ids are taken from the request's prompt before vLLM expands the
image placeholders, travel with every image of the request as one more multimodal field, and
are embedded by the model's own embedding table. They are folded into each image's cache
identity, so an encoding selected for one prompt is never reused for another.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

#: The multimodal field that carries the prompt's token ids after the last image.
TEXT_FIELD = "visprune_text_ids"


def text_after_images(prompt: Sequence[int], image_token_ids: Sequence[int]) -> list[int]:
    """The token ids of ``prompt`` after its last image placeholder (all of it if none)."""
    last = max((i for i, token in enumerate(prompt) if token in set(image_token_ids)), default=-1)
    return list(prompt[last + 1 :])


def with_text(identity: str, text_ids: Sequence[int]) -> str:
    """An image's cache identity extended by the prompt text its selection depends on."""
    digest = hashlib.sha256(",".join(map(str, text_ids)).encode()).hexdigest()[:32]
    return f"{identity}+visprune-text-{digest}"
