"""OTPrune's pure core: distribution alignment through optimal transport, as a log-det greedy.

"OTPrune: Distribution-Aligned Visual Token Pruning via Optimal Transport", CVPR 2026,
https://arxiv.org/abs/2602.20205
"""

from __future__ import annotations

import torch
from torch import Tensor

from .checks import check_tokens_and_k
from .logdet import logdet_greedy

#: The kernel scale ``γ`` of the paper.
GAMMA = 0.01


def otprune(tokens: Tensor, k: int, gamma: float = GAMMA, *, sort: bool = True) -> Tensor:
    """``max_{|A| = k} log det(I + γ S Sᵀ)_A`` with ``S = X̃ X̃ᵀ`` on column-normalised tokens.

    Optimal-transport alignment relaxed to a monotone submodular log-det objective, maximised
    greedily (fast greedy MAP inference, Chen et al. 2018):
    :func:`~visprune.functional.logdet.logdet_greedy`.

    Parameters
    ----------
    tokens : Tensor
        ``(b, n, d)`` float32 finite tokens (the LLM input embeddings, after the projector).
    k : int
        Picks per item, ``1 <= k < n``.
    gamma : float
        Kernel scale ``γ > 0`` (paper: 0.01).
    sort : bool
        Return the picks ascending (default) instead of in greedy order.

    Returns
    -------
    Tensor
        ``(b, k)`` int64 distinct indices.

    Notes
    -----
    Deliberate differences from the published code: the greedy runs in float32 (the published
    code keeps the Cholesky rows in fp16, which changes a few picks), the result is sorted (the
    published code returns Python set order), and on a CPU the ``n x n x n`` product is never
    formed: only the pivot rows of ``K`` are computed.
    """
    check_tokens_and_k("otprune", tokens, k)
    normalised = column_normalise(tokens)
    similarity = normalised @ normalised.mT
    picks = logdet_greedy(similarity, gamma, k)
    return picks.sort(dim=-1).values if sort else picks


def column_normalise(tokens: Tensor) -> Tensor:
    """Scale each feature column to unit L2 norm over the tokens; zero columns stay zero.

    ``(b, n, d) -> (b, n, d)``: ``X̃[:, c] = X[:, c] / ‖X[:, c]‖``.
    """
    # A sum of squares over the token axis is several times faster than ``norm(dim=-2)``, whose
    # reduction runs across the memory layout.
    norms = (tokens * tokens).sum(dim=-2, keepdim=True).sqrt_()
    return tokens / norms.clamp_min(torch.finfo(tokens.dtype).tiny)
