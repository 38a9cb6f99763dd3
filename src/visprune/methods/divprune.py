"""DivPrune: max-min diversity on cosine distance.

Alvar et al., "DivPrune: Diversity-based Visual Token Pruning for Large Multimodal Models",
CVPR 2025, https://arxiv.org/abs/2503.02175
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from torch import Tensor

from ..functional.divprune import divprune
from ..registry import METHODS
from .base import Method
from .context import Context


@METHODS.register("divprune")
@dataclass
class DivPrune(Method):
    """Max-min diversity on cosine distance (DivPrune, CVPR 2025).

    ``S_{t+1} = S_t ∪ {argmax_{j ∉ S_t} min_{s ∈ S_t} (1 - x̂_s · x̂_j)}``; the first pick is the
    token farthest from its nearest neighbour.

    Parameters
    ----------
    budget : int or float
        Tokens to keep per image (count, or fraction in (0, 1]).

    Notes
    -----
    Runs on the LLM input embeddings (after the projector). Unlike the published code, already
    selected tokens are excluded from later picks, so images with exactly duplicated tokens still
    keep ``k`` distinct tokens (:func:`visprune.functional.divprune`).
    Paper: https://arxiv.org/abs/2503.02175
    """

    name: ClassVar[str] = "divprune"
    stage: ClassVar[str] = "llm"

    def _select(self, tokens: Tensor, k: int, ctx: Context) -> Tensor:
        return divprune(tokens, k, sort=False)
