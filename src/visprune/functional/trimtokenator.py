"""TrimTokenator's pure core: mutual-information alignment, then representative-and-diverse
RepMax.

"TrimTokenator: Towards Adaptive Visual Token Pruning for Large Multimodal Models",
https://arxiv.org/abs/2509.00320 (no published code; this follows
``docs/methods/trimtokenator.md``).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .checks import check_tokens_and_k
from .divprune import cosine_distance
from .rows import batch_rows, unit_rows
from .text import mean_text_directions


def trimtokenator(
    tokens: Tensor, k: int, text: Tensor | list[Tensor] | None = None, *, sort: bool = True
) -> Tensor:
    """Drop tokens misaligned with the prompt, then keep a representative diverse subset.

    RepMax on the aligned set ``A`` (:func:`aligned_tokens`) with ``δ(i, j) = 1 - x̂_i · x̂_j``:
    first pick ``argmax_{i ∈ A} Σ_{j ∈ A} δ(i, j)``, then
    ``argmax_{i ∈ A \\ S} Σ_{s ∈ S} δ(i, s)``.

    Parameters
    ----------
    tokens : Tensor
        ``(b, n, d)`` float32 finite tokens (the LLM input embeddings, after the projector).
    k : int
        Picks per item, ``1 <= k < n``.
    text : Tensor or list of Tensor, optional
        The prompt after the image in the tokens' space: one ``(m, d)`` tensor shared by every
        item, or a list of ``b`` tensors ``(m_i, d)``. Without it (or for an empty tail) every
        token is aligned and only RepMax runs.
    sort : bool
        Return the picks ascending (default) instead of in greedy order.

    Returns
    -------
    Tensor
        ``(b, k)`` int64 distinct indices.
    """
    check_tokens_and_k("trimtokenator", tokens, k)
    b, n, _ = tokens.shape
    unit = unit_rows(tokens)
    directions = mean_text_directions(text, b)
    if directions is None:
        aligned = torch.ones(b, n, dtype=torch.bool, device=tokens.device)
    else:
        direction, present = (t.to(tokens.device) for t in directions)
        aligned = aligned_tokens(unit, direction, present, k)
    distance = cosine_distance(unit, normalised=True)
    # Σ_{j ∈ A} δ(i, j): how representative token i is of the whole aligned set.
    spread = (distance @ aligned.to(distance.dtype).unsqueeze(-1)).squeeze(-1)
    picks = repmax_greedy(distance, spread.masked_fill(~aligned, -torch.inf), ~aligned, k)
    return picks.sort(dim=-1).values if sort else picks


def aligned_tokens(unit: Tensor, direction: Tensor, present: Tensor, k: int) -> Tensor:
    """The tokens aligned with the prompt: ``a_i >= mean(a)``, or the top ``k`` if fewer.

    ``a_i = -(1/m) Σ_j ‖x̂_i - t̂_j‖² = 2 x̂_i · t̄ - 2`` (mutual information under a Gaussian
    model reduces to this L2 alignment).

    Parameters
    ----------
    unit : Tensor
        ``(b, n, d)`` unit-normalised tokens.
    direction : Tensor
        ``(b, d)`` mean ``t̄`` of the unit-normalised prompt rows.
    present : Tensor
        ``(b,)`` bool; items without prompt text keep every token.
    k : int
        The budget: at least ``k`` tokens stay aligned.

    Returns
    -------
    Tensor
        ``(b, n)`` bool mask of the aligned set ``A``.
    """
    alignment = 2.0 * (unit @ direction.unsqueeze(-1)).squeeze(-1) - 2.0
    aligned = alignment >= alignment.mean(dim=-1, keepdim=True)
    top = alignment.topk(k, dim=-1).indices
    top_k = torch.zeros_like(aligned).scatter_(1, top, True)
    aligned = torch.where((aligned.sum(-1) < k).unsqueeze(-1), top_k, aligned)
    return aligned | ~present.unsqueeze(-1)


def repmax_greedy(distance: Tensor, spread: Tensor, excluded: Tensor, k: int) -> Tensor:
    """RepMax's greedy: ``argmax spread``, then ``argmax_{i ∉ S} Σ_{s ∈ S} δ(i, s)``.

    Parameters
    ----------
    distance : Tensor
        ``(b, n, n)`` cosine distances ``δ``.
    spread : Tensor
        ``(b, n)`` the first pick's score (``-inf`` where excluded).
    excluded : Tensor
        ``(b, n)`` bool, tokens never picked (outside the aligned set); not changed.
    k : int
        Picks per item.

    Returns
    -------
    Tensor
        ``(b, k)`` int64 picks in pick order.
    """
    b = distance.shape[0]
    batch = torch.arange(b, device=distance.device)
    # Excluded tokens score -inf; picked ones too, set on the running total itself.
    total = torch.zeros_like(spread).masked_fill_(excluded, -torch.inf)
    never = torch.full((), -torch.inf, dtype=total.dtype, device=total.device)
    picks = [spread.argmax(dim=-1)]
    for _ in range(k - 1):
        total.index_put_((batch, picks[-1]), never)
        total += batch_rows(distance, picks[-1])
        picks.append(total.argmax(dim=-1))
    return torch.stack(picks, dim=-1)
