"""CDPruner's pure core: a conditional DPP over the projected tokens, relevance-weighted.

Zhang et al., "Beyond Attention or Similarity: Maximizing Conditional Diversity for Token
Pruning in MLLMs" (CDPruner, arXiv 2506.10967).
"""

from __future__ import annotations

import torch
from torch import Tensor


def cdpruner(image_features: Tensor, image_embeds: Tensor, text_embeds: Tensor, k: int) -> Tensor:
    """Greedy MAP of the conditional DPP kernel ``L = diag(r) S diag(r)``.

    ``S_ij = cos(f_i, f_j)`` on the projected tokens (float32, as published);
    ``r_i = -mean_m cos(e_i, t_m)`` (the published sign), min-max rescaled over the whole batch
    as published: ``r = (r - min + 1e-6) / (max - min)``. Then the fast greedy of Chen et al.
    (2018): pick ``argmax d²``, update the Cholesky rows, ``k`` times.

    Parameters
    ----------
    image_features : Tensor
        ``(B, N, D)`` projected visual tokens (the LLM input embeddings).
    image_embeds : Tensor
        ``(B, N, C)`` CLIP image embeddings of the same patches (``visual_projection`` output).
    text_embeds : Tensor
        ``(M, C)`` CLIP text embeddings of the instruction, shared by the batch, or ``(B, M, C)``.
    k : int
        Tokens to keep, ``1 <= k <= N``.

    Returns
    -------
    Tensor
        ``(B, k)`` int64 indices, ascending.

    Notes
    -----
    The arithmetic follows the published code step by step (its Cholesky rows are float32 even
    for a float64 kernel), so its picks and greedy order are reproduced, exact ties included
    (``argmax``: the lowest index). Deliberate difference: once the kernel's rank is exhausted
    (``d² <= 0``) the remaining picks freeze the Cholesky update instead of taking the square
    root of a non-positive number (which in the published code yields NaN and can select a
    token twice); a picked token is never picked again.
    """
    dtype = torch.float64 if image_features.dtype == torch.float64 else torch.float32
    features = image_features.to(dtype)
    features = features / features.norm(dim=-1, keepdim=True)
    features = features.float()
    similarity = features @ features.mT  # (B, N, N), float32 as published
    embeds = image_embeds.to(dtype)
    embeds = embeds / embeds.norm(dim=-1, keepdim=True)
    text = text_embeds.to(dtype)
    text = text / text.norm(dim=-1, keepdim=True)
    relevance = -(embeds @ text.mT).mean(dim=-1)  # (B, N)
    relevance = (relevance - relevance.min() + 1e-6) / (relevance.max() - relevance.min())
    return conditional_dpp(similarity, relevance, k).sort(dim=-1).values


def conditional_dpp(similarity: Tensor, relevance: Tensor, k: int) -> Tensor:
    """Greedy MAP of ``L = diag(r) S diag(r)`` (the fast greedy of Chen et al., 2018).

    Parameters
    ----------
    similarity : Tensor
        ``(B, N, N)`` the cosine similarity of the tokens.
    relevance : Tensor
        ``(B, N)`` non-negative relevance weights ``r``.
    k : int
        Picks, ``1 <= k <= N``.

    Returns
    -------
    Tensor
        ``(B, k)`` int64 picks in greedy order, distinct (ties: the lowest index).
    """
    b, n, _ = similarity.shape
    kernel = relevance.unsqueeze(-1) * similarity * relevance.unsqueeze(-2)
    kernel = kernel.to(relevance.dtype)
    residual = kernel.diagonal(dim1=-2, dim2=-1).clone()
    # The published operations in their order (einsum, divide by sqrt, subtract the square)
    # and dtypes (the Cholesky rows are stored in float32 even for a float64 kernel): an exact
    # tie of d² there is an exact tie here, and argmax takes the lowest index of both.
    chol = kernel.new_zeros(k, b, n, dtype=torch.float32)
    batch = torch.arange(b, device=kernel.device)
    picks = torch.empty(b, k, dtype=torch.long, device=kernel.device)
    for step in range(k):
        pick = residual.argmax(dim=-1)
        picks[:, step] = pick
        d2 = residual[batch, pick]
        done = chol[:step]
        e = kernel[batch, pick] - torch.einsum("tb,tbn->bn", done[:, batch, pick], done)
        # Once the rank is exhausted (d² <= 0) the item freezes instead of taking a NaN root.
        e = torch.where((d2 > 0).unsqueeze(-1), e / d2.clamp_min(0).sqrt().unsqueeze(-1), 0.0)
        chol[step] = e
        residual -= e.square()
        residual[batch, pick] = -torch.inf
    return picks
