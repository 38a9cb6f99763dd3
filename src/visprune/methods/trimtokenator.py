"""TrimTokenator: mutual-information alignment, then representative-and-diverse RepMax.

"TrimTokenator: Towards Adaptive Visual Token Pruning for Large Multimodal Models",
https://arxiv.org/abs/2509.00320 (no published code; this follows
``docs/methods/trimtokenator.md``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from torch import Tensor

from ..functional.trimtokenator import trimtokenator
from ..registry import METHODS
from .base import Method
from .context import Context


@METHODS.register("trimtokenator")
@dataclass
class TrimTokenator(Method):
    """Drop tokens misaligned with the prompt, then keep a representative diverse subset.

    RepMax on the aligned set ``A`` with ``δ(i, j) = 1 - x̂_i · x̂_j``: first pick
    ``argmax_{i ∈ A} Σ_{j ∈ A} δ(i, j)``, then ``argmax_{i ∈ A \\ S} Σ_{s ∈ S} δ(i, s)``.

    Parameters
    ----------
    budget : int or float
        Tokens to keep per image (count, or fraction in (0, 1]).

    Notes
    -----
    Runs on the LLM input embeddings (after the projector). Text (LLM embeddings of the prompt
    after the image, same width as the tokens) is optional: without it, or with an empty tail,
    every token is aligned and only RepMax runs (:func:`visprune.functional.trimtokenator`).
    Paper: https://arxiv.org/abs/2509.00320
    """

    name: ClassVar[str] = "trimtokenator"
    stage: ClassVar[str] = "llm"
    uses: ClassVar[frozenset[str]] = frozenset({"text"})
    text_in_token_space: ClassVar[bool] = True

    def _select(self, tokens: Tensor, k: int, ctx: Context) -> Tensor:
        texts = ctx.texts_for(tokens.shape[0], self.name)
        return trimtokenator(tokens, k, texts, sort=False)
