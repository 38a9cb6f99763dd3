"""VisPruner: important tokens by the vision tower's CLS attention, then diverse ones.

Zhang et al., "Beyond Text-Visual Attention: Exploiting Visual Cues for Effective Token Pruning
in VLMs" (VisPruner, ICCV 2025, arXiv 2412.01818).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar

from torch import Tensor

from ..functional.vispruner import vispruner
from ..registry import METHODS
from .base import Method
from .checks import check_param, per_item
from .context import Context


def head_attention(value: object, batch: int, n: int, method: str) -> Tensor:
    """The CLS attention as ``(b, H, n)`` float32 (a ``(b, n)`` row is one head)."""
    attention = per_item(value, batch, (2, 3), "cls_attention", method)
    if attention.dim() == 2:
        attention = attention.unsqueeze(1)
    if attention.shape[-1] != n:
        raise ValueError(
            f"{method}: cls_attention covers {attention.shape[-1]} tokens per image, the tokens "
            f"have {n}; pass the CLS row without its own (CLS) column."
        )
    return attention


@METHODS.register("vispruner")
@dataclass
class VisPruner(Method):
    """``int(k * important_ratio)`` tokens by CLS attention, the rest by removing similar pairs.

    Parameters
    ----------
    budget : int or float
        Tokens to keep per image (count, or fraction in (0, 1]).
    important_ratio : float
        Share of the budget taken by CLS attention alone, in [0, 1] (published default 0.5).

    Notes
    -----
    Stage "vision": runs on the vision features before the projector (CLS removed) and needs
    ``cls_attention``, the CLS query's attention to each patch at the selected vision layer
    (head-mean, not renormalised), ``(H, n)`` or ``(n,)`` per image. ``visprune.apply`` captures
    it from CLIP towers (LLaVA, LLaVA-NeXT); towers without a CLS token (SigLIP, Qwen's ViT)
    cannot run it. Deliberate differences: every budget returns ``k`` distinct tokens (the
    published loop raises or returns fewer on some budgets) and equal scores keep the lower
    index first (:func:`visprune.functional.vispruner`). Paper: https://arxiv.org/abs/2412.01818
    """

    important_ratio: float = 0.5

    name: ClassVar[str] = "vispruner"
    stage: ClassVar[str] = "vision"
    requires: ClassVar[frozenset[str]] = frozenset({"cls_attention"})
    uses: ClassVar[frozenset[str]] = frozenset({"cls_attention"})

    def __post_init__(self) -> None:
        check_param(self.name, "important_ratio", self.important_ratio, low=0.0)
        if self.important_ratio > 1:
            raise ValueError(
                f"{self.name}: important_ratio must be in [0, 1], got {self.important_ratio!r}."
            )

    def _prepare(self, ctx: Context, tokens: Tensor) -> Context:
        b, n, _ = tokens.shape
        attention = head_attention(ctx.cls_attention, b, n, self.name).to(tokens.device)
        return dataclasses.replace(ctx, cls_attention=attention)

    def _select(self, tokens: Tensor, k: int, ctx: Context) -> Tensor:
        # ctx.cls_attention: (b, H, n) float32, from _prepare.
        return vispruner(tokens, ctx.cls_attention, k, float(self.important_ratio))
