"""PyramidDrop: the language model in stages, each dropping a share of the visual tokens.

Xing et al., "PyramidDrop: Accelerating Your Large Vision-Language Models via Pyramid Visual
Redundancy Reduction" (CVPR 2025, arXiv 2410.17247).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from ..functional.rows import top_scores
from ..registry import METHODS
from .checks import check_param
from .context import Context
from .layer import LayerMethod, check_layer, scores_per_item


@METHODS.register("pdrop")
@dataclass
class PyramidDrop(LayerMethod):
    """At each stage boundary keep the visual tokens the last instruction token attends to most.

    At boundary layer ``l_s`` the scores are ``mean_h softmax(q_last k_j^T / sqrt(d_h))`` from
    layer ``l_s``'s own queries and keys (on the tokens that enter it), as published; layers
    ``>= l_s`` see only the kept tokens.

    Budget schedule: the first boundary keeps ``k_1 = budget`` tokens of an image's ``n``, and
    each later boundary keeps ``ratio`` times the previous count, ``k_s = max(1,
    round(k_1 * ratio ** (s - 1)))``. The paper's LLaVA-1.5 setting (576 tokens, lambda = 0.5,
    boundaries 8 / 16 / 24 of 32 layers) is ``budget=288`` (or ``0.5``), 288 -> 144 -> 72.
    ``visprune.select("pdrop", ...)`` runs the first boundary's selection.

    Parameters
    ----------
    budget : int or float
        Tokens kept per image after the first boundary.
    layers : tuple of int, optional
        The boundary layers; default: the quarters of the language model (8, 16, 24 for 32
        layers), ``N * s // 4`` for ``s = 1, 2, 3`` (at least 1; equal ones merged).
    ratio : float
        lambda in (0, 1]: the share of the remaining tokens each later boundary keeps.
    """

    layers: tuple[int, ...] | None = None
    ratio: float = 0.5

    name: ClassVar[str] = "pdrop"
    signal_offset: ClassVar[int] = 0

    def __post_init__(self) -> None:
        check_param(self.name, "ratio", self.ratio, low=0.0, strict=True)
        if self.ratio > 1:
            raise ValueError(f"{self.name}: ratio must be in (0, 1], got {self.ratio!r}.")
        if self.layers is not None:
            if isinstance(self.layers, int | str) or not self.layers:
                raise ValueError(
                    f"{self.name}: layers must be a non-empty tuple of ints, got {self.layers!r}."
                )
            self.layers = tuple(self.layers)
            for layer in self.layers:
                check_layer(self.name, "each of layers", layer)

    def prune_layers(self, num_layers: int) -> list[int]:
        if self.layers is not None:
            return list(self.layers)
        # Models of fewer than 8 layers get fewer distinct boundaries (never layer 0).
        return sorted({max(1, num_layers * stage // 4) for stage in (1, 2, 3)})

    def keep_count(self, n: int, step: int) -> int:
        first = self.num_keep(n)
        return min(n, max(1, round(first * self.ratio**step)))

    def _select(self, tokens: Tensor, k: int, ctx: Context) -> Tensor:
        b, n, _ = tokens.shape
        scores = torch.stack(scores_per_item(ctx.scores, b, n, "scores", self.name))
        return top_scores(scores, k).to(tokens.device)
