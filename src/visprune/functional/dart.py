"""DART's pure core: pivot tokens by key norm, then the tokens least duplicated with them.

Wen et al., "Stop Looking for Important Tokens in Multimodal Language Models: Duplication
Matters More" (DART, arXiv 2502.11494).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .rows import top_scores, unit_rows
from .text import padded_rows


def dart(
    hidden_states: Tensor,
    keys: Tensor,
    image_start: int,
    image_length: int,
    k: int,
    image_pivots: int = 4,
    text_pivots: int = 4,
) -> Tensor:
    """Absolute positions of the image tokens DART keeps from decoder layer ``K`` on.

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
    image_start : int
        Index of the first image token in the sequence (the same for every row).
    image_length : int
        Number of image tokens from ``image_start`` on.
    k : int
        DART's ``max_num_trunction``.
    image_pivots : int
        Pivots taken among the image tokens.
    text_pivots : int
        Pivots taken among the text tokens.

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


def dart_exact(
    tokens: Tensor,
    k: int,
    scores: Tensor,
    texts: list[Tensor],
    text_scores: Tensor | None,
    image_pivots: int = 4,
    text_pivots: int = 4,
) -> Tensor:
    """DART's selection on the visual tokens alone, keeping exactly ``k`` of them.

    The ``image_pivots`` visual tokens and the ``text_pivots`` prompt tokens with the largest
    key norm are pivots; the image pivots are kept, and each pivot in turn claims its share of
    the other visual tokens least cosine-similar to it (:func:`claim_least_duplicated`). The
    ``k - p`` claimed tokens are shared out as evenly as the pivots allow (the first
    ``(k - p) mod P`` pivots claim one more), where :func:`dart` keeps the published
    ``p + P * (k // P)``. Pivots claim in order of their key norm, image pivots first; ties go to
    the lowest index.

    Parameters
    ----------
    tokens : Tensor
        ``(b, n, d)`` float32 hidden states of the visual tokens after the final norm.
    k : int
        Tokens to keep, ``1 <= k < n``.
    scores : Tensor
        ``(b, n)`` the visual tokens' L1 key norms.
    texts : list of Tensor
        ``b`` prompt hidden states ``(m_i, d)`` (the tokens after the image; may be empty).
    text_scores : Tensor, optional
        ``(b, max m_i)`` their key norms, ``-inf`` past each item's text; ``None`` without text.
    image_pivots : int
        Pivots taken among the image tokens (4, as published).
    text_pivots : int
        Pivots taken among the text tokens (4, as published); an item with fewer prompt tokens
        has fewer text pivots.

    Returns
    -------
    Tensor
        ``(b, k)`` int64 indices, ascending.
    """
    b, n, d = tokens.shape
    device = tokens.device
    lengths = [len(text) for text in texts]
    p_img = min(image_pivots, k)
    p_txt = min(text_pivots, max(lengths))
    image = top_scores(scores, p_img)  # (b, p_img)
    unit = unit_rows(tokens)
    pivots = unit.gather(1, image.unsqueeze(-1).expand(b, p_img, d))
    if p_txt:
        text = padded_rows(texts, device)  # (b, m, d), zero rows past each item's text
        # Padding sorts last: an item with fewer text tokens has fewer text pivots.
        chosen = top_scores(text_scores, p_txt)
        text_states = unit_rows(text.gather(1, chosen.unsqueeze(-1).expand(b, p_txt, d)))
        pivots = torch.cat([pivots, text_states], dim=1)
    # Each item's shares, from the text lengths the host already knows: k - p_img tokens
    # spread over its pivots, the first (k - p_img) mod P_i pivots claiming one more.
    shares, slots = [], pivots.shape[1]
    for length in lengths:
        count = p_img + min(text_pivots, length)
        rest, extra = divmod(k - p_img, count)
        shares.append([rest + (slot < extra) if slot < count else 0 for slot in range(slots)])
    pool = torch.ones(b, n, dtype=torch.bool, device=device).scatter_(1, image, False)
    shares = torch.tensor(shares, device=device)
    claimed = claim_least_duplicated(unit, pool, pivots, shares)
    return true_positions(claimed.scatter_(1, image, True), k)


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
