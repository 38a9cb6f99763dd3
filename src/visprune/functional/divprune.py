"""DivPrune's pure core: max-min diversity on cosine distance.

Alvar et al., "DivPrune: Diversity-based Visual Token Pruning for Large Multimodal Models",
CVPR 2025, https://arxiv.org/abs/2503.02175
"""

from __future__ import annotations

import torch
from torch import Tensor

from .checks import check_tokens_and_k
from .rows import batch_rows, unit_rows


def divprune(tokens: Tensor, k: int, *, sort: bool = True) -> Tensor:
    """Max-min diversity: ``S_{t+1} = S_t ∪ {argmax_{j ∉ S_t} min_{s ∈ S_t} (1 - x̂_s · x̂_j)}``.

    The first pick is the token farthest from its nearest neighbour.

    Parameters
    ----------
    tokens : Tensor
        ``(b, n, d)`` float32 finite tokens (the LLM input embeddings, after the projector).
    k : int
        Picks per item, ``1 <= k < n``.
    sort : bool
        Return the picks ascending (default) instead of in greedy order.

    Returns
    -------
    Tensor
        ``(b, k)`` int64 distinct indices.

    Notes
    -----
    Unlike the published code, already selected tokens are excluded from later picks, so images
    with exactly duplicated tokens still keep ``k`` distinct tokens.
    """
    check_tokens_and_k("divprune", tokens, k)
    distance = cosine_distance(tokens)
    # Distance from each token to its nearest other token: the 2nd smallest of its column
    # (the smallest is its own zero distance). D is symmetric, and a top-2 along contiguous
    # rows is an order of magnitude faster than a k-th value down the columns.
    isolation = distance.topk(2, dim=-1, largest=False).values[..., 1]
    picks = max_min_greedy(distance, isolation.argmax(dim=-1), k)
    return picks.sort(dim=-1).values if sort else picks


def cosine_distance(tokens: Tensor, *, normalised: bool = False) -> Tensor:
    """Pairwise cosine distance ``D = 1 - X̂ X̂ᵀ``: ``(b, n, d) -> (b, n, n)``.

    Pass ``normalised=True`` when the rows already have unit norm.
    """
    unit = tokens if normalised else unit_rows(tokens)
    similarity = unit @ unit.mT
    return similarity.neg_().add_(1.0)


def max_min_greedy(distance: Tensor, first: Tensor, k: int, bonus: Tensor | None = None) -> Tensor:
    """Greedy max-min selection, vectorised over the batch.

    Each step picks ``argmax_j (min_{s in S} D[s, j] + bonus_j)`` over unselected tokens, keeping
    the running minimum ``m <- min(m, D[s_t, :])`` (O(kn) instead of O(k²n)).

    Parameters
    ----------
    distance : Tensor
        ``(b, n, n)`` distances. Entries of tokens that may never be picked must be handled by the
        caller through ``bonus = -inf``.
    first : Tensor
        ``(b,)`` int64 first pick per item.
    k : int
        Picks per item, ``k <= n``.
    bonus : Tensor, optional
        ``(b, n)`` additive score (ReDiPrune's ``alpha * rel``; ``-inf`` excludes a token).

    Returns
    -------
    Tensor
        ``(b, k)`` int64 picks in pick order.
    """
    b = distance.shape[0]
    rows = torch.arange(b, device=distance.device)
    excluded = torch.full((), -torch.inf, dtype=distance.dtype, device=distance.device)
    picks = [first]
    nearest = None
    for _ in range(k - 1):
        row = batch_rows(distance, picks[-1])
        nearest = row.clone() if nearest is None else torch.minimum(nearest, row, out=nearest)
        nearest.index_put_((rows, picks[-1]), excluded)
        score = nearest if bonus is None else nearest + bonus
        picks.append(score.argmax(dim=-1))
    return torch.stack(picks, dim=-1)
