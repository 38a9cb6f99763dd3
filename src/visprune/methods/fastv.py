"""FastV: from decoder layer K on, keep the visual tokens the last prompt token attends to most.

Chen et al., "An Image is Worth 1/2 Tokens After Layer 2: Plug-and-Play Inference Acceleration
for Large Vision-Language Models" (ECCV 2024, arXiv 2403.06764).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from ..functional.rows import top_scores
from ..registry import METHODS
from .context import Context
from .layer import LayerMethod, check_layer, scores_per_item


@METHODS.register("fastv")
@dataclass
class FastV(LayerMethod):
    """Keep the ``k`` visual tokens receiving the most attention from the last prompt token.

    ``score_j = mean_h softmax(q_last W_q^h (k_j W_k^h)^T / sqrt(d_h))`` at layer ``K - 1``
    (the attention map the published code reads from the layer before ``K``); layers ``>= K``
    see only the kept tokens.

    Parameters
    ----------
    budget : int or float
        Visual tokens kept per image from layer ``K`` on. The paper's ``R = 50 %`` (drop half)
        is ``budget=0.5``.
    layer : int
        ``K``: layers ``0 .. K-1`` run on every token (the paper's default ``K = 2``).
    """

    layer: int = 2

    name: ClassVar[str] = "fastv"

    def __post_init__(self) -> None:
        check_layer(self.name, "layer", self.layer)

    def prune_layers(self, num_layers: int) -> list[int]:
        return [self.layer]

    def _select(self, tokens: Tensor, k: int, ctx: Context) -> Tensor:
        b, n, _ = tokens.shape
        scores = torch.stack(scores_per_item(ctx.scores, b, n, "scores", self.name))
        return top_scores(scores, k).to(tokens.device)
