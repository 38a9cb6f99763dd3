"""DART's pure core: pivot tokens by key norm, then the tokens least duplicated with them.

Wen et al., "Stop Looking for Important Tokens in Multimodal Language Models: Duplication
Matters More" (DART, arXiv 2502.11494).
"""

from __future__ import annotations

import torch
from torch import Tensor


def dart(
    hidden_states: Tensor,
    keys: Tensor,
    image_start: int,
    image_length: int,
    k: int,
    image_pivots: int = 4,
    text_pivots: int = 4,
) -> Tensor:
    """Absolute positions of the image tokens DART keeps after layer ``K``.

    Pivots: the ``image_pivots`` image tokens and the ``text_pivots`` tokens after the image with
    the largest L1 key norm. Per pivot, ``k // (image_pivots + text_pivots)`` of the remaining
    image tokens least cosine-similar to it (on the hidden states) are kept and leave the pool.
    The image pivots are kept too: ``image_pivots + (image_pivots + text_pivots) * (k // ...)``
    tokens in all (132 for the defaults and ``k = 128``, as published).

    Parameters
    ----------
    hidden_states : Tensor
        ``(B, S, D)`` the final-norm of layer ``K - 1``'s output hidden states.
    keys : Tensor
        ``(B, H, S, hd)`` that layer's keys after RoPE (and ``repeat_kv``).
    image_start, image_length : int
        Where the image tokens sit in the sequence (the same for every row).
    k : int
        DART's ``max_num_trunction``.
    image_pivots, text_pivots : int
        Pivot counts.

    Returns
    -------
    Tensor
        ``(B, m)`` int64 absolute positions, ascending.

    Notes
    -----
    Pivots are visited in CPython ``set`` iteration order of their absolute positions (inserted
    image pivots first, each by descending norm), as published: the order decides which pivot
    claims a token first, so it is kept for parity. It is deterministic, and the host reads the
    pivot positions once per call (not per pivot or per row); the claiming runs on the device
    for the whole batch (:func:`claim_least_duplicated`). Deliberate difference: tokens of equal
    similarity to a pivot are claimed lowest index first (the published ``topk`` leaves their
    order to the platform).
    """
    b, s, _ = hidden_states.shape
    end = image_start + image_length
    if image_start < 0 or image_length < 1 or end > s:
        raise ValueError(
            f"dart: image tokens [{image_start}, {end}) do not fit a sequence of {s} tokens."
        )
    if end + text_pivots > s:
        raise ValueError(
            f"dart: {text_pivots} text pivots need {text_pivots} tokens after the image."
        )
    per_pivot = k // (image_pivots + text_pivots)
    flat = keys.permute(0, 2, 1, 3).reshape(b, s, -1)
    norms = flat.norm(p=1, dim=-1)  # (B, S)
    unit = hidden_states / hidden_states.norm(dim=-1, keepdim=True)
    image = norms[:, image_start:end].topk(image_pivots).indices  # (B, p_img), image positions
    text = norms[:, end:].topk(text_pivots).indices + end  # (B, p_txt), absolute
    positions = torch.cat([image + image_start, text], dim=-1)
    # The published visiting order is CPython set order, a host-side decision: one host read
    # for the whole batch, never one per pivot or per row.
    order = torch.tensor(
        [[row.index(p) for p in set(row)] for row in positions.tolist()], device=image.device
    )
    pivots = unit.gather(1, positions.gather(1, order).unsqueeze(-1).expand(-1, -1, unit.shape[-1]))
    pool = torch.ones(b, image_length, dtype=torch.bool, device=unit.device)
    pool.scatter_(1, image, False)
    shares = torch.full_like(order, per_pivot)
    claimed = claim_least_duplicated(unit[:, image_start:end], pool, pivots, shares)
    kept = claimed.scatter(1, image, True)
    count = min(image_length, image_pivots + positions.shape[-1] * per_pivot)
    return true_positions(kept, count) + image_start


def claim_least_duplicated(unit: Tensor, pool: Tensor, pivots: Tensor, shares: Tensor) -> Tensor:
    """DART's greedy step: each pivot in turn claims the pool tokens least similar to it.

    Batched over items, with every decision on the device: pivot ``j`` of item ``i`` claims the
    ``min(shares[i, j], |pool|)`` pool tokens of lowest cosine similarity (ties: the lowest
    index), which leave the pool before pivot ``j + 1`` claims.

    Parameters
    ----------
    unit : Tensor
        ``(B, N, D)`` unit-norm hidden states of the candidate tokens.
    pool : Tensor
        ``(B, N)`` bool, the candidates that may be claimed; changed in place.
    pivots : Tensor
        ``(B, P)`` unit-norm pivot states ``(B, P, D)``, in the order they claim.
    shares : Tensor
        ``(B, P)`` int64 tokens each pivot claims (0 for a pivot an item does not have).

    Returns
    -------
    Tensor
        ``(B, N)`` bool, the claimed tokens.
    """
    n = unit.shape[1]
    similarity = unit @ pivots.mT  # (B, N, P)
    ranks = torch.arange(n, device=unit.device)
    claimed = torch.zeros_like(pool)
    for slot in range(pivots.shape[1]):
        # Tokens outside the pool sort last; a stable sort puts equal similarities in index order.
        key = similarity[:, :, slot].masked_fill(~pool, torch.inf)
        order = key.sort(dim=-1, stable=True).indices
        take = torch.minimum(shares[:, slot : slot + 1], pool.sum(dim=-1, keepdim=True))
        claim = torch.zeros_like(pool).scatter_(1, order, ranks < take)
        claimed |= claim
        pool &= ~claim
    return claimed


def true_positions(mask: Tensor, count: int) -> Tensor:
    """The positions of the ``count`` true entries of each row, ascending: ``(B, N) -> (B, count)``.

    Each row must hold ``count`` true entries (no host read checks it).
    """
    return (~mask).to(torch.uint8).sort(dim=-1, stable=True).indices[:, :count]
