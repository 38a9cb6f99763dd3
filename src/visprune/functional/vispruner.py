"""VisPruner's pure core: important tokens by CLS attention, then diverse ones by removing
similar pairs.

Zhang et al., "Beyond Text-Visual Attention: Exploiting Visual Cues for Effective Token Pruning
in VLMs" (VisPruner, ICCV 2025, arXiv 2412.01818).
"""

from __future__ import annotations

import torch
from torch import Tensor


def vispruner(
    image_features: Tensor, cls_attention: Tensor, k: int, important_ratio: float = 0.5
) -> Tensor:
    """``int(k * important_ratio)`` important tokens, then ``k - that`` diverse ones.

    Tokens are ranked by the head-mean CLS attention. The top ``k_imp`` are important; the rest
    (in that order) are the residual. While the residual holds more than ``k_div`` tokens: split
    it alternately into ``a = res[0::2]`` and ``b = res[1::2]``, score each ``a`` by its largest
    cosine similarity to any ``b``, drop the ``min(8, R - k_div)`` highest-scoring ``a``, and
    continue with ``[kept a in descending score order] + b``.

    Parameters
    ----------
    image_features : Tensor
        ``(B, N, C)`` vision features before the projector (CLS removed).
    cls_attention : Tensor
        ``(B, H, N)`` the CLS query's attention to the patches (CLS column removed).
    k : int
        Tokens to keep, ``1 <= k <= N``.
    important_ratio : float
        Share of ``k`` taken by attention alone, in [0, 1].

    Returns
    -------
    Tensor
        ``(B, k)`` int64 indices, ascending.

    Notes
    -----
    Deliberate difference: the published loop means to keep ``ceil(R / 2) - r`` of the ``a``
    tokens but indexes them with an index expanded to ``R // 2 - r``, so it raises for odd ``R``
    with ``R // 2 - r >= 2`` and for ``R // 2 - r <= -2`` (small budgets, e.g. ``N = 576,
    k = 8``), keeps no ``a`` when ``R // 2 - r`` is 0 or -1, and can then end with fewer than
    ``k`` tokens. Here every round keeps what the published round keeps wherever that round
    runs and leaves at least ``k`` tokens in reach; otherwise it keeps the intended
    ``ceil(R / 2) - r`` (never so few that fewer than ``k`` tokens remain). Every budget returns
    ``k`` distinct tokens, and wherever the published code returns ``k`` tokens the picks are
    the same. Each round multiplies its own ``a`` and ``b`` as published (the same float
    rounding, which decides near-ties); equal scores keep the lower index first (the published
    unstable sort orders ties by platform). That costs about ``Σ_rounds R² d / 4`` multiply-adds,
    some five Grams ``X Xᵀ`` for ``N = 576, k = 64``: one Gram computed up front and read by
    every round would cost one, but a GEMM's rounding follows its shape, and the parity vectors
    hold a float32 near-tie (``N = 256, C = 1024``) that only each round's own product
    reproduces, so the rounds keep their own products. VisPruner is therefore outside the
    "within 1.5x of one Gram" speed of the other pre-LLM selections
    (``benchmarks/results/selection.md``): no cheaper product is known to round every entry as
    each round's own product does for every shape.
    """
    n = image_features.shape[1]
    if not 1 <= k <= n:
        raise ValueError(f"vispruner: k must be in [1, {n}], got {k}.")
    if not 0.0 <= important_ratio <= 1.0:
        raise ValueError(f"vispruner: important_ratio must be in [0, 1], got {important_ratio}.")
    important = int(k * important_ratio)
    diverse = k - important
    # Stable sorts: equal scores keep the lower index first (the tie rule of docs/methods/index.md).
    order = cls_attention.mean(dim=1).argsort(dim=-1, descending=True, stable=True)
    kept, residual = order[:, :important], order[:, important:]
    norms = image_features.norm(dim=-1, keepdim=True)
    features = image_features / norms.clamp_min(torch.finfo(norms.dtype).tiny)
    # Rows of the flattened batch: copying whole rows (index_select) moves the same values as
    # an element-wise gather at a small fraction of its cost.
    batch, width = features.shape[0], features.shape[-1]
    rows = features.reshape(batch * n, width)
    offsets = torch.arange(batch, device=features.device).unsqueeze(-1) * n
    while diverse > 0:
        size = residual.shape[1]
        drop = min(8, size - diverse)
        if drop <= 0:
            break
        tokens = rows.index_select(0, (residual + offsets).reshape(-1)).view(batch, size, width)
        a, b = tokens[:, 0::2], tokens[:, 1::2]
        scores = (a @ b.mT).max(dim=-1).values  # (B, ceil(R / 2))
        stay = _published_stay(size, drop)
        if stay is None or stay + size // 2 < diverse:
            stay = max((size + 1) // 2 - drop, diverse - size // 2, 0)
        ranked = scores.argsort(dim=-1, descending=True, stable=True)[:, drop : drop + stay]
        residual = torch.cat([residual[:, 0::2].gather(1, ranked), residual[:, 1::2]], dim=-1)
    return torch.cat([kept, residual[:, :diverse]], dim=-1).sort(dim=-1).values


def _published_stay(size: int, drop: int) -> int | None:
    """How many ``a`` tokens the published round keeps, or None where it raises.

    It indexes the ``ceil(R / 2) - r`` best-to-keep ``a`` tokens with a batch index expanded to
    ``R // 2 - r`` (``expand(-1)`` keeps size 1), and the two broadcast.
    """
    wanted = max((size + 1) // 2 - drop, 0)  # columns of the published sort's tail
    expanded = size // 2 - drop
    if expanded == -1:
        expanded = 1
    elif expanded < 0:
        return None
    if expanded == wanted or expanded == 1:
        return wanted
    if wanted == 1:
        return expanded
    return None
