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
    claims a token first, so it is kept for parity. It is deterministic.
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
    rows = []
    for row in range(b):
        image = norms[row, image_start:end].topk(image_pivots).indices + image_start
        text = norms[row, end:].topk(text_pivots).indices + end
        pool = torch.ones(s, dtype=torch.bool, device=hidden_states.device)
        pool[:image_start] = False
        pool[end:] = False
        pool[image] = False
        pivots = list(set(image.tolist() + text.tolist()))
        kept = [image, *least_duplicated(unit[row], pool, pivots, [per_pivot] * len(pivots))]
        rows.append(torch.cat(kept).sort().values)
    return torch.stack(rows)


def least_duplicated(
    unit: Tensor, pool: Tensor, pivots: list[int], shares: list[int], stable: bool = False
) -> list[Tensor]:
    """DART's greedy step: each pivot in turn claims the pool tokens least similar to it.

    Parameters
    ----------
    unit : Tensor
        ``(S, D)`` unit-norm hidden states.
    pool : Tensor
        ``(S,)`` bool, the tokens that may still be kept; changed in place.
    pivots : list of int
        Pivot rows of ``unit``, in the order they claim.
    shares : list of int
        Tokens each pivot claims (fewer when the pool runs out).
    stable : bool
        Break equal similarities towards the lowest index (``topk``'s order otherwise, as
        published).

    Returns
    -------
    list of Tensor
        The claimed rows, one int64 tensor per pivot that claimed any.
    """
    claimed = []
    for pivot, share in zip(pivots, shares, strict=True):
        valid = pool.nonzero().squeeze(-1)
        take = min(share, len(valid))
        if take == 0:
            break
        similarity = unit[valid] @ unit[pivot]
        if stable:
            order = torch.sort(similarity, stable=True).indices[:take]
        else:
            order = (-similarity).topk(take).indices
        chosen = valid[order]
        pool[chosen] = False
        claimed.append(chosen)
    return claimed
