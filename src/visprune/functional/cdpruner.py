"""CDPruner's pure core: a conditional DPP over the projected tokens, relevance-weighted.

Zhang et al., "Beyond Attention or Similarity: Maximizing Conditional Diversity for Token
Pruning in MLLMs" (CDPruner, arXiv 2506.10967).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .text import unit_means


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
    return conditional_dpp(similarity, relevance, k, in_place=True).sort(dim=-1).values


def conditional_dpp(
    similarity: Tensor, relevance: Tensor, k: int, *, in_place: bool = False
) -> Tensor:
    """Greedy MAP of ``L = diag(r) S diag(r)`` (the fast greedy of Chen et al., 2018).

    Parameters
    ----------
    similarity : Tensor
        ``(B, N, N)`` the cosine similarity of the tokens.
    relevance : Tensor
        ``(B, N)`` non-negative relevance weights ``r``.
    k : int
        Picks, ``1 <= k <= N``.
    in_place : bool, optional
        Overwrite ``similarity`` with the kernel where both have the same dtype, for a caller
        that owns it: two ``N x N`` products without allocating (the same values).

    Returns
    -------
    Tensor
        ``(B, k)`` int64 picks in greedy order, distinct (ties: the lowest index).
    """
    b, n, _ = similarity.shape
    if in_place and similarity.dtype == relevance.dtype:
        # (r_i S_ij) r_j element by element, as the out-of-place products round it.
        kernel = similarity.mul_(relevance.unsqueeze(-1)).mul_(relevance.unsqueeze(-2))
    else:
        kernel = relevance.unsqueeze(-1) * similarity * relevance.unsqueeze(-2)
        kernel = kernel.to(relevance.dtype)
    # The published operations in their order (C[:, j]ᵀ C, subtract from the kernel row, divide
    # by sqrt, subtract the square) and dtypes (the Cholesky rows are stored in float32 even for
    # a float64 kernel): an exact tie of d² there is an exact tie here, and argmax takes the
    # lowest index of both. Each step's d² is kept, so the step that exhausts the rank can be
    # told apart afterwards without a host read (`_frozen_picks`).
    residual = kernel.diagonal(dim1=-2, dim2=-1).reshape(b, 1, n)
    batch = torch.arange(b, device=kernel.device).view(b, 1)
    zero = torch.zeros_like(batch)
    excluded = torch.full((), -torch.inf, dtype=kernel.dtype, device=kernel.device)
    # The float32 Cholesky rows, written in place one per step: growing them by concatenation
    # would copy every earlier row at every step (k² n in all, as much as the products read).
    # Each row's slot is contiguous ((k, b, 1, n) storage), so the division writes it with out=
    # and the loop still traces whole under torch.compile.
    rows = kernel.new_empty(max(k - 1, 1), b, 1, n, dtype=torch.float32)
    slots = rows.unbind(0)
    done = rows.view(-1, b, n).permute(1, 0, 2)  # (b, k - 1, n): the rows so far lead it
    picks, pivots, history = [], [], [residual]
    for step in range(k):
        d2, pick = residual.max(dim=-1)  # (b, 1) each
        picks.append(pick)
        pivots.append(d2)
        if step == k - 1:
            break
        e = kernel[batch, pick]  # (b, 1, n)
        if step:
            so_far = done[:, :step]
            e = e - torch.bmm(so_far[batch, :, pick], so_far)
        # Past an exhausted rank (d² <= 0) the root is NaN or zero: the row is garbage there,
        # and _frozen_picks replaces every later pick of that item.
        root = d2.sqrt().view(b, 1, 1)
        if e.dtype == torch.float32:
            e = torch.div(e, root, out=slots[step])
        else:
            e = e / root
            slots[step].copy_(e)
        residual = residual - e.square()
        residual.index_put_((batch, zero, pick), excluded)
        history.append(residual)
    return _frozen_picks(torch.cat(picks, -1), torch.cat(pivots, -1), torch.cat(history, 1))


def instruction_relevance(
    embeds: Tensor, texts: list[Tensor], norms: Tensor | None = None
) -> Tensor:
    """CDPruner's relevance weights per image, min-max rescaled per image: ``(b, n)`` in (0, 1].

    ``r_i = -mean_m cos(e_i, t_m)`` (the published sign), then
    ``r = (r - min + 1e-6) / (max - min)`` over each image's own tokens (the published code
    rescales over the whole batch tensor, the same for its batch of one).

    Parameters
    ----------
    embeds : Tensor
        ``(b, n, C)`` float32 embeddings ``e`` of the tokens (CLIP image embeddings, or the
        projected tokens themselves).
    texts : list of Tensor
        ``b`` instructions ``(M_i, C)`` in the same space (one tensor repeated is read once).
    norms : Tensor, optional
        ``(b, n)`` the L2 norms of ``embeds`` where the caller has them already (one pass over
        the ``n x C`` embeddings fewer).

    Returns
    -------
    Tensor
        ``(b, n)`` float32 ``r``; ``r = 1`` for an image without instruction text or whose
        relevance is constant (where the published code divides by zero).
    """
    # mean_m cos(e, t_m) = (e · t̄) / ‖e‖ with t̄ the mean of the unit text rows: one
    # matrix-vector product instead of an (n x m) similarity matrix.
    directions, present = unit_means(texts, embeds.device)
    norms = embeds.norm(dim=-1) if norms is None else norms
    norms = norms.clamp_min(torch.finfo(embeds.dtype).tiny)
    # Row by row (not a matrix-vector product, whose tail rows round differently), so
    # equal tokens get equal relevance.
    scores = -(embeds * directions.unsqueeze(1)).sum(dim=-1) / norms  # (b, n)
    low = scores.amin(dim=-1, keepdim=True)
    span = scores.amax(dim=-1, keepdim=True) - low
    scaled = (scores - low + 1e-6) / span.masked_fill(span <= 0, 1.0)
    flat = (span <= 0) | ~present.unsqueeze(-1)
    return torch.where(flat, torch.ones_like(scaled), scaled)


def _frozen_picks(picks: Tensor, pivots: Tensor, history: Tensor) -> Tensor:
    """The picks of a greedy that freezes once its rank is exhausted.

    From the first pick with ``d² <= 0`` on, the published rule (with the NaN guarded) leaves
    ``d²`` as it was, so the later picks are the remaining tokens in descending ``d²`` of that
    step (ties: the lowest index). They replace whatever the unguarded greedy picked there.

    Parameters
    ----------
    picks : Tensor
        ``(b, k)`` the greedy's picks, in order.
    pivots : Tensor
        ``(b, k)`` the ``d²`` of each pick when it was picked.
    history : Tensor
        ``(b, k, n)`` ``d²`` at the start of each step (picked tokens ``-inf``).

    Returns
    -------
    Tensor
        ``(b, k)`` int64 picks.
    """
    b, k, n = history.shape
    exhausted = pivots <= 0
    # The first exhausted step (0 where none: nothing is replaced then).
    first = exhausted.long().argmax(dim=-1, keepdim=True)
    frozen = history.gather(1, first.unsqueeze(-1).expand(b, 1, n)).squeeze(1)
    frozen = frozen.scatter(1, picks.gather(1, first), -torch.inf)
    order = frozen.sort(dim=-1, descending=True, stable=True).indices
    later = exhausted.cumsum(dim=-1) - exhausted.long() > 0
    steps = torch.arange(k, device=picks.device) - first - 1
    return torch.where(later, order.gather(1, steps.clamp_min(0)), picks)
