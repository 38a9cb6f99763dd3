"""ResPrune: residual-energy subspace reconstruction with text modulation.

"ResPrune: Text-Conditioned Subspace Reconstruction for Visual Token Pruning",
https://arxiv.org/abs/2603.21105 (no published code; this follows spec/METHODS.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from ..registry import METHODS
from .base import Context, Method, check_param, cholesky_step, unit_rows
from .text import mean_text_direction

#: The greedy stops when the best remaining score falls to this fraction of the largest
#: ``g_i ‖x_i‖²``: the kept span already reconstructs every relevant token.
EXHAUSTED = 1e-6


class _FeatureResiduals:
    """Residuals ``x_i - P_S x_i`` kept in feature space (Gram–Schmidt), O(nd) per pick.

    Exact down to the last picks of a rank-deficient set, where a Gram-matrix form loses the
    residual energies to cancellation; used when the picks can exhaust the feature dimension.
    """

    def __init__(self, tokens: Tensor, weights: Tensor, scores: Tensor, k: int) -> None:
        self.residuals = tokens.clone()
        self.weights = weights
        self.scores = scores.clone()
        self.taken = torch.zeros_like(scores, dtype=torch.bool)
        self.batch = torch.arange(tokens.shape[0], device=tokens.device)

    def update(self, pick: Tensor, pivot: Tensor, active: Tensor | None) -> None:
        direction = self.residuals[self.batch, pick]
        direction = direction / direction.norm(dim=-1, keepdim=True).clamp_min(1e-30)
        if active is not None:
            direction = direction * active.unsqueeze(-1)
        coefficients = self.residuals @ direction.unsqueeze(-1)
        self.residuals.sub_(coefficients * direction.unsqueeze(1))
        self.taken[self.batch, pick] = True
        energy = (self.residuals * self.residuals).sum(-1)
        self.scores = (self.weights * energy).masked_fill_(self.taken, -torch.inf)


class _GramResiduals:
    """Pivoted partial Cholesky of ``G = diag(√g) X Xᵀ diag(√g)``: the same picks in O(n²d + k²n).

    The Cholesky diagonal ``d²_i`` equals ``g_i ‖x_i - P_S x_i‖²``, the greedy score.
    """

    def __init__(self, tokens: Tensor, weights: Tensor, scores: Tensor, k: int) -> None:
        b, n, _ = tokens.shape
        root = weights.sqrt()
        self.gram = (tokens @ tokens.mT).mul_(root.unsqueeze(-1)).mul_(root.unsqueeze(-2))
        self.scores = scores.clone()
        self.chol = tokens.new_zeros(b, k, n)
        self.batch = torch.arange(b, device=tokens.device)
        self.step = 0

    def update(self, pick: Tensor, pivot: Tensor, active: Tensor | None) -> None:
        scale = pivot.clamp_min(1e-30).rsqrt()
        if active is not None:
            scale = scale * active
        row = self.gram[self.batch, pick]
        cholesky_step(self.chol, self.step, pick, row, scale, self.scores, self.batch)
        self.step += 1


@METHODS.register("resprune")
@dataclass
class ResPrune(Method):
    """Greedy subspace reconstruction of all tokens, weighted by relevance to the prompt.

    ``j = argmax_{i ∉ S} g_i ‖x_i - P_S x_i‖²`` with ``g_i = r̃_i^α`` and ``r̃`` the min-max
    rescaled cosine between ``x_i`` and the mean prompt direction.

    Parameters
    ----------
    budget : int or float
        Tokens to keep per image (count, or fraction in (0, 1]).
    alpha : float
        Exponent of the relevance modulation (0.5); ``alpha = 0`` disables the text term.

    Notes
    -----
    Runs on the LLM input embeddings (after the projector). Text (LLM embeddings of the prompt
    after the image, same width as the tokens) is optional: without it, or with an empty tail,
    ``g = 1`` and the method is pure residual-energy reconstruction. When the span is exhausted
    before ``k`` picks (best score <= 1e-6 of the largest ``g_i ‖x_i‖²``), the remaining slots
    go to the largest ``g_i ‖x_i‖²``. Paper: https://arxiv.org/abs/2603.21105
    """

    alpha: float = 0.5

    name: ClassVar[str] = "resprune"
    stage: ClassVar[str] = "llm"
    uses: ClassVar[frozenset[str]] = frozenset({"text"})
    text_in_token_space: ClassVar[bool] = True

    def __post_init__(self) -> None:
        check_param(self.name, "alpha", self.alpha, low=0.0)

    def weights(self, tokens: Tensor, ctx: Context) -> Tensor:
        """Relevance modulation ``g = r̃^α``: ``(b, n, d) -> (b, n)``, ones without text."""
        b, n, d = tokens.shape
        ones = tokens.new_ones(b, n)
        text = mean_text_direction(ctx, b, d, self.name)
        if text is None or self.alpha == 0:
            return ones
        direction, present = text
        # cos(x_i, t̄) = (x_i · t̂) / ‖x_i‖, without materialising the normalised tokens.
        unit_direction = unit_rows(direction.to(tokens.device)).unsqueeze(-1)
        norms = tokens.norm(dim=-1).clamp_min(torch.finfo(tokens.dtype).tiny)
        cosine = (tokens @ unit_direction).squeeze(-1) / norms
        low = cosine.amin(dim=-1, keepdim=True)
        span = cosine.amax(dim=-1, keepdim=True) - low
        scaled = (cosine - low) / torch.where(span > 0, span, 1.0)
        flat = (span <= 0) | ~present.to(tokens.device).unsqueeze(-1)
        return torch.where(flat, ones, scaled).pow(self.alpha)

    def _select(self, tokens: Tensor, k: int, ctx: Context) -> Tensor:
        b, _, d = tokens.shape
        weights = self.weights(tokens, ctx)
        prior = weights * torch.linalg.vector_norm(tokens, dim=-1).square_()
        threshold = EXHAUSTED * prior.amax(dim=-1)
        # Picks beyond half the width can drive residuals to zero, where only the feature-space
        # form keeps them exact; below that the Gram form is faster (one GEMM, then O(k²n)).
        state_type = _FeatureResiduals if 2 * k > d else _GramResiduals
        state = state_type(tokens, weights, prior, k)
        batch = torch.arange(b, device=tokens.device)
        picks = torch.empty(b, k, dtype=torch.long, device=tokens.device)
        fill_order = prior.clone()  # -inf once taken: the fill order of what is left
        exhausted = torch.zeros(b, dtype=torch.bool, device=tokens.device)
        # Exhausted items are handled by masks, never by Python branches on their count: on a GPU
        # reading that count would stall the stream once per pick. A frozen item's update is a
        # zero row, which changes nothing it still uses.
        for step in range(k):
            best_score, pick = state.scores.max(dim=-1)  # ties: the lowest index
            exhausted |= best_score <= threshold
            pick = torch.where(exhausted, fill_order.argmax(dim=-1), pick)
            picks[:, step] = pick
            fill_order[batch, pick] = -torch.inf
            if step < k - 1:
                state.update(pick, best_score, ~exhausted)
        return picks
