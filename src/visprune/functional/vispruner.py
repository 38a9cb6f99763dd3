"""VisPruner's pure core: important tokens by CLS attention, then diverse ones by removing
similar pairs.

Zhang et al., "Beyond Text-Visual Attention: Exploiting Visual Cues for Effective Token Pruning
in VLMs" (VisPruner, ICCV 2025, arXiv 2412.01818).
"""

from __future__ import annotations

import torch
from torch import Tensor

#: Nearest neighbours kept per token for the rounds' max-similarity lookups.
NEAREST = 16


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
    Deliberate difference: the published loop keeps ``R // 2 - r`` of the ``a`` tokens but
    indexes ``a`` (``ceil(R / 2)`` tokens) with an index of that size, so for odd ``R`` it raises
    unless exactly one ``a`` would stay (then none stays), it raises on small budgets (``N = 576,
    k = 8``), and it can end with fewer than ``k`` tokens. Here ``R // 2 - r`` of the ``a``
    tokens stay too (the lowest-scoring ones), but never so few that fewer than ``k`` tokens
    remain: every budget returns ``k`` distinct tokens, and where the published code runs and
    returns ``k`` tokens the picks are the same. The cosines of every round are gathered from
    one Gram of all tokens (the published code multiplies each round's ``a`` and ``b`` again,
    about five Grams in all for 576 tokens): the same values up to float32 rounding.
    """
    n = image_features.shape[1]
    if not 1 <= k <= n:
        raise ValueError(f"vispruner: k must be in [1, {n}], got {k}.")
    if not 0.0 <= important_ratio <= 1.0:
        raise ValueError(f"vispruner: important_ratio must be in [0, 1], got {important_ratio}.")
    important = int(k * important_ratio)
    diverse = k - important
    # Stable sorts: equal scores keep the lower index first (the spec's tie rule).
    order = cls_attention.mean(dim=1).argsort(dim=-1, descending=True, stable=True)
    kept, residual = order[:, :important], order[:, important:]
    norms = image_features.norm(dim=-1, keepdim=True)
    features = image_features / norms.clamp_min(torch.finfo(norms.dtype).tiny)
    # One Gram of all tokens; each round gathers its a x b block instead of multiplying again.
    b = image_features.shape[0]
    gram = nearest = None
    if diverse > 0 and residual.shape[1] > diverse:
        gram = features @ features.mT  # (B, N, N)
        # Each token's most similar tokens, most similar first: a's best b is usually among
        # them, so a round reads a few entries per a instead of a whole Gram row.
        nearest = gram.topk(min(NEAREST, n), dim=-1).indices  # (B, N, L)
        gram = gram.reshape(b * n, n)
    batch = torch.arange(b, device=image_features.device)[:, None]
    while diverse > 0:
        drop = min(8, residual.shape[1] - diverse)
        if drop <= 0:
            break
        a, rest = residual[:, 0::2], residual[:, 1::2]
        scores = _best_in(gram, nearest, a, rest, batch)  # (B, |a|)
        # As published, R // 2 - drop of the a's stay (one fewer than |a| - drop for odd R),
        # but never so few that fewer than k tokens remain.
        stay = max(residual.shape[1] // 2 - drop, diverse - rest.shape[1], 0)
        ranked = scores.argsort(dim=-1, descending=True, stable=True)[:, drop : drop + stay]
        residual = torch.cat([a.gather(1, ranked), rest], dim=-1)
    return torch.cat([kept, residual[:, :diverse]], dim=-1).sort(dim=-1).values


def _best_in(gram: Tensor, nearest: Tensor, a: Tensor, rest: Tensor, batch: Tensor) -> Tensor:
    """``max_{j in rest} S[i, j]`` for every ``i`` in ``a``: ``(B, |a|)``.

    The first of ``i``'s nearest neighbours that lies in ``rest`` has the largest similarity
    of all of ``rest`` (every other token is at most as similar as the last neighbour); rows
    with no neighbour in ``rest`` read their whole Gram row with the columns outside ``rest``
    at -inf. Exact: the same Gram entries, the same maxima.
    """
    b, n = gram.shape[0] // gram.shape[1], gram.shape[1]
    in_rest = torch.zeros(b, n, dtype=torch.bool, device=gram.device)
    in_rest[batch, rest] = True
    rows = (a + batch * n).reshape(-1)  # rows of the flattened (B * N, N) Gram
    candidates = nearest.reshape(b * n, -1).index_select(0, rows)  # (B * |a|, L)
    owner = batch.expand_as(a).reshape(-1, 1)
    hits = in_rest[owner, candidates]
    first = hits.to(torch.uint8).argmax(dim=-1, keepdim=True)  # the first True (0 when none)
    best = candidates.gather(1, first).squeeze(-1)
    scores = gram[rows, best]
    missed = ~hits.any(dim=-1)
    if bool(missed.any()):
        lost = rows[missed]
        outside = torch.zeros(b, n, dtype=gram.dtype, device=gram.device)
        outside.masked_fill_(~in_rest, -torch.inf)
        full = gram.index_select(0, lost).add_(outside[owner[missed, 0]])
        scores[missed] = full.amax(dim=-1)
    return scores.view(a.shape)
