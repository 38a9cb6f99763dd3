"""VisionZip: dominant tokens by CLS attention, the rest merged into a few contextual tokens.

Yang et al., "VisionZip: Longer is Better but Not Necessary in Vision Language Models"
(CVPR 2025, arXiv 2412.04467).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, NamedTuple

import torch
from torch import Tensor

from ..functional.visionzip import visionzip
from ..registry import METHODS
from .base import Method
from .checks import check_finite, check_param, per_item
from .context import Context, with_batch_dim
from .vispruner import head_attention

#: The published split: 10 contextual tokens of 64 (54 dominant + 10, 108 + 20, 162 + 30).
CONTEXTUAL_RATIO = 10 / 64


class Reduction(NamedTuple):
    """What a merging method returns for a batch of images.

    Attributes
    ----------
    kept : Tensor
        ``(b, m)`` int64 indices of the candidate tokens that stay, ascending.
    merged : Tensor
        ``(b, c, d)`` new tokens in the tokens' own space (before the projector for a "vision"
        method), in the method's order; ``m + c`` is the budget.
    """

    kept: Tensor
    merged: Tensor


@METHODS.register("visionzip")
@dataclass
class VisionZip(Method):
    """Dominant tokens by CLS attention; the others merged into contextual tokens.

    Of a budget ``k``, ``c = round(k * contextual_ratio)`` tokens are contextual and ``k - c``
    dominant, the CLS token among them when ``cls_state`` is given (as published: 54 dominant
    with CLS + 10 contextual for 64). Dominant: the patches with the most CLS attention summed
    over heads. Contextual: every ``max(1, R // c)``-th of the ``R`` remaining patches is a
    target, every other remaining patch joins the target with the most cosine-similar key, and
    ``merged_j = h_target_j + mean(h of its members)``.

    Parameters
    ----------
    budget : int or float
        Tokens per image after the reduction, kept plus merged (count, or fraction in (0, 1]).
    contextual_ratio : float
        Share of the budget that is contextual, in [0, 1) (published 10 / 64).

    Notes
    -----
    Stage "vision": the tokens are the selected vision layer's output hidden states of the
    patches (before the projector, CLS removed), with ``cls_attention`` ``(H, n)`` (the CLS
    query's attention to the patches), ``vision_keys`` ``(n, hd)`` (that layer's key projections
    averaged over heads) and optionally ``cls_state`` ``(d,)`` (the CLS token's output there).
    It merges, so it has no ``select``: call :meth:`reduce`, or
    :func:`visprune.functional.visionzip` on the published layout. ``visprune.apply`` captures
    the scores from CLIP towers and projects the new tokens (CLS first, then the contextual
    ones) with the model's projector, like the published code; where they sit in the sequence is
    the adapter's (:mod:`visprune.adapters.selection`). Paper: https://arxiv.org/abs/2412.04467
    """

    contextual_ratio: float = CONTEXTUAL_RATIO

    name: ClassVar[str] = "visionzip"
    stage: ClassVar[str] = "vision"
    requires: ClassVar[frozenset[str]] = frozenset({"cls_attention", "vision_keys"})
    uses: ClassVar[frozenset[str]] = frozenset({"cls_attention", "vision_keys", "cls_state"})
    merges: ClassVar[bool] = True

    def __post_init__(self) -> None:
        check_param(self.name, "contextual_ratio", self.contextual_ratio, low=0.0)
        if self.contextual_ratio >= 1:
            raise ValueError(
                f"{self.name}: contextual_ratio must be in [0, 1), got {self.contextual_ratio!r}."
            )

    def split(self, k: int, with_cls: bool) -> tuple[int, int]:
        """``(patches kept, new tokens)`` for a budget of ``k``: CLS (if any) + contextual."""
        contextual = min(round(k * float(self.contextual_ratio)), k - 1)
        if with_cls:
            return k - contextual - 1, contextual + 1
        return k - contextual, contextual

    @torch.no_grad()
    def reduce(self, tokens: Tensor, k: int | None = None, ctx: Context | None = None) -> Reduction:
        """Keep dominant tokens and merge the rest.

        Parameters
        ----------
        tokens : Tensor
            ``(n, d)`` or ``(b, n, d)`` hidden states of the patches at the selected layer.
        k : int, optional
            Tokens per image after the reduction; default: resolved from ``self.budget``.
        ctx : Context
            ``cls_attention`` ``(H, n)`` / ``(b, H, n)``, ``vision_keys`` ``(n, hd)`` /
            ``(b, n, hd)``, optionally ``cls_state`` ``(d,)`` / ``(b, d)``.

        Returns
        -------
        Reduction
            ``kept`` ``(m,)`` / ``(b, m)`` and ``merged`` ``(c, d)`` / ``(b, c, d)`` in the
            tokens' dtype; ``m + c = k``. ``k >= n`` keeps every token and merges none.
        """
        self.validate()
        ctx = ctx or Context()
        if not isinstance(tokens, Tensor) or tokens.dim() not in (2, 3):
            raise ValueError(
                f"{self.name}: tokens must be a tensor (n, d) or (b, n, d), got "
                f"{getattr(tokens, 'shape', type(tokens))}."
            )
        if not tokens.is_floating_point() or 0 in tokens.shape:
            raise ValueError(
                f"{self.name}: tokens must be non-empty floating point, got {tokens.dtype} "
                f"{tuple(tokens.shape)}."
            )
        single = tokens.dim() == 2
        batch = tokens.unsqueeze(0) if single else tokens
        if single:
            ctx = with_batch_dim(ctx)
        b, n, d = batch.shape
        check_finite(batch, "tokens", self.name)
        k = self.num_keep(n) if k is None else self.num_keep(n, k)
        self._check_context(ctx, b, d)
        hidden = batch.float()
        attention = head_attention(ctx.cls_attention, b, n, self.name)
        keys = per_item(ctx.vision_keys, b, (3,), "vision_keys", self.name)
        if keys.shape[1] != n:
            raise ValueError(
                f"{self.name}: vision_keys has {keys.shape[1]} tokens per image, the tokens "
                f"have {n}."
            )
        cls = None
        if ctx.cls_state is not None:
            cls = per_item(ctx.cls_state, b, (2,), "cls_state", self.name)
            if cls.shape[-1] != d:
                raise ValueError(f"{self.name}: cls_state has width {cls.shape[-1]}, not {d}.")
        if k >= n:
            kept = torch.arange(n, device=tokens.device).expand(b, n).clone()
            merged = batch.new_zeros(b, 0, d)
        else:
            kept, merged = self._reduce(hidden, attention, keys, cls, k)
            merged = merged.to(batch.dtype)
        return Reduction(kept[0], merged[0]) if single else Reduction(kept, merged)

    def _reduce(self, hidden, attention, keys, cls, k) -> tuple[Tensor, Tensor]:
        b, _, d = hidden.shape
        device = hidden.device
        patches, new = self.split(k, cls is not None)
        contextual = new - (cls is not None)
        # The published layout: a CLS slot at 0 (a zero stand-in when no CLS state is given,
        # dropped again below), whose attention column is never read and whose key is unused.
        head = cls if cls is not None else hidden.new_zeros(b, d)
        full_hidden = torch.cat([head.unsqueeze(1), hidden], dim=1)
        full_attention = torch.cat([attention.new_zeros(b, attention.shape[1], 1), attention], -1)
        full_keys = torch.cat([keys.new_zeros(b, 1, keys.shape[-1]), keys.to(device)], dim=1)
        if contextual == 0:
            order = attention.sum(dim=1).argsort(dim=-1, descending=True, stable=True)
            kept = order[:, :patches].sort(dim=-1).values
            merged = hidden.new_zeros(b, 0, d)
        else:
            indices, merged = visionzip(
                full_attention.to(device), full_hidden, full_keys, patches + 1, contextual
            )
            kept = indices[:, 1:] - 1
        if cls is not None:
            merged = torch.cat([cls.unsqueeze(1), merged], dim=1)
        return kept, merged
