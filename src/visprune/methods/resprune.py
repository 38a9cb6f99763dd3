"""ResPrune: residual-energy subspace reconstruction with text modulation.

"ResPrune: Text-Conditioned Subspace Reconstruction for Visual Token Pruning",
https://arxiv.org/abs/2603.21105 (no published code; this follows
``docs/methods/resprune.md``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from torch import Tensor

from ..functional.resprune import ALPHA, resprune
from ..registry import METHODS
from .base import Method
from .checks import check_param
from .context import Context


@METHODS.register("resprune")
@dataclass
class ResPrune(Method):
    """Greedy subspace reconstruction of all tokens, weighted by relevance to the prompt.

    ``j = argmax_{i ∉ S} g_i ‖x_i - P_S x_i‖²`` with ``g_i = r̃_i^α`` and ``r̃`` the min-max
    rescaled cosine between ``x_i`` and the mean prompt direction.

    Parameters
    ----------
    budget : int or float
        Tokens to keep per image (count, or fraction in (0, 1]).
    alpha : float
        Exponent of the relevance modulation (0.5); ``alpha = 0`` disables the text term.

    Notes
    -----
    Runs on the LLM input embeddings (after the projector). Text (LLM embeddings of the prompt
    after the image, same width as the tokens) is optional: without it, or with an empty tail,
    ``g = 1`` and the method is pure residual-energy reconstruction. When the span is exhausted
    before ``k`` picks (best score <= 1e-6 of the largest ``g_i ‖x_i‖²``), the remaining slots
    go to the largest ``g_i ‖x_i‖²`` (:func:`visprune.functional.resprune`).
    Paper: https://arxiv.org/abs/2603.21105
    """

    alpha: float = ALPHA

    name: ClassVar[str] = "resprune"
    stage: ClassVar[str] = "llm"
    uses: ClassVar[frozenset[str]] = frozenset({"text"})
    text_in_token_space: ClassVar[bool] = True

    def __post_init__(self) -> None:
        check_param(self.name, "alpha", self.alpha, low=0.0)

    def _select(self, tokens: Tensor, k: int, ctx: Context) -> Tensor:
        texts = ctx.texts_for(tokens.shape[0], self.name)
        return resprune(tokens, k, texts, self.alpha, sort=False)
