"""ResPrune's pure core: residual-energy subspace reconstruction with text modulation.

"ResPrune: Text-Conditioned Subspace Reconstruction for Visual Token Pruning",
https://arxiv.org/abs/2603.21105 (no published code; this follows
``docs/methods/resprune.md``).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .checks import check_tokens_and_k
from .cholesky import PivotedCholesky, pivoted_greedy
from .rows import unit_rows
from .text import mean_text_directions

#: The greedy stops when the best remaining score falls to this fraction of the largest
#: ``g_i ‖x_i‖²``: the kept span already reconstructs every relevant token.
EXHAUSTED = 1e-6

#: The exponent ``α`` of the relevance modulation.
ALPHA = 0.5


def resprune(
    tokens: Tensor,
    k: int,
    text: Tensor | list[Tensor] | None = None,
    alpha: float = ALPHA,
    *,
    sort: bool = True,
) -> Tensor:
    """Greedy subspace reconstruction of all tokens, weighted by relevance to the prompt.

    ``j = argmax_{i ∉ S} g_i ‖x_i - P_S x_i‖²`` with ``g_i = r̃_i^α`` and ``r̃`` the min-max
    rescaled cosine between ``x_i`` and the mean prompt direction (:func:`relevance_weights`).

    Parameters
    ----------
    tokens : Tensor
        ``(b, n, d)`` float32 finite tokens (the LLM input embeddings, after the projector).
    k : int
        Picks per item, ``1 <= k < n``.
    text : Tensor or list of Tensor, optional
        The prompt after the image in the tokens' space: one ``(m, d)`` tensor shared by every
        item, or a list of ``b`` tensors ``(m_i, d)``. Without it (or for an empty tail)
        ``g = 1``: pure residual-energy reconstruction.
    alpha : float
        Exponent of the relevance modulation, ``>= 0`` (0.5); ``alpha = 0`` disables the text
        term.
    sort : bool
        Return the picks ascending (default) instead of in greedy order.

    Returns
    -------
    Tensor
        ``(b, k)`` int64 distinct indices.

    Notes
    -----
    When the span is exhausted before ``k`` picks (best score ``<= 1e-6`` of the largest
    ``g_i ‖x_i‖²``), the remaining slots go to the largest ``g_i ‖x_i‖²``
    (:func:`fill_exhausted`).
    """
    check_tokens_and_k("resprune", tokens, k)
    norms = torch.linalg.vector_norm(tokens, dim=-1)
    weights = relevance_weights(tokens, text, alpha, norms)
    prior = weights * norms.square()
    threshold = EXHAUSTED * prior.amax(dim=-1)
    picks = residual_energy_greedy(tokens, weights, prior, threshold, k)
    return picks.sort(dim=-1).values if sort else picks


def relevance_weights(
    tokens: Tensor,
    text: Tensor | list[Tensor] | None,
    alpha: float,
    norms: Tensor | None = None,
) -> Tensor:
    """Relevance modulation ``g = r̃^α``: ``(b, n, d) -> (b, n)``, ones without text.

    ``r̃`` is ``cos(x_i, t̄)`` min-max rescaled per item, ``t̄`` the mean of the unit prompt rows
    (``text`` as for :func:`resprune`). ``norms`` ``(b, n)``: the tokens' L2 norms where the
    caller has them already (one pass over the ``n x d`` tokens fewer).
    """
    b, n, _ = tokens.shape
    ones = tokens.new_ones(b, n)
    directions = mean_text_directions(text, b)
    if directions is None or alpha == 0:
        return ones
    direction, present = directions
    # cos(x_i, t̄) = (x_i · t̂) / ‖x_i‖, without materialising the normalised tokens.
    unit_direction = unit_rows(direction.to(tokens.device)).unsqueeze(-1)
    norms = torch.linalg.vector_norm(tokens, dim=-1) if norms is None else norms
    norms = norms.clamp_min(torch.finfo(tokens.dtype).tiny)
    cosine = (tokens @ unit_direction).squeeze(-1) / norms
    low = cosine.amin(dim=-1, keepdim=True)
    span = cosine.amax(dim=-1, keepdim=True) - low
    scaled = (cosine - low) / torch.where(span > 0, span, 1.0)
    flat = (span <= 0) | ~present.to(tokens.device).unsqueeze(-1)
    return torch.where(flat, ones, scaled).pow(alpha)


class _FeatureResiduals:
    """Residuals ``x_i - P_S x_i`` kept in feature space (Gram–Schmidt), O(nd) per pick.

    Exact down to the last picks of a rank-deficient set, where a Gram-matrix form loses the
    residual energies to cancellation; used when the picks can exhaust the feature dimension.
    """

    def __init__(self, tokens: Tensor, weights: Tensor, scores: Tensor, k: int) -> None:
        b = tokens.shape[0]
        self.residuals = tokens.clone()
        self.weights = weights
        self.scores = scores.clone()
        self.taken = torch.zeros_like(scores, dtype=torch.bool)
        self.batch = torch.arange(b, device=tokens.device).view(b, 1)

    def best(self) -> tuple[Tensor, Tensor]:
        """The best score and its token per item (ties: the lowest index): ``(b, 1)`` each."""
        return self.scores.max(dim=-1, keepdim=True)

    def update(self, pick: Tensor, pivot: Tensor) -> None:
        """Project the residual of ``pick`` (``(b, 1)``) out of every token."""
        direction = self.residuals[self.batch, pick]  # (b, 1, d)
        direction = direction / direction.norm(dim=-1, keepdim=True).clamp_min(1e-30)
        coefficients = self.residuals @ direction.mT
        self.residuals.sub_(coefficients * direction)
        self.taken[self.batch, pick] = True
        energy = (self.residuals * self.residuals).sum(-1)
        self.scores = (self.weights * energy).masked_fill_(self.taken, -torch.inf)


class _GramResiduals(PivotedCholesky):
    """Pivoted partial Cholesky of ``G = diag(√g) X Xᵀ diag(√g)``: the same picks in O(n²d + k²n).

    The Cholesky diagonal ``d²_i`` equals ``g_i ‖x_i - P_S x_i‖²``, the greedy score.
    """

    def __init__(self, tokens: Tensor, weights: Tensor, scores: Tensor, k: int) -> None:
        super().__init__(scores.clone(), k, floor=1e-30)
        root = weights.sqrt()
        self.gram = (tokens @ tokens.mT).mul_(root.unsqueeze(-1)).mul_(root.unsqueeze(-2))

    def update(self, pick: Tensor, pivot: Tensor) -> None:
        """Add the Cholesky row of ``pick`` (``(b, 1)``; ``pivot`` its score)."""
        super().update(pick, self.gram[self._batch, pick], pivot)


def fill_exhausted(picks: Tensor, pivots: Tensor, prior: Tensor, threshold: Tensor) -> Tensor:
    """Give the picks from the first with a score ``<= threshold`` on to the largest priors.

    Once the best score of an item falls to the threshold, its span is exhausted: that pick and
    every later one go to the largest ``prior`` not picked before, in descending order (ties:
    the lowest index). The greedy runs all ``k`` steps regardless (what it picks after the
    exhaustion is discarded here), so no step asks the host whether an item is exhausted.

    Parameters
    ----------
    picks : Tensor
        ``(b, k)`` the greedy's picks, in order.
    pivots : Tensor
        ``(b, k)`` the score of each pick when it was picked.
    prior : Tensor
        ``(b, n)`` the fill order's scores.
    threshold : Tensor
        ``(b,)`` the exhaustion threshold.

    Returns
    -------
    Tensor
        ``(b, k)`` int64 picks.
    """
    k = picks.shape[-1]
    exhausted = (pivots <= threshold.unsqueeze(-1)).cumsum(dim=-1) > 0
    kept = (~exhausted).long()
    # A count, not a boolean scatter: discarded picks may repeat a kept one.
    taken = torch.zeros_like(prior, dtype=torch.long).scatter_add_(1, picks, kept) > 0
    order = prior.masked_fill(taken, -torch.inf).sort(dim=-1, descending=True, stable=True)
    steps = torch.arange(k, device=picks.device) - kept.sum(dim=-1, keepdim=True)
    fill = order.indices.gather(1, steps.clamp_min(0))
    return torch.where(exhausted, fill, picks)


def residual_energy_greedy(
    tokens: Tensor, weights: Tensor, prior: Tensor, threshold: Tensor, k: int
) -> Tensor:
    """ResPrune's greedy: ``k`` picks of ``argmax_{i ∉ S} g_i ‖x_i - P_S x_i‖²``.

    Parameters
    ----------
    tokens : Tensor
        ``(b, n, d)`` float32 tokens ``x``.
    weights : Tensor
        ``(b, n)`` relevance weights ``g``.
    prior : Tensor
        ``(b, n)`` ``g_i ‖x_i‖²``, the first scores and the fill order once the span is exhausted.
    threshold : Tensor
        ``(b,)`` the score at or below which the span counts as exhausted.
    k : int
        Picks per item.

    Returns
    -------
    Tensor
        ``(b, k)`` int64 picks in pick order.
    """
    # Picks beyond half the width can drive residuals to zero, where only the feature-space
    # form keeps them exact; below that the Gram form is faster (one GEMM, then O(k²n)).
    state_type = _FeatureResiduals if 2 * k > tokens.shape[-1] else _GramResiduals
    state = state_type(tokens, weights, prior, k)
    picks, pivots = pivoted_greedy(state, k, state.update)
    return fill_exhausted(picks, pivots, prior, threshold)
